/**
 * pino, configured once: JSON lines on stdout, secrets redacted wherever a header map is logged.
 */
import { type Logger, pino } from 'pino';

export type { Logger };

export const REDACTED_HEADERS = [
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'x-auth-token',
] as const;

export function createLogger(options: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  const paths = REDACTED_HEADERS.flatMap((h) => [`headers["${h}"]`, `*.headers["${h}"]`]);
  return pino(
    {
      level: options.level ?? 'info',
      base: { service: 'breakwater' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths, censor: '[REDACTED]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
