/**
 * The deferred queue as intake, deliverer and admin routes see it, whichever backend holds it:
 * the embedded store (queue.ts: LMDB in data_dir, one delivering process) or Redis Streams
 * (redis-queue.ts: one stream and consumer group on stores.redis, shared by the replicas).
 *
 * Both keep the same contract: nothing is acknowledged before it is stored; an item is handed to
 * one delivery at a time; one at a time per lane (an upstream and an ordering key's value), in
 * arrival order; a result is recorded before the lane moves on.
 */
import type { Clock } from '../clock.js';
import type { DeferredStoreModel } from '../config/resolve.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { InternalResult } from '../pipeline/internal-call.js';
import type { Item, State } from './model.js';

export interface QueueDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: () => number;
  /** The live config's caps and retention. */
  readonly caps: () => DeferredStoreModel;
}

/** What an accepted request brings (the rest of an Item is the queue's). */
export type NewItem = Omit<
  Item,
  | 'id'
  | 'seq'
  | 'state'
  | 'createdAt'
  | 'updatedAt'
  | 'expiresAt'
  | 'nextAt'
  | 'attempts'
  | 'history'
  | 'lastBody'
  | 'bytes'
  | 'bodyBytes'
>;

export type EnqueueResult =
  | { readonly kind: 'stored' | 'existing'; readonly item: Item }
  | { readonly kind: 'full'; readonly detail: string };

export interface Filter {
  readonly status?: State | undefined;
  readonly upstream?: string | undefined;
  readonly route?: string | undefined;
  /** Only items older than this (ms since arrival). */
  readonly olderThan?: number | undefined;
  /** Only items younger than this. */
  readonly newerThan?: number | undefined;
}

export type ChangeResult =
  | { readonly ok: true; readonly item: Item }
  | { readonly ok: false; readonly status: 404 | 409; readonly detail: string };

export type UpstreamQueues = Record<
  string,
  { pending: number; delivering: number; oldest_pending_age_ms: number | null }
>;

export interface DeferredBackend {
  readonly backend: 'embedded' | 'redis';
  /** Told when an item may be due (new, replayed, or its lane moved on). */
  onDue: () => void;
  /** Whether items of this upstream and ordering key wait (a new one must queue behind them). */
  laneWaiting(upstream: string, orderingKey: string | undefined): boolean | Promise<boolean>;
  /**
   * Stores a request; resolves once it is stored as durably as the backend stores anything. A
   * request whose Idempotency-Key an item of the same route still waiting holds gets that item
   * (`existing`). Over a cap: `full`, nothing stored. Rejects when the store cannot be written.
   */
  enqueue(n: NewItem, firstDelay: number): Promise<EnqueueResult>;
  get(id: string): Item | undefined | Promise<Item | undefined>;
  /** Items matching `filter`, oldest first, at most `limit`. */
  list(
    filter: Filter,
    limit: number,
  ): { items: Item[]; truncated: boolean } | Promise<{ items: Item[]; truncated: boolean }>;
  /**
   * The lanes' heads that are due, at most `room(upstream)` per upstream, marked `delivering`
   * before they are handed out; and when to look again (Infinity: only when poked).
   */
  take(room: (upstream: string) => number): Promise<{ items: Item[]; nextAt: number }>;
  /** Records a delivery's result on an item `take` handed out. */
  settle(item: Item, r: InternalResult): Promise<State>;
  /** Puts back to `pending` the items handed out and not settled (at shutdown). */
  putBack(items: Iterable<Item>): Promise<void>;
  cancel(id: string): Promise<ChangeResult>;
  replay(id: string): Promise<ChangeResult>;
  bulk(action: 'cancel' | 'replay', filter: Filter): Promise<{ matched: number; changed: number }>;
  /** Wall-clock ms on the queue's clock (items' times are wall-clock). */
  now(): number;
  /** Per upstream: items waiting, the oldest one's age (the status page, /state). */
  upstreams(): UpstreamQueues;
  close(): Promise<void>;
}

/** One log line per state change (failed and expired at warn). */
export function logState(logger: Logger, item: Item, from: State | undefined): void {
  const last = item.history.at(-1);
  const fields = {
    event: 'deferred_state',
    id: item.id,
    route: item.route,
    upstream: item.upstream,
    from: from ?? null,
    to: item.state,
    attempts: item.attempts,
    request_id: item.requestId,
    status: last?.status,
    error: last?.error,
    reason: from === undefined ? item.reason : undefined,
  };
  const text = `deferred ${item.id} (${item.method} ${item.upstream}): ${from ?? 'accepted'} -> ${item.state}`;
  if (item.state === 'failed' || item.state === 'expired') logger.warn(fields, text);
  else logger.info(fields, text);
}

export function matches(i: Item, f: Filter, now: number): boolean {
  if (f.status !== undefined && i.state !== f.status) return false;
  if (f.upstream !== undefined && i.upstream !== f.upstream) return false;
  if (f.route !== undefined && i.route !== f.route) return false;
  const age = now - i.createdAt;
  if (f.olderThan !== undefined && age < f.olderThan) return false;
  if (f.newerThan !== undefined && age > f.newerThan) return false;
  return true;
}

/** The request bytes counted against deferred_store.max_bytes. */
export function requestBytes(n: NewItem): number {
  return (n.body?.length ?? 0) + n.path.length + n.headers.reduce((s, h) => s + h.length, 0);
}
