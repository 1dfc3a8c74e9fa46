/**
 * Deferred delivery as the running breakwater holds it: the queue (embedded store or Redis
 * Streams, behind one interface), its deliverer, and the per-route intake that the listeners
 * consult. Opened the first time a config has a route with `deferred:`, kept across reloads,
 * closed at shutdown.
 */

import type { Clock } from '../clock.js';
import type { DeferredStoreModel, RouteModel } from '../config/resolve.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Handler } from '../pipeline/types.js';
import type { DeferredBackend } from './backend.js';
import { Deliverer, type Send } from './deliverer.js';
import { DeferredRoute } from './intake.js';

export type { DeferredBackend } from './backend.js';
export { DeferredRoute } from './intake.js';
export { DeferredQueue } from './queue.js';
export { RedisDeferredQueue } from './redis-queue.js';

export interface DeferredDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: () => number;
  readonly caps: () => DeferredStoreModel;
  readonly send: Send;
  /** The admin listener's base URL, for Location. */
  readonly base: () => string;
}

export class Deferred {
  private constructor(
    readonly queue: DeferredBackend,
    readonly deliverer: Deliverer,
    private readonly deps: DeferredDeps,
  ) {}

  /** Runs deferred delivery on `queue` (opened by the caller on the backend the config names). */
  static open(queue: DeferredBackend, deps: DeferredDeps): Deferred {
    const deliverer = new Deliverer(queue, deps.send, () => deps.caps().concurrency, deps.logger, deps.clock);
    return new Deferred(queue, deliverer, deps);
  }

  /** Whether any route of the config defers requests. */
  static wanted(routes: Iterable<RouteModel>): boolean {
    for (const r of routes) if (r.deferred) return true;
    return false;
  }

  /**
   * The intake of each route with `deferred:`; `build` makes a route's pipeline without its
   * fallback layer. Undefined when no route of these defers.
   */
  routes(
    routes: readonly RouteModel[],
    build: (r: RouteModel) => Handler,
  ): Map<RouteModel, DeferredRoute> | undefined {
    let out: Map<RouteModel, DeferredRoute> | undefined;
    for (const r of routes) {
      if (!r.deferred) continue;
      out ??= new Map();
      out.set(r, new DeferredRoute(r, r.deferred, build(r), this.queue, this.deps.base, this.deps.random));
    }
    return out;
  }

  /** Stops delivering (in-flight deliveries get `graceMs`), then closes the queue. */
  async stop(graceMs: number): Promise<void> {
    await this.deliverer.stop(graceMs);
    await this.queue.close();
  }
}
