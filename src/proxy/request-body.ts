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

/** Reads `body` into one Buffer if it ends within `max` bytes; otherwise a stream of all of it. */
export async function readUpTo(body: Readable, max: number): Promise<Buffer | Readable> {
  const chunks: Buffer[] = [];
  let size = 0;
  const iterator = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) return chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
    chunks.push(value);
    size += value.length;
    if (size > max) {
      // Too large to hold: what was read, then the rest, as one stream.
      return Readable.from(
        (async function* () {
          yield* chunks;
          for (;;) {
            const r = await iterator.next();
            if (r.done) return;
            yield r.value;
          }
        })(),
        { objectMode: false },
      );
    }
  }
}

/**
 * Calls `onIdle` once if no byte of the body arrives for `ms` while the body is incomplete.
 * Uses the connection's own inactivity timer (HTTP/2: the stream's), no timer of its own per
 * request; disarmed at the end.
 */
export function watchBodyIdle(req: IncomingMessage, ms: number, onIdle: () => void): void {
  if (ms <= 0 || req.complete) return;
  req.setTimeout(ms, () => {
    if (req.complete || req.destroyed) return;
    if (req.readableLength > 0) {
      // Bytes are waiting for breakwater to read them: the upstream is slow, not the client.
      req.setTimeout(ms);
      return;
    }
    onIdle();
  });
  // (On the request, not its socket: for HTTP/2 the socket is the whole session's.)
  req.once('end', () => req.setTimeout(0));
}
