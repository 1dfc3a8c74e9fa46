/**
 * A TCP relay to a target port that keeps every byte it passes towards the target, so a test can
 * tell from the upstream's side that nothing at all was forwarded (not even a request head whose
 * body then failed to parse).
 */
import net, { type AddressInfo } from 'node:net';

export interface CountingRelay {
  readonly url: string;
  /** Bytes relayed towards the upstream since the last reset, as latin1 text. */
  seen(): string;
  reset(): void;
  close(): Promise<void>;
}

export async function startCountingRelay(targetPort: number): Promise<CountingRelay> {
  let chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.on('data', (d: Buffer) => {
      chunks.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', done);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    seen: () => Buffer.concat(chunks).toString('latin1'),
    reset: () => {
      chunks = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
