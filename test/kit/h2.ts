/**
 * HTTP/2 for tests: an h2c upstream (node:http2, prior knowledge) that records what it received,
 * and a small h2c client request that returns status, headers, body and trailers.
 */
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';

export interface H2Received {
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

export interface H2Upstream {
  readonly url: string;
  readonly received: H2Received[];
  /** HTTP/2 connections accepted. */
  sessions: number;
  close(): Promise<void>;
}

export type H2Handler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, body: Buffer) => void;

export async function startH2Upstream(handler: H2Handler): Promise<H2Upstream> {
  const received: H2Received[] = [];
  const server = http2.createServer();
  const state = { sessions: 0 };
  const open = new Set<http2.ServerHttp2Session>();
  server.on('session', (session) => {
    state.sessions++;
    open.add(session);
    session.once('close', () => open.delete(session));
  });
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      const body = Buffer.concat(chunks);
      received.push({ headers, body });
      handler(stream, headers, body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    get sessions() {
      return state.sessions;
    },
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        // Sessions still open would keep close() waiting.
        for (const s of open) s.destroy();
      }),
  } as H2Upstream;
}

export interface H2Response {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly trailers: IncomingHttpHeaders | undefined;
}

/** One request over a new h2c connection (prior knowledge). */
export function h2Request(
  base: string,
  headers: Record<string, string>,
  body?: Buffer | string,
): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const client = http2.connect(base);
    client.on('error', reject);
    const stream = client.request(headers, { endStream: body === undefined });
    let status = 0;
    let head: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | undefined;
    const chunks: Buffer[] = [];
    stream.on('response', (h) => {
      head = h;
      status = Number(h[':status']);
    });
    stream.on('trailers', (t) => {
      trailers = t;
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('error', reject);
    stream.on('end', () => {
      client.close();
      resolve({ status, headers: head, body: Buffer.concat(chunks), trailers });
    });
    if (body !== undefined) stream.end(body);
  });
}
