/**
 * The request body on its way in.
 *
 * - `readUpTo` reads a body whole when it fits a buffer, else hands back a stream of what was read
 *   followed by the rest (used before the pipeline, for nginx-style request buffering, and by
 *   retries for the replay buffer).
 * - `watchBodyIdle` calls back when the client sends nothing for a while before its body is
 *   complete (nginx's `client_body_timeout`). Silence because breakwater itself is not reading
 *   (bytes wait in the request's buffer while an upstream is slow to take them) is not the client's.
 */
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { isHttp2 } from './protocol.js';

const WAITED = Symbol('waited');

/**
 * Reads `body` into one Buffer if it ends within `max` bytes (and, with `waitMs`, within that many
 * ms: a body that keeps its stream open, such as a streaming gRPC call, is not waited for);
 * otherwise a stream of all of it, what was read first.
 */
export async function readUpTo(body: Readable, max: number, waitMs?: number): Promise<Buffer | Readable> {
  const chunks: Buffer[] = [];
  let size = 0;
  const iterator = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let timer: NodeJS.Timeout | undefined;
  const waited =
    waitMs === undefined
      ? undefined
      : new Promise<typeof WAITED>((resolve) => {
          timer = setTimeout(() => resolve(WAITED), waitMs);
        });
  try {
    for (;;) {
      const pending = iterator.next();
      const r = waited ? await Promise.race([pending, waited]) : await pending;
      if (r === WAITED) return rest(chunks, iterator, pending);
      if (r.done) return chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
      chunks.push(r.value);
      size += r.value.length;
      if (size > max) return rest(chunks, iterator, undefined);
    }
  } finally {
    clearTimeout(timer);
  }
}

/** What was read, then (the read in flight and) the rest, as one stream. */
function rest(
  chunks: Buffer[],
  iterator: AsyncIterator<Buffer>,
  pending: Promise<IteratorResult<Buffer>> | undefined,
): Readable {
  return Readable.from(
    (async function* () {
      yield* chunks;
      if (pending) {
        const r = await pending;
        if (r.done) return;
        yield r.value;
      }
      for (;;) {
        const r = await iterator.next();
        if (r.done) return;
        yield r.value;
      }
    })(),
    { objectMode: false },
  );
}

/**
 * Calls `onIdle` once if no byte of the body arrives for `ms` while the body is incomplete.
 * Uses the connection's own inactivity timer (HTTP/2: the stream's), no timer of its own per
 * request; disarmed at the end.
 */
export function watchBodyIdle(req: IncomingMessage, ms: number, onIdle: () => void): void {
  if (ms <= 0 || req.complete) return;
  // HTTP/1.1 keeps the listener on the request; HTTP/2 registers it once per setTimeout call.
  const h2 = isHttp2(req);
  const onTimeout = () => {
    if (req.complete || req.destroyed) return;
    if (req.readableLength > 0) {
      // Bytes are waiting for breakwater to read them: the upstream is slow, not the client.
      if (h2) req.setTimeout(ms, onTimeout);
      else req.setTimeout(ms);
      return;
    }
    onIdle();
  };
  req.setTimeout(ms, onTimeout);
  // (On the request, not its socket: for HTTP/2 the socket is the whole session's.)
  req.once('end', () => req.setTimeout(0));
}
