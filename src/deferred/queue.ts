/**
 * The deferred-delivery queue on the embedded store: items in the sub-database `deferred` (key: the
 * item's id, value: the whole item), and in memory the index of items still to deliver, per lane
 * (an upstream and an ordering key's value: FIFO within a lane, lanes independent).
 *
 * Every change is written, and its promise awaited (fsync), before anyone is told of it: the 202
 * of an accepted request, the next item of a lane, an admin call's answer. On open, an item left
 * `delivering` by a process that stopped or crashed goes back to `pending`.
 *
 * One process delivers from one data_dir at a time (a PID lock file, `deferred.lock`); a second
 * process on the same directory refuses to start its queue.
 */
import { randomUUID } from 'node:crypto';
import type { Database } from 'lmdb';
import { every } from '../clock.js';
import type { InternalResult } from '../pipeline/internal-call.js';
import { type EmbeddedStore, lockFile } from '../stores/embedded.js';
import {
  type ChangeResult,
  type DeferredBackend,
  type EnqueueResult,
  type Filter,
  logState,
  matches,
  type NewItem,
  type QueueDeps,
  requestBytes,
  type UpstreamQueues,
} from './backend.js';
import { DueHeap } from './heap.js';
import { type Item, isFinished, recordDelivery, STATES, type State } from './model.js';

/** An item still to deliver, as the index holds it (its request stays on disk). */
interface Live {
  readonly id: string;
  readonly seq: number;
  readonly upstream: string;
  readonly route: string;
  readonly lane: string;
  readonly bytes: number;
  readonly createdAt: number;
  readonly keyRef: string | undefined;
  state: 'pending' | 'delivering';
  nextAt: number;
}

const LOCK = 'deferred';

export type { ChangeResult, EnqueueResult, Filter, NewItem, QueueDeps } from './backend.js';

export class DeferredQueue implements DeferredBackend {
  readonly backend = 'embedded' as const;
  private readonly live = new Map<string, Live>();
  /** Lane -> ids in arrival order. */
  private readonly lanes = new Map<string, string[]>();
  /** Lanes with a delivery in flight. */
  private readonly busyLanes = new Set<string>();
  /**
   * Per upstream, lane heads by their next try (an entry is stale once its item is no longer a
   * pending head with that time; stale entries are dropped when they surface).
   */
  private readonly due = new Map<string, DueHeap>();
  /** route \0 Idempotency-Key -> id, for items still to deliver (a client's retry gets the same item). */
  private readonly keys = new Map<string, string>();
  private readonly finishedCounts: Record<State, number> = {
    pending: 0,
    delivering: 0,
    synced: 0,
    failed: 0,
    expired: 0,
    cancelled: 0,
  };
  private liveBytes = 0;
  private reservedItems = 0;
  private reservedBytes = 0;
  private seq = 0;
  private stopSweep: () => void = () => undefined;
  /** Told when an item may be due (new, replayed, or its lane moved on). */
  onDue: () => void = () => {};

  private constructor(
    private readonly store: EmbeddedStore,
    private readonly db: Database<Item, string>,
    private readonly deps: QueueDeps,
    private readonly release: () => Promise<void>,
  ) {}

  /**
   * Opens the queue in `store` (sub-database `deferred`): takes the lock, puts `delivering` items
   * back to `pending`, builds the index. Rejects when another live process holds the lock.
   */
  static async open(store: EmbeddedStore, deps: QueueDeps): Promise<DeferredQueue> {
    const release = await lockFile(store.dir, LOCK);
    if (!release)
      throw new Error(
        `another breakwater process delivers deferred requests from ${store.dir} (${LOCK}.lock): give each process its own data_dir`,
      );
    const q = new DeferredQueue(store, store.db<string, Item>('deferred'), deps, release);
    await q.recover();
    q.collect();
    q.stopSweep = every(deps.clock, 60_000, () => void q.sweep());
    return q;
  }

  private async recover(): Promise<void> {
    const back: Item[] = [];
    for (const { value } of this.db.getRange()) {
      const item = value;
      if (item.seq > this.seq) this.seq = item.seq;
      if (isFinished(item.state)) {
        this.finishedCounts[item.state]++;
        continue;
      }
      if (item.state === 'delivering') {
        item.state = 'pending';
        back.push(item);
      }
      this.index(item);
    }
    if (back.length > 0) {
      await this.store.transaction(() => {
        for (const item of back) this.db.putSync(item.id, item);
      });
      this.deps.logger.warn(
        { event: 'deferred_recovered', items: back.length },
        `${back.length} deferred items were being delivered when breakwater last stopped; they are pending again`,
      );
    }
    await this.sweep();
  }

  private index(item: Item): void {
    const lane = laneOf(item.upstream, item.orderingKey, item.id);
    const keyRef = item.idempotencyKey === undefined ? undefined : `${item.route}\0${item.idempotencyKey}`;
    const l: Live = {
      id: item.id,
      seq: item.seq,
      upstream: item.upstream,
      route: item.route,
      lane,
      bytes: item.bytes,
      createdAt: item.createdAt,
      keyRef,
      state: item.state === 'delivering' ? 'delivering' : 'pending',
      nextAt: item.nextAt,
    };
    this.live.set(item.id, l);
    this.liveBytes += item.bytes;
    if (keyRef !== undefined) this.keys.set(keyRef, item.id);
    let ids = this.lanes.get(lane);
    if (!ids) {
      ids = [];
      this.lanes.set(lane, ids);
    }
    // Arrival order; a replayed item takes its place back.
    let at = ids.length;
    while (at > 0 && (this.live.get(ids[at - 1] as string)?.seq ?? 0) > item.seq) at--;
    ids.splice(at, 0, item.id);
    if (at === 0) this.schedule(l);
  }

  /** Puts a lane head in its upstream's schedule at its next try. */
  private schedule(l: Live): void {
    let h = this.due.get(l.upstream);
    if (!h) {
      h = new DueHeap();
      this.due.set(l.upstream, h);
    }
    h.push({ id: l.id, lane: l.lane, at: l.nextAt });
  }

  /** Schedules a lane's head if it is pending and the lane free (after a change in the lane). */
  private scheduleHead(lane: string): void {
    if (this.busyLanes.has(lane)) return;
    const head = this.live.get(this.lanes.get(lane)?.[0] ?? '');
    if (head?.state === 'pending') this.schedule(head);
  }

  /** Whether a schedule entry still stands for a pending lane head due at that time. */
  private valid(id: string, lane: string, at: number): Live | undefined {
    const l = this.live.get(id);
    if (l?.state !== 'pending' || l.nextAt !== at || this.busyLanes.has(lane)) return undefined;
    return this.lanes.get(lane)?.[0] === id ? l : undefined;
  }

  private unindex(l: Live): void {
    this.live.delete(l.id);
    this.liveBytes -= l.bytes;
    if (l.keyRef !== undefined && this.keys.get(l.keyRef) === l.id) this.keys.delete(l.keyRef);
    const ids = this.lanes.get(l.lane);
    if (!ids) return;
    const at = ids.indexOf(l.id);
    if (at >= 0) ids.splice(at, 1);
    if (ids.length === 0) this.lanes.delete(l.lane);
    else if (at === 0) {
      // The lane moves on at once: the next item waited only for this one.
      const next = this.live.get(ids[0] as string);
      if (next) {
        next.nextAt = Math.min(next.nextAt, this.deps.clock.wall());
        this.schedule(next);
      }
    }
  }

  /** Whether items of this upstream and ordering key wait (a new one must queue behind them). */
  laneWaiting(upstream: string, orderingKey: string | undefined): boolean {
    return orderingKey !== undefined && this.lanes.has(laneOf(upstream, orderingKey, ''));
  }

  /**
   * Stores a request; resolves once it is durable. A request whose Idempotency-Key an item of the
   * same route still waiting holds gets that item (`existing`). Over a cap: `full`, nothing stored.
   */
  async enqueue(n: NewItem, firstDelay: number): Promise<EnqueueResult> {
    if (n.idempotencyKey !== undefined) {
      const had = this.keys.get(`${n.route}\0${n.idempotencyKey}`);
      const item = had === undefined ? undefined : this.db.get(had);
      if (item) return { kind: 'existing', item };
    }
    const bytes = requestBytes(n);
    const caps = this.deps.caps();
    const items = this.live.size + this.reservedItems;
    if (items + 1 > caps.maxItems)
      return {
        kind: 'full',
        detail: `the deferred queue holds ${items} items waiting for delivery (deferred_store.max_items: ${caps.maxItems})`,
      };
    const used = this.liveBytes + this.reservedBytes;
    if (used + bytes > caps.maxBytes)
      return {
        kind: 'full',
        detail: `the deferred queue holds ${used} bytes waiting for delivery; this request needs ${bytes} more (deferred_store.max_bytes: ${caps.maxBytes})`,
      };
    const now = this.deps.clock.wall();
    const item: Item = {
      ...n,
      id: randomUUID(),
      seq: ++this.seq,
      bytes,
      state: 'pending',
      createdAt: now,
      updatedAt: now,
      expiresAt: now + n.maxAge,
      nextAt: now + firstDelay,
      attempts: 0,
      history: [],
      lastBody: undefined,
    };
    this.reservedItems++;
    this.reservedBytes += bytes;
    try {
      await this.db.put(item.id, item);
    } finally {
      this.reservedItems--;
      this.reservedBytes -= bytes;
    }
    this.index(item);
    this.deps.metrics.deferredEnqueued.labels(item.route, item.upstream).inc();
    this.logState(item, undefined);
    this.onDue();
    return { kind: 'stored', item };
  }

  get(id: string): Item | undefined {
    return this.current(id);
  }

  /** The stored item, with the state the index has now (a delivery being handed out is ahead of the disk). */
  private current(id: string): Item | undefined {
    const item = this.db.get(id);
    const l = this.live.get(id);
    if (item && l && l.state === 'delivering') item.state = 'delivering';
    return item;
  }

  /** Items matching `filter`, oldest first, at most `limit`. */
  list(filter: Filter, limit: number): { items: Item[]; truncated: boolean } {
    const items: Item[] = [];
    const now = this.deps.clock.wall();
    const all: Item[] = [];
    for (const { value } of this.db.getRange()) if (matches(value, filter, now)) all.push(value);
    all.sort((a, b) => a.seq - b.seq);
    for (const i of all) {
      if (items.length >= limit) return { items, truncated: true };
      items.push(i);
    }
    return { items, truncated: false };
  }

  /**
   * The lanes' heads that are due, at most `room(upstream)` per upstream, marked `delivering`
   * (durably) before they are handed out; and when the next one falls due (Infinity: none).
   */
  async take(room: (upstream: string) => number): Promise<{ items: Item[]; nextAt: number }> {
    const now = this.deps.clock.wall();
    let nextAt = Number.POSITIVE_INFINITY;
    const taken: Item[] = [];
    for (const [upstream, h] of this.due) {
      let left = room(upstream);
      for (let top = h.peek(); top !== undefined; top = h.peek()) {
        const l = this.valid(top.id, top.lane, top.at);
        if (!l) {
          h.pop();
          continue;
        }
        if (top.at > now) {
          if (top.at < nextAt) nextAt = top.at;
          break;
        }
        if (left <= 0) break;
        h.pop();
        const item = this.db.get(l.id);
        if (!item) {
          this.unindex(l);
          continue;
        }
        left--;
        l.state = 'delivering';
        this.busyLanes.add(l.lane);
        item.state = 'delivering';
        item.updatedAt = now;
        taken.push(item);
      }
      if (h.size === 0) this.due.delete(upstream);
    }
    if (taken.length > 0) {
      await this.store.transaction(() => {
        for (const item of taken) this.db.putSync(item.id, item);
      });
      for (const item of taken) this.logState(item, 'pending');
    }
    return { items: taken, nextAt };
  }

  /** Records a delivery's result on an item `take` handed out; resolves once durable. */
  async settle(item: Item, r: InternalResult): Promise<State> {
    const now = this.deps.clock.wall();
    const to = recordDelivery(item, r, now, this.deps.random);
    const outcome = to === 'pending' ? 'retry' : to;
    this.deps.metrics.deferredDeliveries.labels(item.upstream, outcome).inc();
    await this.move(item, to, now);
    return to;
  }

  /** Writes `item` in state `to` and updates the index. */
  private async move(item: Item, to: State, now: number): Promise<void> {
    const from = item.state;
    item.state = to;
    item.updatedAt = now;
    // A synced request's body is of no more use (a synced item is never replayed).
    const stored = to === 'synced' ? { ...item, body: null } : item;
    await this.db.put(item.id, stored);
    const l = this.live.get(item.id);
    if (l) {
      if (from === 'delivering') this.busyLanes.delete(l.lane);
      if (isFinished(to)) {
        this.unindex(l);
        this.finishedCounts[to]++;
      } else {
        l.state = to === 'delivering' ? 'delivering' : 'pending';
        l.nextAt = item.nextAt;
      }
      this.scheduleHead(l.lane);
    } else if (!isFinished(to)) {
      if (isFinished(from)) this.finishedCounts[from]--;
      this.index(item);
    }
    if (from !== to) this.logState(item, from);
    this.onDue();
  }

  /** Puts back to `pending` the items handed out and not settled (at shutdown). */
  async putBack(items: Iterable<Item>): Promise<void> {
    // (One settled meanwhile keeps its new state.)
    const back = [...items].filter((i) => i.state === 'delivering');
    if (back.length === 0) return;
    const now = this.deps.clock.wall();
    await this.store.transaction(() => {
      for (const item of back) {
        item.state = 'pending';
        item.updatedAt = now;
        this.db.putSync(item.id, item);
      }
    });
    for (const item of back) {
      const l = this.live.get(item.id);
      if (l) {
        l.state = 'pending';
        this.busyLanes.delete(l.lane);
        this.scheduleHead(l.lane);
      }
      this.logState(item, 'delivering');
    }
  }

  /** Cancels a pending item (a delivering one: 409, try again). */
  async cancel(id: string): Promise<ChangeResult> {
    const item = this.current(id);
    if (!item) return { ok: false, status: 404, detail: `no deferred item ${id}` };
    if (item.state !== 'pending')
      return {
        ok: false,
        status: 409,
        detail: `item ${id} is ${item.state}; only a pending item can be cancelled${item.state === 'delivering' ? ' (try again when this delivery is over)' : ''}`,
      };
    await this.move(item, 'cancelled', this.deps.clock.wall());
    return { ok: true, item };
  }

  /**
   * Delivers an item again: a failed, expired or cancelled one goes back to pending with its
   * attempts and max_age starting over; a pending one is tried now. Synced or delivering: 409.
   */
  async replay(id: string): Promise<ChangeResult> {
    const item = this.current(id);
    if (!item) return { ok: false, status: 404, detail: `no deferred item ${id}` };
    if (item.state === 'synced' || item.state === 'delivering')
      return {
        ok: false,
        status: 409,
        detail: `item ${id} is ${item.state}; only a pending, failed, expired or cancelled item can be replayed`,
      };
    const now = this.deps.clock.wall();
    item.nextAt = now;
    if (item.state !== 'pending') {
      item.attempts = 0;
      item.expiresAt = now + item.maxAge;
    }
    const l = this.live.get(id);
    if (l) l.nextAt = now;
    await this.move(item, 'pending', now);
    return { ok: true, item };
  }

  /** cancel or replay every item matching `filter`; how many matched and how many changed. */
  async bulk(action: 'cancel' | 'replay', filter: Filter): Promise<{ matched: number; changed: number }> {
    const { items } = this.list(filter, Number.POSITIVE_INFINITY);
    let changed = 0;
    for (const i of items) {
      const r = action === 'cancel' ? await this.cancel(i.id) : await this.replay(i.id);
      if (r.ok) changed++;
    }
    return { matched: items.length, changed };
  }

  /** Wall-clock ms on the queue's clock (items' times are wall-clock). */
  now(): number {
    return this.deps.clock.wall();
  }

  /** Removes finished items older than deferred_store.retention. */
  async sweep(): Promise<number> {
    const cutoff = this.deps.clock.wall() - this.deps.caps().retention;
    const old: Item[] = [];
    for (const { value } of this.db.getRange())
      if (isFinished(value.state) && value.updatedAt < cutoff) old.push(value);
    if (old.length === 0) return 0;
    await this.store.transaction(() => {
      for (const i of old) this.db.removeSync(i.id);
    });
    for (const i of old) this.finishedCounts[i.state]--;
    return old.length;
  }

  /** Per upstream: items waiting, the oldest one's age (the status page, /state). */
  upstreams(): UpstreamQueues {
    const now = this.deps.clock.wall();
    const out: UpstreamQueues = {};
    for (const l of this.live.values()) {
      let u = out[l.upstream];
      if (!u) {
        u = { pending: 0, delivering: 0, oldest_pending_age_ms: null };
        out[l.upstream] = u;
      }
      u[l.state]++;
      const age = now - l.createdAt;
      if (u.oldest_pending_age_ms === null || age > u.oldest_pending_age_ms) u.oldest_pending_age_ms = age;
    }
    return out;
  }

  /** Gauges set at each scrape. */
  private collect(): void {
    const { metrics } = this.deps;
    metrics.collectors.set('deferred', () => {
      const counts = { ...this.finishedCounts };
      let oldest = Number.POSITIVE_INFINITY;
      for (const l of this.live.values()) {
        counts[l.state]++;
        if (l.createdAt < oldest) oldest = l.createdAt;
      }
      for (const s of STATES) metrics.deferredItems.labels(s).set(counts[s]);
      metrics.deferredOldestPending.set(
        oldest === Number.POSITIVE_INFINITY ? 0 : Math.max(0, (this.deps.clock.wall() - oldest) / 1000),
      );
      metrics.deferredStoreBytes.set(this.store.sizeBytes());
    });
  }

  private logState(item: Item, from: State | undefined): void {
    logState(this.deps.logger, item, from);
  }

  async close(): Promise<void> {
    this.stopSweep();
    this.deps.metrics.collectors.delete('deferred');
    await this.store.flushed();
    await this.release();
  }
}

function laneOf(upstream: string, orderingKey: string | undefined, id: string): string {
  return orderingKey === undefined ? `${upstream}\0#${id}` : `${upstream}\0k${orderingKey}`;
}
