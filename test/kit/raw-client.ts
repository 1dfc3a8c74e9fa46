/**
 * A raw-socket HTTP client: sends any bytes and returns whatever comes back until the server
 * closes the connection or `waitMs` of silence passes.
 */
import net from 'node:net';

export interface RawResult {
  readonly text: string;
  readonly bytes: Buffer;
  /** How the connection ended: closed by the peer, reset, or still open when we stopped. */
  readonly end: 'closed' | 'reset' | 'open';
}

export function rawRequest(port: number, bytes: string | Buffer, waitMs = 500): Promise<RawResult> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (end: RawResult['end']) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const all = Buffer.concat(chunks);
      resolve({ text: all.toString('latin1'), bytes: all, end });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('open'), waitMs);
    };
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      arm();
    });
    socket.on('end', () => finish('closed'));
    socket.on('error', () => finish('reset'));
    socket.on('connect', () => {
      socket.write(bytes);
      arm();
    });
  });
}
