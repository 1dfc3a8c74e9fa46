/**
 * A fault upstream on raw node:net: it reads one request head and then misbehaves exactly as told,
 * byte by byte, the way broken servers and networks do.
 */
import net from 'node:net';

export type Fault =
  /** Sends these bytes verbatim, then keeps the connection open (or closes, with `close`). */
  | { kind: 'raw'; bytes: string | Buffer; close?: boolean }
  /** Closes the connection without answering. */
  | { kind: 'close' }
  /** Resets (RST) the connection without answering. */
  | { kind: 'reset' }
  /** Accepts and never answers. */
  | { kind: 'hang' }
  /** Sends the status line and headers after `delayMs`. */
  | { kind: 'slow-headers'; delayMs: number; body?: string }
  /** Sends headers with Content-Length `length`, then `sent` bytes, then resets or closes. */
  | { kind: 'truncate'; length: number; sent: number; how: 'reset' | 'close'; chunked?: boolean }
  /** 503 with Retry-After. */
  | { kind: 'retry-after'; seconds: number };

export interface FaultUpstream {
  readonly port: number;
  readonly url: string;
  /** Connections accepted. */
  connections: number;
  /** Request heads read. */
  requests: number;
  /** Connections that carried a request and are still open. */
  readonly busyOpen: number;
  setFault(f: Fault): void;
  close(): Promise<void>;
}

export async function startFaultUpstream(initial: Fault): Promise<FaultUpstream> {
  let fault = initial;
  const sockets = new Set<net.Socket>();
  const busy = new Set<net.Socket>();
  const state = { connections: 0, requests: 0 };
  const server = net.createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on('close', () => {
      sockets.delete(socket);
      busy.delete(socket);
    });
    socket.on('error', () => undefined);
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      while (buf.includes('\r\n\r\n')) {
        buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
        state.requests++;
        busy.add(socket);
        act(socket, fault);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get connections() {
      return state.connections;
    },
    get requests() {
      return state.requests;
    },
    get busyOpen() {
      return busy.size;
    },
    setFault(f) {
      fault = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  } as FaultUpstream;
}

function act(socket: net.Socket, f: Fault): void {
  switch (f.kind) {
    case 'raw':
      socket.write(f.bytes);
      if (f.close) socket.end();
      return;
    case 'close':
      socket.end();
      return;
    case 'reset':
      socket.resetAndDestroy();
      return;
    case 'hang':
      return;
    case 'slow-headers': {
      const body = f.body ?? 'slow';
      const t = setTimeout(() => {
        if (!socket.destroyed)
          socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      }, f.delayMs);
      socket.on('close', () => clearTimeout(t));
      return;
    }
    case 'truncate': {
      const head = f.chunked
        ? 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
        : `HTTP/1.1 200 OK\r\ncontent-length: ${f.length}\r\n\r\n`;
      const part = 'x'.repeat(f.sent);
      socket.write(f.chunked ? `${head}${part.length.toString(16)}\r\n${part}\r\n` : head + part);
      setTimeout(() => (f.how === 'reset' ? socket.resetAndDestroy() : socket.end()), 20);
      return;
    }
    case 'retry-after':
      socket.write(
        `HTTP/1.1 503 Service Unavailable\r\nretry-after: ${f.seconds}\r\ncontent-length: 4\r\n\r\nbusy`,
      );
      return;
  }
}
