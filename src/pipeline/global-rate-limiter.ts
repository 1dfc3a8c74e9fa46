/**
 * A rate limit shared by every replica (`rate_limiter.scope: global`), kept in Redis.
 *
 * The algorithm is GCRA (the generic cell rate algorithm, a token bucket stored as one number: the
 * theoretical arrival time of the next request), run atomically by one Lua script per request,
 * which reads the time from Redis itself (`TIME`): replicas' clocks never enter the decision, so a
 * skewed pod can neither spend nor refill the shared bucket. One key per limit (per client key when
 * keyed), hash-tagged, expiring when the bucket is full again.
 *
 * - Allowed: the request goes on. Limited: 429 with Retry-After and RateLimit headers computed by
 *   the script, and the denial is cached here until its reset, so a client hammering a spent limit
 *   costs no Redis call until a token can exist again.
 * - Redis unreachable (the store's breaker open, a timeout, an error): `on_store_error` decides:
 *   local (this replica's share of the limit: rate and burst divided by `replicas`), allow, or deny
 *   (503 store-unavailable). Logged once per outage, counted in every decision.
 *
 * Durations the script returns are relative (microseconds from Redis's now), and the denial cache
 * measures them on this process's monotonic clock, so no wall clock is compared across machines.
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { RateLimiterPolicy } from '../config/resolve.js';
import { clientAddress } from '../listener/client-address.js';
import { problem } from '../listener/problem.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RedisStore, StoreHealth } from '../stores/redis.js';
import { script } from '../stores/redis.js';
import { type RateLimiter, type RateLimiterEvents, rateLimitedProblem } from './rate-limiter.js';
import type { Call, CallResponse, Layer, Outcome, ProblemOutcome, RequestContext } from './types.js';

/**
 * KEYS[1]: the limit's key. ARGV[1]: emission interval (µs per request, 1e6 / rate).
 * ARGV[2]: burst tolerance (µs, burst * interval).
 * Returns { allowed 0|1, remaining, retry_after_us, reset_us }.
 *
 * Times are µs since 2023-11-14 (Unix 1.7e9 s), not since 1970: Lua numbers are doubles, and near
 * 1e14 they still resolve 1/64 µs, where near 1.7e15 they would resolve only 1/4 µs (a few percent
 * of the interval at 300,000 requests/s). The stored value keeps every digit ('%.17g').
 */
export const GCRA_SCRIPT = script(`
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return { 0, 0, math.ceil(new_tat - now - tolerance), math.ceil(tat - now) }
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return { 1, math.floor((tolerance - (new_tat - now)) / interval), 0, math.ceil(new_tat - now) }
`);

type Decision = 'allowed' | 'limited' | 'unavailable';
type Source = 'store' | 'cache' | 'local_fallback';
type Counter = { inc(): void };

/** The local share of a global policy: rate and burst divided by `replicas`. */
export function localShare(policy: RateLimiterPolicy): RateLimiterPolicy {
  const n = Math.max(1, policy.replicas);
  return {
    ...policy,
    ratePerSecond: policy.ratePerSecond / n,
    burst: Math.max(1, Math.floor(policy.burst / n)),
  };
}

export class GlobalRateLimiter {
  private readonly interval: string;
  private readonly tolerance: string;
  private readonly policyHeader: string;
  private readonly prefix: string;
  /** Single limit: denied until this clock time; keyed: the same per key. */
  private deniedUntil = 0;
  private readonly denied: LRUCache<string, number> | undefined;
  private readonly singleKeys: readonly string[];
  private readonly args: readonly string[];
  private readonly singleCall: (c: RedisStore['client']) => Promise<unknown>;
  private readonly allowedStore: Counter;
  private readonly limitedStore: Counter;
  private readonly limitedCache: Counter;
  private readonly allowedFallback: Counter;
  private readonly limitedFallback: Counter;
  private readonly unavailableFallback: Counter;
  private fellBack = false;
  /** Tokens left after the last answer from Redis (single limit), for /state. */
  private lastRemaining: number | undefined;

  constructor(
    readonly policy: RateLimiterPolicy,
    readonly store: RedisStore,
    /** The bucket of this replica's share, used while Redis is unreachable (on_store_error: local). */
    readonly local: RateLimiter,
    upstream: string,
    private readonly clock: Clock,
    metrics: Metrics,
    private readonly logger: Logger,
  ) {
    const intervalUs = 1e6 / policy.ratePerSecond;
    this.interval = String(intervalUs);
    this.tolerance = String(intervalUs * policy.burst);
    this.policyHeader = `"default";q=${Math.max(1, Math.round(policy.ratePerSecond))};w=1`;
    this.prefix = upstream;
    this.singleKeys = [store.key('rl', upstream)];
    this.args = [this.interval, this.tolerance];
    const keys = this.singleKeys;
    const args = this.args;
    this.singleCall = (c) => store.evalScript(c, GCRA_SCRIPT, keys, args);
    if (policy.key.kind !== 'none') this.denied = new LRUCache({ max: policy.maxKeys });
    const c = (result: Decision, source: Source) =>
      metrics.rateLimitDecisions.labels(upstream, result, source);
    this.allowedStore = c('allowed', 'store');
    this.limitedStore = c('limited', 'store');
    this.limitedCache = c('limited', 'cache');
    this.allowedFallback = c('allowed', 'local_fallback');
    this.limitedFallback = c('limited', 'local_fallback');
    this.unavailableFallback = c('unavailable', 'local_fallback');
  }

  /** What /state shows about the global limit. */
  state(): {
    remaining: number | null;
    denied_for_ms: number;
    store: StoreHealth;
    fallback: string;
    local_share_per_second: number;
  } {
    return {
      remaining: this.lastRemaining ?? null,
      denied_for_ms: Math.max(0, Math.round(this.deniedUntil - this.clock.now())),
      store: this.store.health(),
      fallback: this.policy.onStoreError,
      local_share_per_second: this.local.policy.ratePerSecond,
    };
  }

  private keyOf(ctx: RequestContext): string {
    const k = this.policy.key;
    if (k.kind === 'client_ip') return clientAddress(ctx, ctx.route.trust);
    if (k.kind === 'header') return String(ctx.req.headers[k.header] ?? '');
    return '';
  }

  /** Works over any call (an HTTP request, a WebSocket handshake). */
  layer<R extends CallResponse>(upstream: string, events: RateLimiterEvents): Layer<R> {
    return (next) => (ctx) => {
      const keyed = this.denied !== undefined;
      const key = keyed ? this.keyOf(ctx) : '';
      const until = keyed ? (this.denied?.get(key) ?? 0) : this.deniedUntil;
      if (until > this.clock.now()) {
        this.limitedCache.inc();
        events.rejected();
        return Promise.resolve(this.limitedProblem(upstream, ctx.requestId, until - this.clock.now()));
      }
      return this.ask(ctx, key, next, upstream, events);
    };
  }

  private async ask<R extends CallResponse>(
    ctx: RequestContext,
    key: string,
    next: Call<R>,
    upstream: string,
    events: RateLimiterEvents,
  ): Promise<Outcome<R>> {
    let reply: unknown;
    try {
      reply =
        this.denied === undefined
          ? await this.store.run('rate_limit', this.singleCall)
          : await this.store.run('rate_limit', (c) =>
              this.store.evalScript(
                c,
                GCRA_SCRIPT,
                [this.store.key('rl', `${this.prefix}:${key}`)],
                this.args,
              ),
            );
    } catch {
      return this.fallback(ctx, next, upstream, events);
    }
    if (this.fellBack && this.store.breaker.state === 'closed') {
      this.fellBack = false;
      this.logger.info(
        { event: 'rate_limit_store_back', upstream },
        `global rate limit of ${upstream}: Redis answers again, the shared limit applies`,
      );
    }
    const r = reply as [number, number, number, number];
    if (this.denied === undefined) this.lastRemaining = Number(r[1]);
    if (Number(r[0]) === 1) {
      this.allowedStore.inc();
      return next(ctx);
    }
    const retryMs = Math.max(1, Number(r[2]) / 1000);
    const until = this.clock.now() + retryMs;
    if (this.denied) this.denied.set(key, until);
    else this.deniedUntil = until;
    this.limitedStore.inc();
    events.rejected();
    return this.limitedProblem(upstream, ctx.requestId, retryMs);
  }

  private fallback<R extends CallResponse>(
    ctx: RequestContext,
    next: Call<R>,
    upstream: string,
    events: RateLimiterEvents,
  ): Outcome<R> | Promise<Outcome<R>> {
    const mode = this.policy.onStoreError;
    // Logged once per outage (the store's breaker open), not for a single slow answer.
    if (!this.fellBack && this.store.breaker.state !== 'closed') {
      this.fellBack = true;
      const how =
        mode === 'local'
          ? `this replica's share applies (${round(this.local.policy.ratePerSecond)}/s of ${this.policy.ratePerSecond}/s, replicas: ${this.policy.replicas})`
          : mode === 'allow'
            ? 'requests are let through unlimited (on_store_error: allow)'
            : 'requests are refused with 503 (on_store_error: deny)';
      this.logger.warn(
        { event: 'rate_limit_store_unavailable', upstream, on_store_error: mode },
        `global rate limit of ${upstream}: Redis is unreachable, ${how}`,
      );
    }
    if (mode === 'allow') {
      this.allowedFallback.inc();
      return next(ctx);
    }
    if (mode === 'deny') {
      this.unavailableFallback.inc();
      const seconds = Math.max(1, Math.ceil(this.store.breaker.retryInMs() / 1000));
      return {
        type: 'problem',
        problem: problem(
          'store-unavailable',
          `the global rate limit of upstream ${upstream} cannot be checked: Redis is unreachable (on_store_error: deny)`,
          { upstream, requestId: ctx.requestId, headers: ['retry-after', String(seconds)] },
        ),
      };
    }
    const bucket = this.local.bucketFor(ctx);
    if (bucket.tryTake()) {
      this.allowedFallback.inc();
      return next(ctx);
    }
    this.limitedFallback.inc();
    events.rejected();
    return { type: 'problem', problem: this.local.limitedProblem(bucket, upstream, ctx.requestId) };
  }

  /** 429 from the global state: no token for `retryMs`. */
  private limitedProblem(upstream: string, requestId: string, retryMs: number): ProblemOutcome {
    const detail = `upstream ${upstream} is limited to ${this.policy.ratePerSecond} requests/s across all replicas (burst ${this.policy.burst})`;
    const p = rateLimitedProblem(detail, upstream, requestId, {
      policyHeader: this.policyHeader,
      remaining: 0,
      retryMs,
    });
    return { type: 'problem', problem: p };
  }
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
