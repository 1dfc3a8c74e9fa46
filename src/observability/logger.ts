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
 * pino's ISO timestamp, made once per millisecond: at thousands of access lines a second most
 * lines share their millisecond with the line before.
 */
let lastMs = -1;
let lastTime = '';
function isoTime(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastTime = `,"time":"${new Date(now).toISOString()}"`;
  }
  return lastTime;
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
 * The destination of breakwater's own logger: lines are collected in an array and handed to
 * sonic-boom (which writes them on libuv's thread pool) as one string per 32 KiB batch.
 *
 * sonic-boom batches strings itself, but it measures its pending batch with `Buffer.byteLength`
 * on every line, and the batch is a string grown by `+=`: each line flattens the whole batch
 * again, so one line cost time in proportion to the batch (measured: about 10 µs a line at 32 KiB
 * batches, most of it copying, against under 2 µs here). Joined once per batch, a line costs an
 * array push. The batch goes to sonic-boom when it reaches 32 KiB, on `flush()` (a warning, a
 * state change), at least every second, and synchronously at exit.
 */
class LineBatcher {
  private parts: string[] = [];
  private chars = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly sonic: pino.DestinationStream & SonicLike) {
    this.timer = setInterval(() => this.push(), LOG_FLUSH_INTERVAL_MS);
    this.timer.unref();
  }

  write(line: string): boolean {
    this.parts.push(line);
    this.chars += line.length;
    if (this.chars >= BATCH_BYTES) this.push();
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

  private take(): string {
    if (this.chars === 0) return '';
    const batch = this.parts.length === 1 ? (this.parts[0] as string) : this.parts.join('');
    this.parts = [];
    this.chars = 0;
    return batch;
  }
}

interface SonicLike {
  write(data: string): boolean;
  flush(cb?: (err?: Error) => void): void;
  flushSync(): void;
  on(event: 'drain', fn: () => void): unknown;
}

/** Writes all of `text` to `fd`, retrying a full pipe (EAGAIN) for up to a second. */
function writeAllSync(fd: number, text: string): void {
  let buf = Buffer.from(text);
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
      // Batches come whole from the LineBatcher: sonic-boom writes each as it comes (a system
      // call on libuv's thread pool), or appends it to the write in progress.
      minLength: 0,
      maxWrite: 2 * BATCH_BYTES,
    }) as unknown as pino.DestinationStream & SonicLike;
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
    destination = lines;
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
