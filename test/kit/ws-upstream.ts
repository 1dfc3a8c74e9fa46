/**
 * A WebSocket upstream for tests (the `ws` package on 127.0.0.1): echoes every message with its
 * type, closes with 4001 when asked (`close-me`), and records each handshake's request and each
 * close it saw, so tests can assert from the upstream's side. `handshakeDelayMs` makes it slow to
 * answer the handshake.
 */
import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';

export interface WsUpstream {
  readonly url: string;
  readonly server: WebSocketServer;
  /** The handshake request of every connection, in order. */
  readonly handshakes: IncomingMessage[];
  /** Close code and reason of every connection that closed. */
  readonly closes: { code: number; reason: string }[];
  close(): Promise<void>;
}

export async function startWsUpstream(
  onConnection?: (ws: WebSocket) => void,
  options: { handshakeDelayMs?: number } = {},
): Promise<WsUpstream> {
  const delay = options.handshakeDelayMs;
  const server = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    // A slow upstream: the 101 comes this long after the request.
    ...(delay
      ? { verifyClient: (_info: unknown, done: (ok: boolean) => void) => setTimeout(() => done(true), delay) }
      : {}),
  });
  await new Promise<void>((resolve) => server.once('listening', resolve));
  const handshakes: IncomingMessage[] = [];
  const closes: { code: number; reason: string }[] = [];
  server.on('connection', (ws, req) => {
    handshakes.push(req);
    ws.on('error', () => undefined);
    ws.on('close', (code, reason) => closes.push({ code, reason: reason.toString() }));
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'close-me') ws.close(4001, 'server says bye');
      else ws.send(data, { binary: isBinary });
    });
    onConnection?.(ws);
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    handshakes,
    closes,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of server.clients) c.terminate();
        server.close(() => resolve());
      }),
  };
}
