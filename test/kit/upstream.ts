/**
 * A real upstream for tests: node:http on 127.0.0.1 with a handler per test, recording what it
 * received (method, url, headers, body bytes) so tests can assert from the upstream's side.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly rawHeaders: string[];
  readonly body: Buffer;
}

export interface TestUpstream {
  readonly port: number;
  readonly url: string;
  /** Requests received whole (head and body), in order. */
  readonly received: Received[];
  /** Request heads received, whether or not their body ever completed. */
  readonly started: number;
  /** TCP connections accepted. */
  readonly connections: number;
  close(): Promise<void>;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

/**
 * Starts an upstream that buffers each request body, then calls `handler`. `lenient` lifts Node's
 * own header limits (16 KiB, 2,000 headers), so that whatever a proxy forwards is received and
 * recorded rather than refused by the upstream itself.
 */
export async function startUpstream(
  handler: UpstreamHandler = defaultHandler,
  options: { keepBody?: boolean; lenient?: boolean } = {},
): Promise<TestUpstream> {
  const received: Received[] = [];
  const counts = { started: 0, connections: 0 };
  const server = http.createServer(options.lenient ? { maxHeaderSize: 1024 * 1024 } : {}, (req, res) => {
    counts.started++;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      if (options.keepBody !== false) chunks.push(c);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body,
      });
      handler(req, res, body);
    });
  });
  if (options.lenient) server.maxHeadersCount = 0;
  server.on('connection', () => {
    counts.connections++;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    received,
    get started() {
      return counts.started;
    },
    get connections() {
      return counts.connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Echoes method, url and body back as JSON-free plain text. */
export const defaultHandler: UpstreamHandler = (req, res, body) => {
  res.setHeader('content-type', 'application/octet-stream');
  res.setHeader('x-upstream-method', req.method ?? '');
  res.setHeader('x-upstream-url', req.url ?? '');
  res.end(body);
};
