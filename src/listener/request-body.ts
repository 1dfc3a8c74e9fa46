/**
 * The request body on its way in.
 *
 * - `bufferBody` reads a body whole before the pipeline (nginx's request buffering): in memory up
 *   to `limits.body_buffer_bytes`, beyond that into a temporary file, so that a slow uploader holds
 *   no limiter token, bulkhead slot or upstream connection, and every attempt (retries, fallbacks)
 *   can send the body again: a `FileBody` is read afresh for each one.
 * - `readUpTo` reads a body whole when it fits a buffer, else hands back a stream of what was read
 *   followed by the rest (retries keep an unbuffered body for replay with it).
 * - `watchBodyIdle` calls back when the client sends nothing for a while before its body is
 *   complete (nginx's `client_body_timeout`). Silence because breakwater itself is not reading
 *   (bytes wait in the request's buffer while an upstream is slow to take them) is not the client's.
 */

import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { Clock } from '../clock.js';
import type { TempFile, TempFiles } from '../stores/temp-files.js';
import { isHttp2 } from './protocol.js';

/** A request body read whole into a temporary file (removed when the request ends). */
export class FileBody {
  constructor(
    readonly file: TempFile,
    readonly size: number,
  ) {}

  /** The whole body, from its start: each attempt reads it again. */
  stream(): Readable {
    return this.file.stream();
  }

  /** SHA-256 of the body (an Idempotency-Key fingerprint), read from the file. */
  async digest(): Promise<Buffer> {
    const hash = createHash('sha256');
    for await (const chunk of this.stream()) hash.update(chunk as Buffer);
    return hash.digest();
  }
}

/** A body breakwater holds whole (it can be sent again), or none; not a stream still arriving. */
export function replayable(body: Readable | Buffer | FileBody | null): body is Buffer | FileBody | null {
  return body === null || Buffer.isBuffer(body) || body instanceof FileBody;
}

/** Chunks gathered before each write to a body's temporary file. */
const WRITE_BLOCK = 64 * 1024;

function tooLarge(max: number): Error {
  return Object.assign(new Error(`the request body is over the limit of ${max} bytes`), {
    code: 'BW_BODY_TOO_LARGE',
  });
}

/**
 * Reads `body` whole: one Buffer if it ends within `memory` bytes, else a FileBody. Rejects with
 * code BW_BODY_TOO_LARGE past `max` bytes (0: no limit), BW_TEMP_FILE when the file cannot be made
 * or written (nothing is left on disk then), or the stream's error when the client goes away.
 * `opened` hears of the file as soon as it exists, so that it is removed when the request ends
 * however it ends.
 */
export async function bufferBody(
  body: Readable,
  memory: number,
  max: number,
  temp: TempFiles,
  opened: (file: TempFile) => void,
): Promise<Buffer | FileBody> {
  let chunks: Buffer[] = [];
  let size = 0;
  let file: TempFile | undefined;
  let pending = 0;
  let written = 0;
  try {
    // (Not destroyed when the loop ends early: a 413 or 507 is still written on its connection.)
    for await (const chunk of body.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (max > 0 && size > max) throw tooLarge(max);
      chunks.push(chunk);
      if (file === undefined) {
        if (size <= memory) continue;
        file = await temp.create('request');
        opened(file);
        pending = size;
      } else pending += chunk.length;
      if (pending >= WRITE_BLOCK) {
        await file.write(chunks, written);
        written += pending;
        chunks = [];
        pending = 0;
      }
    }
    if (file === undefined) return chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
    if (pending > 0) await file.write(chunks, written);
    return new FileBody(file, size);
  } catch (err) {
    if (file) void file.remove();
    throw err;
  }
}

const WAITED = Symbol('waited');

/**
 * Reads `body` into one Buffer if it ends within `max` bytes (and, with `waitMs`, within that many
 * ms: a body that keeps its stream open, such as a streaming gRPC call, is not waited for);
 * otherwise a stream of all of it, what was read first.
 */
export async function readUpTo(
  body: Readable,
  max: number,
  wait?: { readonly ms: number; readonly clock: Clock },
): Promise<Buffer | Readable> {
  const chunks: Buffer[] = [];
  let size = 0;
  const iterator = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let timer: unknown;
  const waited =
    wait === undefined
      ? undefined
      : new Promise<typeof WAITED>((resolve) => {
          timer = wait.clock.setTimeout(() => resolve(WAITED), wait.ms);
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
    if (timer !== undefined) wait?.clock.clearTimeout(timer);
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
