/**
 * The shutdown sequence's waits: `shutdown.delay` before the listeners stop accepting, then the
 * drain (requests in flight finish until `drain_timeout`, then what is left is cut).
 */
import type { DataListener } from '../listener/listener.js';
import type { Logger } from '../observability/logger.js';

/** Resolves after `ms` of real time. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Closes `listeners`, letting requests finish for `drainTimeout`, then cutting what is left. */
export async function drain(
  listeners: readonly DataListener[],
  drainTimeout: number,
  logger: Logger,
): Promise<void> {
  const closing = Promise.all(listeners.map((l) => l.close()));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    closing.then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), drainTimeout);
    }),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    logger.warn(
      { drain_timeout_ms: drainTimeout },
      'shutdown: drain timeout passed, closing remaining connections',
    );
    for (const l of listeners) l.forceClose();
    await closing;
  }
}
