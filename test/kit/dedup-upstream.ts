/**
 * An upstream that deduplicates by Idempotency-Key, as the deferred-delivery tests need one: the
 * first request with a key is processed (counted, its order per ordering key recorded), a repeat
 * gets the stored answer without being processed again. Listens on a given port, so a test can
 * start it where breakwater already expects an upstream that was down.
 */
import http from 'node:http';

export interface DedupUpstream {
  /** Key -> times processed (1 when deduplication held). */
  readonly processed: Map<string, number>;
  /** Ordering-key value -> keys in the order they were first processed. */
  readonly order: Map<string, string[]>;
  /** Requests received, repeats included. */
  readonly received: () => number;
  /** Key -> requests received with it. */
  readonly seen: Map<string, number>;
  close(): Promise<void>;
}

export interface DedupOptions {
  /** Header carrying the ordering key. */
  readonly orderingHeader?: string;
  /** ms before each answer. */
  readonly delayMs?: number;
  /** Keys answered 400 every time (poison). */
  readonly poison?: ReadonlySet<string>;
}

export async function startDedupUpstream(port: number, o: DedupOptions = {}): Promise<DedupUpstream> {
  const processed = new Map<string, number>();
  const order = new Map<string, string[]>();
  const seen = new Map<string, number>();
  let received = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received++;
      const key = String(req.headers['idempotency-key'] ?? '');
      seen.set(key, (seen.get(key) ?? 0) + 1);
      const answer = () => {
        if (o.poison?.has(key)) {
          res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid order"}');
          return;
        }
        if (!processed.has(key)) {
          processed.set(key, 1);
          const ok = String(req.headers[o.orderingHeader ?? 'x-none'] ?? '');
          const list = order.get(ok) ?? [];
          list.push(key);
          order.set(ok, list);
        }
        res.writeHead(201, { 'content-type': 'application/json' }).end(`{"key":${JSON.stringify(key)}}`);
      };
      if (o.delayMs) setTimeout(answer, o.delayMs);
      else answer();
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    processed,
    order,
    seen,
    received: () => received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
