/**
 * The background deliverer: replays due items through their upstream's pipeline (limiter,
 * bulkhead, deadline, retries, breaker: a recovering upstream is not flooded), at most
 * `deferred_store.concurrency` per upstream, one at a time per lane (FIFO per ordering key), and
 * records each result before the lane moves on.
 *
 * Runs while breakwater serves; `stop` lets deliveries in flight finish for a bounded time and
 * puts the others back to `pending`.
 */

import type { Clock } from '../clock.js';
import type { Logger } from '../observability/logger.js';
import type { InternalRequest, InternalResult } from '../pipeline/internal-call.js';
import type { DeferredBackend } from './backend.js';
import type { Item } from './model.js';

/** The answer of a delivery read into memory at most (what is kept of it is LAST_BODY_BYTES). */
const MAX_ANSWER_BYTES = 64 * 1024;
/** Longest sleep between two looks at the queue (a clock that jumps, an item replayed). */
const MAX_SLEEP = 1_000;

export type Send = (upstream: string, r: InternalRequest, maxAnswerBytes: number) => Promise<InternalResult>;

export class Deliverer {
  private readonly inFlight = new Map<string, { item: Item; done: Promise<void> }>();
  private readonly perUpstream = new Map<string, number>();
  private timer: unknown;
  private scheduled = false;
  private running = false;
  private stopped = false;
  private ticking = false;

  constructor(
    private readonly queue: DeferredBackend,
    private readonly send: Send,
    private readonly concurrency: () => number,
    private readonly logger: Logger,
    /** Items' times are wall-clock (`clock.wall()`): they outlive the process. */
    private readonly clock: Clock,
  ) {
    queue.onDue = () => this.poke();
  }

  start(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    this.poke();
  }

  /** Looks at the queue soon (coalesced: many pokes, one look). */
  poke(): void {
    if (!this.running || this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.tick();
    });
  }

  private async tick(): Promise<void> {
    if (!this.running) return;
    if (this.ticking) {
      this.poke();
      return;
    }
    this.ticking = true;
    try {
      const limit = this.concurrency();
      const { items, nextAt } = await this.queue.take((u) => limit - (this.perUpstream.get(u) ?? 0));
      if (!this.running) {
        // Stopped while the queue was read (a Redis take is several round trips): what it handed
        // out goes back to pending, undelivered, like the deliveries stop did not wait for.
        if (items.length > 0) await this.queue.putBack(items);
        return;
      }
      for (const item of items) this.deliver(item);
      this.clock.clearTimeout(this.timer);
      const wait = Math.min(MAX_SLEEP, Math.max(0, nextAt - this.clock.wall()));
      this.timer = this.clock.setTimeout(
        () => void this.tick(),
        Number.isFinite(wait) ? wait : MAX_SLEEP,
        true,
      );
    } catch (err) {
      this.logger.error({ err, event: 'deferred_error' }, 'deferred deliverer: the queue could not be read');
      this.clock.clearTimeout(this.timer);
      this.timer = this.clock.setTimeout(() => void this.tick(), MAX_SLEEP, true);
    } finally {
      this.ticking = false;
    }
  }

  private deliver(item: Item): void {
    this.perUpstream.set(item.upstream, (this.perUpstream.get(item.upstream) ?? 0) + 1);
    const done = (async () => {
      const r = await this.send(
        item.upstream,
        {
          method: item.method,
          path: item.path,
          headers: item.headers,
          body: item.body === null ? null : Buffer.from(item.body),
          requestId: item.requestId,
          clientAddress: item.clientAddress,
        },
        MAX_ANSWER_BYTES,
      );
      // Stopped meanwhile: the item was put back to pending; this answer is not recorded (the
      // next delivery repeats it, and the Idempotency-Key lets the upstream deduplicate).
      if (this.stopped) return;
      try {
        await this.queue.settle(item, r);
      } catch (err) {
        this.logger.error(
          { err, event: 'deferred_error', id: item.id },
          'deferred deliverer: a result could not be stored',
        );
      }
    })()
      .catch((err: unknown) =>
        this.logger.error(
          { err, event: 'deferred_error', id: item.id },
          'deferred deliverer: a delivery failed',
        ),
      )
      .finally(() => {
        this.inFlight.delete(item.id);
        this.perUpstream.set(item.upstream, (this.perUpstream.get(item.upstream) ?? 1) - 1);
        this.poke();
      });
    this.inFlight.set(item.id, { item, done });
  }

  /**
   * Stops taking items; waits up to `graceMs` for deliveries in flight, then puts those still
   * unsettled back to `pending` (durably).
   */
  async stop(graceMs: number): Promise<void> {
    this.running = false;
    this.clock.clearTimeout(this.timer);
    const pending = [...this.inFlight.values()];
    if (pending.length > 0) {
      let t: unknown;
      await Promise.race([
        Promise.all(pending.map((p) => p.done)),
        new Promise<void>((r) => {
          t = this.clock.setTimeout(r, graceMs);
        }),
      ]);
      this.clock.clearTimeout(t);
    }
    this.stopped = true;
    await this.queue.putBack([...this.inFlight.values()].map((p) => p.item));
  }
}
