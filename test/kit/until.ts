/**
 * Waiting for a condition instead of sleeping for a guess: polls `check` (sync or async) every
 * 10 ms until it holds, and fails with `what` after `timeoutMs` (generous: a busy machine is slow,
 * and a test that waits longer than needed costs only time when something is broken).
 */
export async function until(
  check: () => boolean | Promise<boolean>,
  what = 'condition',
  timeoutMs = 5000,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > end) throw new Error(`${what}: not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
