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

export function createLogger(options: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  let urgent: (() => void) | undefined;
  let destination = options.destination;
  if (!destination) {
    const sonic = pino.destination({
      dest: 1,
      sync: false,
      // A write (a system call, on libuv's thread pool) every 32 KiB of lines rather than every
      // 4 KiB: an access line per request costs 8 times fewer writes.
      minLength: BATCH_BYTES,
      maxWrite: 2 * BATCH_BYTES,
      periodicFlush: LOG_FLUSH_INTERVAL_MS,
    });
    // flush() writes nothing while a write is in progress; 'drain' says that write is over, and
    // the line that asked for a flush may still be in the buffer: flush once more then.
    let pending = false;
    const flush = () => {
      try {
        sonic.flush();
      } catch {
        // destroyed at exit: pino's exit handler has written everything
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
    destination = sonic;
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
