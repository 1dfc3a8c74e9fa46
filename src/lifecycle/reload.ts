/**
 * Reloads: one at a time, an invalid file changing nothing (the last good config keeps serving),
 * every attempt logged, counted and kept for `GET /config/status`; and the retirement of what a
 * reload replaced (a listener that was removed or moved, a Redis client), which drains as at
 * shutdown and is cut after the drain timeout.
 */
import { ConfigError, type ConfigProblem, formatProblem } from '../config/load.js';
import type { DataListener } from '../listener/listener.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';

export interface ReloadStatus {
  readonly ok: boolean;
  readonly trigger: string;
  readonly at: string;
  /** Hash of the config that is live after this attempt. */
  readonly hash: string;
  readonly problems: readonly ConfigProblem[];
}

export interface ReloadDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** The config file (as of now). */
  readonly file: () => string;
  /** Reads the file and makes it live; throws (a ConfigError, or any error) when it cannot. */
  readonly load: () => Promise<void>;
  /** The hash of the config live now. */
  readonly hash: () => string;
}

/** Runs reloads one at a time and remembers the last one. */
export class Reloads {
  last: ReloadStatus | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: ReloadDeps) {}

  reload(trigger: string): Promise<ReloadStatus> {
    const { metrics, logger } = this.deps;
    const run = async (): Promise<ReloadStatus> => {
      const at = new Date().toISOString();
      try {
        await this.deps.load();
        metrics.configReloads.labels('success').inc();
        this.last = { ok: true, trigger, at, hash: this.deps.hash(), problems: [] };
        logger.info(
          { event: 'config_reload', trigger, result: 'success', hash: this.deps.hash() },
          'config reloaded',
        );
      } catch (err) {
        const problems =
          err instanceof ConfigError
            ? err.problems
            : [{ file: this.deps.file(), line: 0, column: 0, key: '', message: String(err) }];
        metrics.configReloads.labels('failure').inc();
        this.last = { ok: false, trigger, at, hash: this.deps.hash(), problems };
        logger.error(
          { event: 'config_reload', trigger, result: 'failure', problems },
          `config reload rejected, the last good config keeps serving:\n${problems.map(formatProblem).join('\n')}`,
        );
      }
      return this.last;
    };
    const next = this.queue.then(run, run);
    this.queue = next;
    return next;
  }
}

/**
 * A listener a reload removed or moved drains as at shutdown: what is still open after the drain
 * timeout (WebSockets, slow responses) is cut. `retired` holds it meanwhile (a stop waits for it).
 */
export function retireListener(
  l: DataListener,
  drainTimeout: number,
  retired: Set<DataListener>,
  logger: Logger,
): void {
  logger.info(
    { event: 'listener_closing', listener: l.model.name, port: l.port },
    'listener closing (removed or moved by the new config)',
  );
  retired.add(l);
  const cut = setTimeout(() => l.forceClose(), drainTimeout);
  cut.unref();
  void l.close().then(() => {
    clearTimeout(cut);
    retired.delete(l);
  });
}

/** A Redis client a reload replaced is closed after the drain timeout (requests that started on it finish). */
export function retireAfter(drainTimeout: number, close: () => void): void {
  setTimeout(close, drainTimeout).unref();
}
