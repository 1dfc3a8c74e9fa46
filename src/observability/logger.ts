/**
 * pino, configured once: JSON lines on stdout.
 *
 * Lines are written asynchronously in batches of up to 4 KiB (flushed on shutdown), so logging one
 * access line per request costs a few microseconds rather than a write per line. Secrets are
 * redacted where headers are put into a line (`redactHeaders`), not by a per-line path search.
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

export function createLogger(options: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: { service: 'breakwater' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096 }),
  );
}
