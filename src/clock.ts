/**
 * Time and randomness, in one place. Everything that measures time, waits, or draws a random
 * number takes a `Clock` (and a `random`) from here, injected from the composition root (app.ts),
 * so tests can step time with a manual clock (test/kit/clock.ts) instead of sleeping.
 *
 * - `now()`: monotonic milliseconds (performance.now()); every duration, deadline and `ctx.start`.
 * - `wall()`: wall-clock milliseconds since 1970, for HTTP dates (Retry-After, cache age) and the
 *   config-loaded timestamp.
 * - `setTimeout` / `clearTimeout`: timers; a handle is whatever the clock makes.
 * - `systemRandom`: the process's randomness (jitter, the balancer's random choices).
 *
 * Documented exceptions (test/unit/clock.test.ts lists them, and fails on any other):
 * - the process lifecycle (lifecycle/shutdown.ts: the shutdown delay and drain timer;
 *   lifecycle/reload.ts: the drain of a listener or Redis client a reload retired;
 *   lifecycle/watch.ts: the config file watcher's debounce) runs on real time, so a test's stepped
 *   clock can never stall a shutdown or a reload;
 * - the status page's script (admin/status-page.ts) runs in the browser;
 * - the relay's send_timeout (attempt/relay.ts) is an idle timer refreshed on every write to the
 *   client (Node's `timer.refresh()`, a field write on the hot path), like a socket's timeout;
 * - Node's socket idle timeouts (`socket.setTimeout`, `req.setTimeout`) count a socket's silence
 *   in Node's own timer list and are not calls to the global `setTimeout`.
 */

/** Time as breakwater sees it: a monotonic `now` in ms, timers, and wall-clock ms for HTTP dates. */
export interface Clock {
  now(): number;
  wall(): number;
  /** `background`: the timer does not keep the process alive (periodic work: DNS, health checks). */
  setTimeout(fn: () => void, ms: number, background?: boolean): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  wall: () => Date.now(),
  setTimeout: (fn, ms, background) => {
    const t = setTimeout(fn, ms);
    if (background === true) t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Resolves after `ms` of `clock` time. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}

/** A number in [0, 1): the process's randomness. */
/**
 * Runs `fn` every `ms` on `clock` in the background (the timer does not keep the process alive);
 * returns the function that stops it.
 */
export function every(clock: Clock, ms: number, fn: () => void): () => void {
  let handle: unknown;
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    fn();
    handle = clock.setTimeout(tick, ms, true);
  };
  handle = clock.setTimeout(tick, ms, true);
  return () => {
    stopped = true;
    clock.clearTimeout(handle);
  };
}

export function systemRandom(): number {
  return Math.random();
}
