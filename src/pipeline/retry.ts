/**
 * Retries, safe by default.
 *
 * - Only outcomes named in `retry_on` are retried, at most `max_attempts` attempts in all (the first
 *   included).
 * - A request is retried after an attempt the upstream may have processed only when it may be sent
 *   twice (`maySendAgain`): an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) that the
 *   route's `idempotency` block does not cover, or an opt-in (`retry_non_idempotent`, a gRPC code
 *   named in `retry_on`), or an Idempotency-Key that the upstream declares it honours
 *   (`idempotency_keys: honored`). `retry.methods` narrows this further. An attempt that certainly
 *   was not processed (connect failure, refused HTTP/2 stream) may be retried whatever the request.
 * - A body the listener buffered (request buffering, in memory or a temporary file) is sent again
 *   as is. A gRPC request stream that ends at once (a unary call) is kept for replay up to
 *   `max_body_bytes`. Any other stream (a longer gRPC stream; an upload on a route with
 *   `request_buffering: false`, which asked for streaming and is not held back here either) is
 *   never retried once sent (counted as skipped: body_too_large).
 * - Waits grow exponentially with jitter; a `Retry-After` from the upstream is honoured (never
 *   retry earlier than it says), capped by `max_wait`; no retry starts that could not finish
 *   (wait + attempt timeout) before the request deadline (a gRPC call's grpc-timeout: wait only).
 * - A retry budget per upstream caps retries at `budget.ratio` of requests over a sliding window,
 *   with `budget.min_per_second` always allowed, so retries cannot turn an outage into a storm.
 * - Each retry prefers an endpoint not tried yet (the balancer's `avoid`).
 */

import { grpcCodeName } from '../attempt/grpc.js';
import type { Clock } from '../clock.js';
import type { RetryOutcome, RetryPolicy } from '../config/resolve.js';
import { problem } from '../listener/problem.js';
import { readUpTo, replayable } from '../listener/request-body.js';
import { type Classified, classifyOutcome, compileOutcomes, type OutcomeMatcher } from './outcome.js';
import type { Layer, Outcome, RequestContext } from './types.js';

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

/**
 * Whether a request may be sent to the upstream again after an attempt that the upstream may have
 * processed. `grpcNamed`: that attempt ended in a gRPC status that `retry_on` names (the service's
 * word that the call may go again, as gRPC's own retryableStatusCodes).
 */
export function maySendAgain(ctx: RequestContext, policy: RetryPolicy, grpcNamed: boolean): boolean {
  const method = ctx.method;
  if (policy.methods !== undefined && !policy.methods.has(method)) return false;
  // The upstream's own deduplication makes a keyed request safe to repeat, whatever else holds.
  if (ctx.upstream.model.idempotencyKeys === 'honored' && ctx.req.headers['idempotency-key'] !== undefined)
    return true;
  // A route with proxy-side idempotency says the upstream must see the request at most once.
  if (ctx.route.idempotency?.methods.has(method)) return false;
  return IDEMPOTENT.has(method) || policy.retryNonIdempotent || grpcNamed;
}

/** Whether an outcome is a gRPC status (from the response headers) that `retry_on` names. */
export function grpcStatusNamed(policy: RetryPolicy, o: Outcome): boolean {
  if (o.type !== 'response') return false;
  const g = o.head.grpcStatus;
  return g !== undefined && g !== 0 && policy.retryOn.includes(grpcCodeName(g) as RetryOutcome);
}

export type SkipReason = 'budget' | 'body_too_large' | 'deadline' | 'method' | 'retry_after';

export interface RetryEvents {
  retried(reason: string): void;
  skipped(reason: SkipReason): void;
}

/** A sliding window of one-second buckets counting requests and retries. */
export class RetryBudget {
  private readonly seconds: number;
  private readonly stamp: Float64Array;
  private readonly requests: Float64Array;
  private readonly retries: Float64Array;

  constructor(
    private readonly budget: RetryPolicy['budget'],
    private readonly clock: Clock,
  ) {
    this.seconds = Math.max(1, Math.ceil(budget.window / 1000));
    this.stamp = new Float64Array(this.seconds).fill(-1);
    this.requests = new Float64Array(this.seconds);
    this.retries = new Float64Array(this.seconds);
  }

  private slot(): number {
    const sec = Math.floor(this.clock.now() / 1000);
    const i = sec % this.seconds;
    if (this.stamp[i] !== sec) {
      this.stamp[i] = sec;
      this.requests[i] = 0;
      this.retries[i] = 0;
    }
    return i;
  }

  private totals(): { requests: number; retries: number } {
    const now = Math.floor(this.clock.now() / 1000);
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < this.seconds; i++) {
      if ((this.stamp[i] as number) > now - this.seconds) {
        requests += this.requests[i] as number;
        retries += this.retries[i] as number;
      }
    }
    return { requests, retries };
  }

  recordRequest(): void {
    const i = this.slot();
    this.requests[i] = (this.requests[i] as number) + 1;
  }

  /**
   * Takes a retry from the budget if one is left: retries over the window may reach `ratio` of the
   * requests over the window, and beyond that `min_per_second` more are allowed in any second.
   */
  tryRetry(): boolean {
    const { requests, retries } = this.totals();
    const i = this.slot();
    const inThisSecond = this.retries[i] as number;
    if (retries + 1 > this.budget.ratio * requests && inThisSecond + 1 > this.budget.minPerSecond)
      return false;
    this.retries[i] = inThisSecond + 1;
    return true;
  }
}

export function backoff(policy: RetryPolicy, retryIndex: number, random: () => number): number {
  const base = Math.min(policy.maxWait, policy.initialWait * policy.multiplier ** retryIndex);
  switch (policy.jitter) {
    case 'full':
      return Math.floor(random() * base);
    case 'equal':
      return Math.floor(base / 2 + (random() * base) / 2);
    default:
      return base;
  }
}

/** Retry-After in ms from raw response headers (seconds or an HTTP date), or undefined. */
export function retryAfterMs(rawHeaders: readonly Buffer[], wallNow: number): number | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as Buffer;
    if (name.length !== 11 || name.toString('latin1').toLowerCase() !== 'retry-after') continue;
    const v = (rawHeaders[i + 1] as Buffer).toString('latin1').trim();
    if (/^\d+$/.test(v)) return Number(v) * 1000;
    const at = Date.parse(v);
    return Number.isNaN(at) ? undefined : Math.max(0, at - wallNow);
  }
  return undefined;
}

/** The `retry_on` entry an outcome matches (the retry's reason label), or undefined. */
function retryReason(retryOn: OutcomeMatcher, c: Classified): string | undefined {
  // A gRPC status is matched by the gRPC names in retry_on only (its HTTP status is 200).
  if (c.grpc !== undefined) {
    if (c.grpc === 0) return undefined;
    const name = grpcCodeName(c.grpc);
    return retryOn.grpcNames.has(name) ? name : undefined;
  }
  return retryOn.match(c.status, c.cause);
}

/** Reads an unbuffered body into memory when it fits the replay buffer; otherwise leaves it streaming. */
async function keepForReplay(ctx: RequestContext, max: number, clock: Clock): Promise<void> {
  const body = ctx.body;
  if (body === null || replayable(body) || !ctx.route.requestBuffering) return;
  const declared = ctx.req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) return;
  // A gRPC call of no declared length is kept only if its stream ends at once (a unary call does);
  // a client-streaming or bidi call goes on streaming, and is not retried once sent.
  ctx.body = await readUpTo(
    body,
    max,
    ctx.grpc && declared === undefined ? { ms: GRPC_BODY_WAIT_MS, clock } : undefined,
  );
}

/** A gRPC retry is not started with less than this left of the call's deadline. */
const MIN_GRPC_TRY_MS = 100;

/** How long a gRPC request stream may take to end and still count as a whole (unary) body. */
const GRPC_BODY_WAIT_MS = 20;

export function retryLayer(
  policy: RetryPolicy,
  budget: RetryBudget,
  clock: Clock,
  random: () => number,
  events: RetryEvents,
): Layer {
  if (!policy.enabled || policy.maxAttempts <= 1) return (next) => next;
  const retryOn = compileOutcomes(policy.retryOn);
  return (next) => async (ctx) => {
    budget.recordRequest();
    if (ctx.body !== null) {
      try {
        await keepForReplay(ctx, policy.maxBodyBytes, clock);
      } catch (err) {
        if ((err as { code?: string }).code === 'BW_BODY_TOO_LARGE') {
          return {
            type: 'problem',
            problem: problem('payload-too-large', (err as Error).message, {
              requestId: ctx.requestId,
              headers: ['connection', 'close'],
            }),
          };
        }
        ctx.clientGone = true;
      }
    }
    for (let retries = 0; ; retries++) {
      // Nothing is sent for a request that is already over (client gone, deadline passed, e.g.
      // while a slow client's body was being read).
      if (ctx.clientGone || ctx.expired) return ended(ctx);
      const outcome: Outcome = await next(ctx);
      if (outcome.type === 'problem' || ctx.clientGone || ctx.expired) return outcome;
      const c = classifyOutcome(outcome);
      const reason = retryReason(retryOn, c);
      if (reason === undefined) return outcome;
      if (retries + 1 >= policy.maxAttempts) return outcome;
      // An attempt that certainly was not processed (connect failure, refused stream) may go again
      // whatever the request; after any other, only a request that may be sent twice.
      if (
        (outcome.type !== 'failure' || outcome.error.mayHaveReachedUpstream) &&
        !maySendAgain(ctx, policy, c.grpc !== undefined)
      )
        return skipped(ctx, events, 'method', outcome);
      if (!replayable(ctx.body)) return skipped(ctx, events, 'body_too_large', outcome);
      let wait = backoff(policy, retries, random);
      if (outcome.type === 'response') {
        const ra = retryAfterMs(outcome.head.rawHeaders, clock.wall());
        if (ra !== undefined) {
          if (ra > policy.maxWait) return skipped(ctx, events, 'retry_after', outcome);
          wait = Math.max(wait, ra);
        }
      }
      // A retry starts only if its wait and a whole attempt timeout fit before the deadline. A gRPC
      // call's own deadline (grpc-timeout) is the caller's budget for every try, as in gRPC's own
      // retries: a retry starts if its wait fits, and gets the time left.
      const needed =
        ctx.grpcTimeout < Number.POSITIVE_INFINITY
          ? Math.min(MIN_GRPC_TRY_MS, ctx.route.timeouts.attempt)
          : ctx.route.timeouts.attempt;
      if (clock.now() + wait + needed > ctx.deadline) return skipped(ctx, events, 'deadline', outcome);
      if (!budget.tryRetry()) return skipped(ctx, events, 'budget', outcome);
      if (outcome.type === 'response') outcome.attempt.discard();
      events.retried(reason);
      if (wait > 0) await new Promise<void>((resolve) => clock.setTimeout(resolve, wait));
    }
  };
}

function ended(ctx: RequestContext): Outcome {
  const detail = ctx.clientGone
    ? 'the client left before the request was sent'
    : 'the request deadline passed before an attempt could start';
  return {
    type: 'problem',
    problem: problem('request-timeout', detail, { upstream: ctx.upstream.name, requestId: ctx.requestId }),
  };
}

function skipped(ctx: RequestContext, events: RetryEvents, reason: SkipReason, outcome: Outcome): Outcome {
  events.skipped(reason);
  ctx.retrySkipped = reason;
  return outcome;
}
