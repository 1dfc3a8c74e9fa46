/**
 * pino, configured once: JSON lines on stdout.
 *
 * Lines are written asynchronously in batches of 32 KiB, so logging one access line per
 * request costs a few microseconds rather than a write per line. A batch never waits long: the
 * buffer is flushed at least every second, and at once after a line at warn level or above or a
 * state change (any line with an `event` field: breaker, degradation, reload, ready, shutdown...),
 * so `tail -f` of a log file shows them as they happen. At exit pino flushes what is left
 * synchronously, so no line is lost. Secrets are redacted where headers are put into a line
 * (`redactHeaders`), not by a per-line path search.
 */
import { writeSync } from 'node:fs';
import { type Logger, pino } from 'pino';

export type { Logger };

export const REDACTED_HEADERS: ReadonlySet<string> = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'x-auth-token',
]);

/** A copy of the named headers with secrets replaced by `[REDACTED]`. */
export function redactHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  names: readonly string[],
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name of names) {
    const v = headers[name];
    if (v !== undefined) out[name] = REDACTED_HEADERS.has(name) ? '[REDACTED]' : v;
  }
  return out;
}

/** Lines are written in batches of this many bytes (or after LOG_FLUSH_INTERVAL_MS). */
const BATCH_BYTES = 32 * 1024;

/**
 * pino's ISO timestamp member (`,"time":"2026-11-30T05:48:07.123Z"`), as `new Date().toISOString()`
 * writes it. At a few thousand lines a second nearly every line has a millisecond of its own, so
 * the part up to the second is made once per second and the milliseconds come from a table.
 */
let lastSecond = Number.NaN; // no second yet (NaN equals no second)
let secondPrefix = '';
const MILLIS: readonly string[] = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(3, '0')}Z"`);
function isoTime(): string {
  return isoTimeAt(Date.now());
}

/** `isoTime` at `now` (ms since the epoch, years 0000-9999). */
export function isoTimeAt(now: number): string {
  const second = Math.floor(now / 1000);
  if (second !== lastSecond) {
    lastSecond = second;
    // "YYYY-MM-DDTHH:MM:SS." of this second (toISOString's own digits, years 0000-9999).
    secondPrefix = `,"time":"${new Date(second * 1000).toISOString().slice(0, 20)}`;
  }
  return secondPrefix + (MILLIS[now - second * 1000] as string);
}

/**
 * A writer of one kind of info line (the access log's) that skips pino's per-line machinery: the
 * caller hands the line's members already serialized (`,"key":value` each, in the order pino
 * would write them), and the line is put together from the same pieces pino uses: its cached
 * level prefix, its timestamp, the logger's bindings (`service`, and a child's listener, route,
 * upstream), then the members and `"msg"`. The bytes are those `logger.info(fields, msg)` writes,
 * into the same destination (batched, flushed on the same timer and at exit). Nothing is written
 * when the logger's level is above info.
 */
export function infoLineWriter(logger: Logger, msg: string): (members: string) => void {
  const own = logger as unknown as Record<symbol, unknown>;
  const s = pino.symbols;
  const prefix = (own[s.lsCacheSym] as Record<number, string>)[INFO] as string;
  const time = own[s.timeSym] as () => string;
  const bindings = own[s.chindingsSym] as string;
  const tail = `,"msg":${JSON.stringify(msg)}${own[s.endSym] as string}`;
  const stream = own[s.streamSym] as { write(line: string): unknown };
  return (members) => {
    if (logger.levelVal > INFO) return;
    stream.write(prefix + time() + bindings + members + tail);
  };
}

/** The longest a buffered line waits before it is written (ms). */
export const LOG_FLUSH_INTERVAL_MS = 1000;
const WARN = 40;
const INFO = 30;

/**
 * The destination of breakwater's own logger: each line is encoded into a 64 KiB buffer as it
 * comes, and the filled part goes to sonic-boom (which writes it on libuv's thread pool) once it
 * holds 32 KiB.
 *
 * sonic-boom batches strings itself, but it measures its pending batch with `Buffer.byteLength`
 * on every line, and the batch is a string grown by `+=`: each line flattened the whole batch
 * again, so a line cost time in proportion to the batch (measured: about 10 µs a line at 32 KiB
 * batches, most of it copying; 3.5-4 µs with this, the line's own making included). Given bytes,
 * sonic-boom keeps them as they are. The batch is handed on when it reaches 32 KiB, on `flush()`
 * (a warning, a state change), at least every second, and synchronously at exit.
 */
class LineBatcher {
  /** The batch being filled: lines are encoded into it as they come (no string kept per line). */
  private chunk = Buffer.allocUnsafe(CHUNK_BYTES);
  private used = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly sonic: SonicLike) {
    this.timer = setInterval(() => this.push(), LOG_FLUSH_INTERVAL_MS);
    this.timer.unref();
  }

  write(line: string): boolean {
    // A UTF-16 unit is at most 3 bytes of UTF-8: whether the line surely fits, without measuring it.
    if (this.used + line.length * 3 > CHUNK_BYTES) {
      this.push();
      if (line.length * 3 > CHUNK_BYTES) {
        this.sonic.write(Buffer.from(line));
        return true;
      }
    }
    this.used += this.chunk.write(line, this.used);
    if (this.used >= BATCH_BYTES) this.push();
    return true;
  }

  /** Hands the lines collected so far to sonic-boom, which writes them as soon as it can. */
  push(): void {
    const batch = this.take();
    if (batch) this.sonic.write(batch);
  }

  /** pino's `logger.flush(cb)`: the lines collected so far, written now. */
  flush(cb?: (err?: Error) => void): void {
    this.push();
    this.sonic.flush(cb);
  }

  /** At exit: everything collected, written synchronously. */
  flushSync(): void {
    const batch = this.take();
    try {
      if (batch) this.sonic.write(batch);
      this.sonic.flushSync();
    } catch {
      // sonic-boom already closed (destroyed): write what is left ourselves.
      if (batch) writeAllSync(1, batch);
    }
  }

  /** The filled part of the chunk (handed on: sonic-boom holds it until written), and a new chunk. */
  private take(): Buffer | undefined {
    if (this.used === 0) return undefined;
    const batch = this.chunk.subarray(0, this.used);
    this.chunk = Buffer.allocUnsafe(CHUNK_BYTES);
    this.used = 0;
    return batch;
  }
}

/** A batch's buffer: a batch is written once it holds BATCH_BYTES, so a line up to the rest fits. */
const CHUNK_BYTES = 2 * BATCH_BYTES;

interface SonicLike {
  write(data: Buffer): boolean;
  flush(cb?: (err?: Error) => void): void;
  flushSync(): void;
  on(event: 'drain', fn: () => void): unknown;
}

/** Writes all of `data` to `fd`, retrying a full pipe (EAGAIN) for up to a second. */
function writeAllSync(fd: number, data: Buffer): void {
  let buf = data;
  const until = Date.now() + 1000;
  while (buf.length > 0) {
    try {
      buf = buf.subarray(writeSync(fd, buf));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || Date.now() > until) return;
    }
  }
}

/** Every LineBatcher of the process (one, but for tests), flushed at exit. */
const batchers = new Set<LineBatcher>();
function flushBatchers(): void {
  for (const b of batchers) b.flushSync();
}

export function createLogger(options: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  let urgent: (() => void) | undefined;
  let destination = options.destination;
  if (!destination) {
    // Registered before pino's own exit hook for the destination (made below), so the lines
    // still collected here reach sonic-boom before it is flushed and closed at exit.
    if (batchers.size === 0) process.once('exit', flushBatchers);
    const sonic = pino.destination({
      dest: 1,
      sync: false,
      // Batches come whole from the LineBatcher, as bytes: sonic-boom writes each as it comes (a
      // system call on libuv's thread pool), or keeps it for after the write in progress.
      contentMode: 'buffer',
      minLength: 0,
      maxWrite: 2 * BATCH_BYTES,
    }) as unknown as SonicLike;
    const lines = new LineBatcher(sonic);
    batchers.add(lines);
    // flush() writes nothing while a write is in progress; 'drain' says that write is over, and
    // the line that asked for a flush may still be in the buffer: flush once more then.
    let pending = false;
    const flush = () => {
      try {
        lines.flush();
      } catch {
        // destroyed at exit: the exit hook has written everything
      }
    };
    sonic.on('drain', () => {
      if (!pending) return;
      pending = false;
      flush();
    });
    urgent = () => {
      pending = true;
      flush();
    };
    destination = lines as unknown as pino.DestinationStream;
  }
  const flushNow = urgent;
  return pino(
    {
      level: options.level ?? 'info',
      base: { service: 'breakwater' },
      timestamp: isoTime,
      formatters: { level: (label) => ({ level: label }) },
      hooks: flushNow
        ? {
            logMethod(args, method, level) {
              method.apply(this, args);
              const first: unknown = args[0];
              if (level >= WARN || (typeof first === 'object' && first !== null && 'event' in first))
                flushNow();
            },
          }
        : {},
    },
    destination,
  );
}
