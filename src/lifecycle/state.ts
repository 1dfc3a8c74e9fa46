/**
 * The JSON projection of the running state for `GET /state` and the status page: per upstream its
 * breaker, limiter, bulkhead, degradation, traffic and endpoints; the cache; the Redis store.
 */
import type { ResponseCache } from '../cache/response-cache.js';
import { countsFields } from '../pipeline/circuit-breaker.js';
import type { UpstreamPolicies } from '../pipeline/index.js';
import type { RedisStore } from '../stores/redis.js';
import type { Upstream } from '../upstream/upstream.js';

export interface StateView {
  readonly phase: string;
  readonly configHash: string;
  readonly policies: ReadonlyMap<string, UpstreamPolicies>;
  readonly upstreams: ReadonlyMap<string, Upstream>;
  readonly cache: ResponseCache | undefined;
  readonly redis: RedisStore | undefined;
  /** The deferred-delivery queue per upstream, when a route has `deferred:`. */
  readonly deferred: unknown;
  /** The saga log (backend, lease, sagas this process drives), when the config has `sagas:`. */
  readonly sagas?: unknown;
  /** Clock time now. */
  readonly now: number;
}

export function stateOf(v: StateView): unknown {
  const now = v.now;
  const upstreams: Record<string, unknown> = {};
  for (const [name, p] of v.policies) {
    const u = v.upstreams.get(name);
    const b = p.breaker;
    upstreams[name] = {
      breaker: b
        ? {
            state: b.state,
            // A forced breaker is the operator's: it never probes, so there is no time to wait.
            forced: b.state === 'forced_open' || b.state === 'forced_closed',
            ...countsFields(b.stats()),
            retry_after_ms: b.state === 'open' ? Math.round(b.retryAfterMs()) : null,
            recent_transitions: b.recent.map((t) => ({
              from: t.from,
              to: t.to,
              reason: t.reason,
              ago_ms: Math.round(now - t.at),
            })),
          }
        : null,
      // A global limit's rate and burst are the fleet's; `tokens` is then the local share's bucket.
      rate_limiter: p.limiter
        ? {
            mode: p.limiter.policy.mode,
            rate_per_second: (p.globalLimiter ?? p.limiter).policy.ratePerSecond,
            burst: (p.globalLimiter ?? p.limiter).policy.burst,
            tokens: p.limiter.tokens(),
            queued: p.limiter.queueLength,
            scope: p.limiter.policy.scope,
            global: p.globalLimiter?.state() ?? null,
          }
        : null,
      bulkhead: p.bulkhead
        ? {
            max_concurrent: p.bulkhead.policy.maxConcurrent,
            in_flight: p.bulkhead.inFlight,
            queued: p.bulkhead.queueLength,
          }
        : null,
      degradation: p.degradation
        ? { degraded: p.degradation.monitor.degraded, last: p.degradation.monitor.last ?? null }
        : null,
      fallback: p.chain.head ?? null,
      traffic: p.stats.snapshot(now),
      endpoints:
        u?.endpoints.map((e) => ({
          url: e.model.url,
          weight: e.weight,
          priority: e.model.priority,
          group: e.model.group ?? null,
          health: e.health,
          ejected_for_ms: Math.max(0, Math.round(e.ejectedUntil - now)),
          in_flight: e.inflight,
          streaming: e.streaming,
        })) ?? [],
    };
  }
  const cache = v.cache;
  return {
    phase: v.phase,
    config_hash: v.configHash,
    upstreams,
    cache: cache ? { bytes: cache.bytes, entries: cache.entries, max_bytes: cache.maxBytes } : null,
    deferred: v.deferred ?? null,
    sagas: v.sagas ?? null,
    stores: { redis: v.redis?.health() ?? null },
  };
}
