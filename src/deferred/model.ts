/**
 * Deferred delivery: the shape of a stored item, its state machine, and the two judgements the
 * feature makes (pure functions, no I/O):
 *
 * - whether a live attempt's outcome lets the request be stored instead (`deferTrigger`): only when
 *   the upstream did not, or cannot have, processed it (or it carries an Idempotency-Key the
 *   upstream deduplicates by);
 * - what a delivery's result does to the item (`judgeDelivery`): synced, failed, retried later.
 *
 *   pending ──deliver──> delivering ──2xx──> synced
 *      ^                     │ ──4xx (not 408/425/429), 3xx, max_attempts──> failed
 *      └──────5xx, 408/425/429, no answer──┘ ──next try after max_age──> expired
 *   pending ──cancel──> cancelled;   failed / expired / cancelled ──replay──> pending
 *
 * A `delivering` item left by a process that stopped (or crashed) goes back to `pending`.
 */
import type { DeferredPolicy } from '../config/resolve.js';
import type { InternalResult } from '../pipeline/internal-call.js';
import type { Outcome, RequestContext } from '../pipeline/types.js';

export const STATES = ['pending', 'delivering', 'synced', 'failed', 'expired', 'cancelled'] as const;
export type State = (typeof STATES)[number];

export function isFinished(s: State): boolean {
  return s === 'synced' || s === 'failed' || s === 'expired' || s === 'cancelled';
}

/** One delivery attempt as the item records it. */
export interface AttemptRecord {
  /** Wall-clock ms. */
  readonly at: number;
  /** The upstream's status, if it answered. */
  readonly status?: number | undefined;
  /** Why there was no answer (connect-failure, circuit-open, ...), if none. */
  readonly error?: string | undefined;
}

/** What the store keeps per item (msgpack in the embedded store). */
export interface Item {
  readonly id: string;
  /** Arrival order (FIFO within an ordering key). */
  readonly seq: number;
  readonly route: string;
  readonly upstream: string;
  readonly method: string;
  /** Path and query as sent to the upstream (after strip_prefix). */
  readonly path: string;
  /** Flat [name, value, ...], hop-by-hop and framing headers removed. */
  readonly headers: string[];
  readonly body: Buffer | null;
  readonly requestId: string;
  readonly clientAddress: string | undefined;
  readonly idempotencyKey: string | undefined;
  /** The ordering key's value (undefined: the item is ordered with nothing). */
  readonly orderingKey: string | undefined;
  /** Why the live attempt did not deliver it (connect_failure, breaker_open, 503, ...). */
  readonly reason: string;
  /** Request bytes counted against deferred_store.max_bytes. */
  readonly bytes: number;
  /** The body's length, where `body` is not loaded (the Redis backend's lists). */
  readonly bodyBytes?: number | undefined;
  readonly schedule: readonly number[];
  /** 0: no limit. */
  readonly maxAttempts: number;
  readonly maxAge: number;
  state: State;
  /** Wall-clock ms. */
  readonly createdAt: number;
  updatedAt: number;
  /** No delivery after this (wall-clock ms): the item expires. Reset by a replay. */
  expiresAt: number;
  /** The next delivery is not before this (wall-clock ms). */
  nextAt: number;
  /** Deliveries that reached a decision (policy refusals such as an open breaker not counted). */
  attempts: number;
  /** The last attempts, newest last (at most HISTORY). */
  history: AttemptRecord[];
  /** The last answer's first bytes (text), for the admin API. */
  lastBody: string | undefined;
}

export const HISTORY = 20;
/** Bytes of an answer's body kept on the item. */
export const LAST_BODY_BYTES = 512;

/**
 * Why the live attempt's outcome lets the request be deferred, or undefined when it must be
 * answered as it is (it was or may have been processed, the client went away, a 4xx...).
 */
export function deferTrigger(
  o: Outcome,
  ctx: RequestContext,
  policy: DeferredPolicy,
  hasKey: boolean,
): string | undefined {
  let t: string | undefined;
  switch (o.type) {
    case 'local':
      return undefined;
    case 'response':
      return policy.onStatus.has(o.head.status) ? String(o.head.status) : undefined;
    case 'problem':
      switch (o.problem.kind) {
        case 'circuit-open':
          t = 'breaker_open';
          break;
        case 'no-healthy-endpoint':
          t = 'connect_failure';
          break;
        case 'bulkhead-full':
          t = 'bulkhead_full';
          break;
        case 'rate-limited':
          t = 'rate_limited';
          break;
        case 'request-timeout':
        case 'upstream-timeout':
        case 'upstream-connect-timeout':
          t = !ctx.maybeProcessed || hasKey ? 'timeout_before_send' : undefined;
          break;
        default:
          return undefined;
      }
      break;
    case 'failure': {
      const k = o.error.kind;
      if (ctx.clientGone || k === 'client-aborted' || k === 'request-body') return undefined;
      if (k === 'connect-failure' || k === 'connect-timeout') t = 'connect_failure';
      else if (k === 'timeout') t = !ctx.maybeProcessed || hasKey ? 'timeout_before_send' : undefined;
      // A reset before the request was written: never processed.
      else t = ctx.maybeProcessed ? undefined : 'connect_failure';
      break;
    }
  }
  return t !== undefined && policy.on.has(t) ? t : undefined;
}

export type Verdict =
  | { readonly to: 'synced' | 'failed'; readonly counted: true }
  | { readonly to: 'pending'; readonly counted: boolean };

/**
 * What a delivery's result does: 2xx synced; 408, 425, 429 and 5xx tried again; any other answer
 * (4xx, 3xx) failed at once (a poison request is not retried for a day). No answer: tried again;
 * a policy's refusal (open breaker, limiter, bulkhead) is not counted as an attempt.
 */
export function judgeDelivery(r: InternalResult): Verdict {
  if (r.type === 'failure') return { to: 'pending', counted: r.cause !== 'refused' };
  const s = r.status;
  if (s >= 200 && s < 300) return { to: 'synced', counted: true };
  if (s >= 500 || s === 408 || s === 425 || s === 429) return { to: 'pending', counted: true };
  return { to: 'failed', counted: true };
}

/** The wait before the next delivery after `attempts` attempts: the schedule's step, ±20% jitter. */
export function nextDelay(schedule: readonly number[], attempts: number, random: () => number): number {
  const step = schedule[Math.min(attempts, schedule.length - 1)] ?? 0;
  return Math.round(step * (0.8 + 0.4 * random()));
}

/**
 * Records a delivery's result on `item` (attempts, history, the last answer's start, the next try)
 * and says the state it goes to: its verdict, or failed/expired when a retry would pass
 * max_attempts or the item's max_age. The same for every backend; the caller makes it durable.
 */
export function recordDelivery(item: Item, r: InternalResult, now: number, random: () => number): State {
  const v = judgeDelivery(r);
  if (v.counted) item.attempts++;
  item.history.push(
    r.type === 'response' ? { at: now, status: r.status } : { at: now, error: r.problem.kind },
  );
  if (item.history.length > HISTORY) item.history.splice(0, item.history.length - HISTORY);
  item.lastBody =
    r.type === 'response'
      ? r.body.subarray(0, LAST_BODY_BYTES).toString('utf8')
      : `${r.problem.status} ${r.problem.kind}: ${r.problem.detail}`;
  if (v.to !== 'pending') return v.to;
  const nextAt = now + nextDelay(item.schedule, item.attempts, random);
  if (item.maxAttempts > 0 && item.attempts >= item.maxAttempts) return 'failed';
  if (nextAt > item.expiresAt) return 'expired';
  item.nextAt = nextAt;
  return 'pending';
}

/** What the admin API and the 202's body show of an item (no headers or body: they may hold secrets). */
export function summary(i: Item, now: number): Record<string, unknown> {
  return {
    id: i.id,
    status: i.state,
    route: i.route,
    upstream: i.upstream,
    method: i.method,
    path: i.path,
    reason: i.reason,
    ordering_key: i.orderingKey ?? null,
    idempotency_key: i.idempotencyKey ?? null,
    attempts: i.attempts,
    created_at: new Date(i.createdAt).toISOString(),
    updated_at: new Date(i.updatedAt).toISOString(),
    age_ms: Math.max(0, now - i.createdAt),
    next_attempt_at: i.state === 'pending' ? new Date(i.nextAt).toISOString() : null,
    expires_at: new Date(i.expiresAt).toISOString(),
    body_bytes: i.bodyBytes ?? i.body?.length ?? 0,
  };
}
