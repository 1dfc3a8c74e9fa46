/**
 * Rate limiter and traffic shaper, per upstream (optionally per client address or header value).
 *
 * mode reject: a request takes a token or is answered 429 at once, with Retry-After and the IETF
 *   draft's RateLimit-Policy / RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10).
 * mode shape: a request without a token reserves one owed in the future and waits for it (the
 *   traffic shaper: excess waits instead of failing), up to `max_delay` and `max_queue`;
 *   only past those is it answered 429.
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { RateLimiterPolicy } from '../config/resolve.js';
import { clientAddress } from '../listener/client-address.js';
import { type Problem, problem } from '../listener/problem.js';
import { TokenBucket } from './token-bucket.js';
import type { Call, CallResponse, Layer, Outcome, RequestContext } from './types.js';

export interface RateLimiterEvents {
  rejected(): void;
  delayed(): void;
}

export class RateLimiter {
  private readonly single: TokenBucket | undefined;
  private readonly keyed: LRUCache<string, TokenBucket> | undefined;
  private queued = 0;
  private readonly policyHeader: string;

  constructor(
    readonly policy: RateLimiterPolicy,
    private readonly clock: Clock,
  ) {
    if (policy.key.kind === 'none') this.single = new TokenBucket(policy.ratePerSecond, policy.burst, clock);
    else this.keyed = new LRUCache({ max: policy.maxKeys });
    this.policyHeader = `"default";q=${Math.max(1, Math.round(policy.ratePerSecond))};w=1`;
  }

  get queueLength(): number {
    return this.queued;
  }

  /** Tokens left in the shared bucket (undefined when keyed). */
  tokens(): number | undefined {
    return this.single?.tokens();
  }

  /** The bucket of this call: the shared one, or its key's (the route's trusted proxies decide the client). */
  bucketFor(ctx: RequestContext): TokenBucket {
    if (this.single) return this.single;
    const k = this.policy.key;
    const key =
      k.kind === 'client_ip'
        ? clientAddress(ctx, ctx.route.trust)
        : k.kind === 'header'
          ? String(ctx.req.headers[k.header] ?? '')
          : '';
    const keyed = this.keyed as LRUCache<string, TokenBucket>;
    let b = keyed.get(key);
    if (!b) {
      b = new TokenBucket(this.policy.ratePerSecond, this.policy.burst, this.clock);
      keyed.set(key, b);
    }
    return b;
  }

  /**
   * Works over any call (an HTTP request, a WebSocket handshake). `queue: false`: a call without a
   * token is refused at once even in shape mode (a WebSocket handshake is never held back).
   */
  layer<R extends CallResponse>(upstream: string, events: RateLimiterEvents, queue = true): Layer<R> {
    const mayQueue = queue && this.policy.mode === 'shape';
    return (next) => (ctx) => {
      const bucket = this.bucketFor(ctx);
      // The common case (a token) adds no promise of its own.
      return bucket.tryTake() ? next(ctx) : this.limited(ctx, bucket, next, upstream, events, mayQueue);
    };
  }

  private async limited<R extends CallResponse>(
    ctx: RequestContext,
    bucket: TokenBucket,
    next: Call<R>,
    upstream: string,
    events: RateLimiterEvents,
    mayQueue: boolean,
  ): Promise<Outcome<R>> {
    const p = this.policy;
    if (mayQueue && this.queued < p.maxQueue) {
      const wait = bucket.reserve(p.maxDelay);
      if (wait !== undefined) {
        events.delayed();
        this.queued++;
        await new Promise<void>((resolve) => this.clock.setTimeout(resolve, wait));
        this.queued--;
        if (ctx.clientGone)
          return {
            type: 'problem',
            problem: problem('rate-limited', 'client left while queued', { upstream }),
          };
        return next(ctx);
      }
    }
    events.rejected();
    return { type: 'problem', problem: this.limitedProblem(bucket, upstream, ctx.requestId) };
  }

  /** The 429 `rate-limited` answer, with Retry-After and the RateLimit headers. */
  limitedProblem(bucket: TokenBucket, upstream: string, requestId: string): Problem {
    const p = this.policy;
    const detail =
      p.mode === 'shape'
        ? `upstream ${upstream} is limited to ${p.ratePerSecond} requests/s and its queue is full`
        : `upstream ${upstream} is limited to ${p.ratePerSecond} requests/s (burst ${p.burst})`;
    return rateLimitedProblem(detail, upstream, requestId, {
      policyHeader: this.policyHeader,
      remaining: Math.floor(Math.max(0, bucket.tokens())),
      retryMs: bucket.msUntilToken(),
    });
  }
}

/**
 * The 429 `rate-limited` answer of a local or a global limit: Retry-After (whole seconds, at least 1)
 * and the RateLimit-Policy / RateLimit headers.
 */
export function rateLimitedProblem(
  detail: string,
  upstream: string,
  requestId: string,
  state: { readonly policyHeader: string; readonly remaining: number; readonly retryMs: number },
): Problem {
  const seconds = Math.max(1, Math.ceil(state.retryMs / 1000));
  return problem('rate-limited', detail, {
    upstream,
    requestId,
    headers: [
      'retry-after',
      String(seconds),
      'ratelimit-policy',
      state.policyHeader,
      'ratelimit',
      `"default";r=${state.remaining};t=${seconds}`,
    ],
  });
}
