/**
 * Fallbacks: what breakwater answers when the upstream cannot, instead of an error.
 *
 * The fallback layer is the outermost policy, so it sees every way a request can fail: the limiter
 * (`rate_limited`), the bulkhead (`bulkhead_full`), the deadline and attempt timeouts (`timeout`),
 * the breaker (`breaker_open`), retries exhausted on 5xx or connection failures (`error`), and the
 * degradation monitor (`degraded`, answered without calling the upstream). The upstream's fallback
 * is tried when its `on` list names the trigger; when it cannot serve (a cache miss, a body that
 * cannot be replayed to another upstream) its `then` fallback is tried, and so on; when none can,
 * the original outcome stands.
 */

import { ResponseCache } from '../cache/response-cache.js';
import type { Clock } from '../clock.js';
import { DEFAULTS, type FallbackModel, type FallbackTrigger } from '../config/resolve.js';
import { problem } from '../listener/problem.js';
import { replayable } from '../listener/request-body.js';
import type { DegradationMonitor } from './degradation.js';
import { classifyOutcome, judgedAtTrailers, judgedStatus, trailersVerdict } from './outcome.js';
import { grpcStatusNamed, maySendAgain } from './retry.js';
import type { Layer, Outcome, RequestContext, UpstreamPipeline } from './types.js';

export type Trigger = FallbackTrigger;

/** Which trigger an outcome is, if any. */
export function triggerOf(o: Outcome): Trigger | undefined {
  switch (o.type) {
    case 'local':
      return undefined;
    case 'problem':
      switch (o.problem.kind) {
        case 'circuit-open':
          return 'breaker_open';
        case 'request-timeout':
        case 'upstream-timeout':
        case 'upstream-connect-timeout':
          return 'timeout';
        case 'rate-limited':
          return 'rate_limited';
        case 'bulkhead-full':
          return 'bulkhead_full';
        case 'no-healthy-endpoint':
          return 'error';
        default:
          return undefined;
      }
    case 'failure': {
      const k = o.error.kind;
      if (k === 'client-aborted' || k === 'request-body') return undefined;
      return k === 'timeout' || k === 'connect-timeout' ? 'timeout' : 'error';
    }
    case 'response':
      return judgedStatus(o.head) >= 500 ? 'error' : undefined;
  }
}

/** Whether an outcome counts against the upstream for degradation (failures it caused). */
export function degradationFailure(o: Outcome): boolean {
  const t = triggerOf(o);
  return t === 'error' || t === 'timeout' || t === 'breaker_open';
}

export interface FallbackServices {
  readonly fallbacks: Readonly<Record<string, FallbackModel>>;
  readonly cache: ResponseCache;
  readonly clock: Clock;
  /** The pipeline, upstream and route of another upstream, for fallbacks of type upstream. */
  readonly pipelineOf: (upstream: string) => UpstreamPipeline;
  readonly served: (upstream: string, fallback: string, reason: Trigger) => void;
  readonly looked: (upstream: string, result: 'hit' | 'miss' | 'stale') => void;
}

const DROP_FROM_LOCAL = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive']);

export class FallbackChain {
  /** Request headers that are part of cache keys for this upstream (union of its cache fallbacks' vary). */
  readonly vary: readonly string[];

  constructor(
    readonly upstream: string,
    /** The first fallback of the chain (the upstream's own), if any. */
    readonly head: string | undefined,
    readonly s: FallbackServices,
  ) {
    const vary = new Set<string>();
    for (const name of this.names(head)) {
      const f = s.fallbacks[name];
      if (f?.type === 'cache') for (const h of f.vary) vary.add(h);
    }
    this.vary = [...vary];
  }

  /** The chain's names in order: head, its then, its then's then... */
  *names(start: string | undefined): Generator<string> {
    const seen = new Set<string>();
    for (let n = start; n !== undefined && !seen.has(n); n = this.s.fallbacks[n]?.next) {
      seen.add(n);
      yield n;
    }
  }

  /** Whether the chain reacts to `trigger` (the head's `on` list decides). */
  handles(trigger: Trigger): boolean {
    if (this.head === undefined) return false;
    return this.s.fallbacks[this.head]?.on.includes(trigger) ?? false;
  }

  cacheKey(ctx: RequestContext): string {
    return ResponseCache.key(this.upstream, ctx.path, ctx.req.headers, this.vary);
  }

  /**
   * Serves from the chain starting at `start`; undefined when nothing in it can. `grpcNamed`: the
   * upstream's answer was a gRPC status that `retry_on` names (the call may go elsewhere).
   */
  async serve(
    ctx: RequestContext,
    start: string | undefined,
    trigger: Trigger,
    grpcNamed = false,
  ): Promise<Outcome | undefined> {
    for (const name of this.names(start)) {
      const out = await this.serveOne(ctx, name, grpcNamed);
      if (out) {
        this.s.served(this.upstream, name, trigger);
        return out;
      }
    }
    return undefined;
  }

  /** Serves from the cache alone (`cache_only` without a cache fallback of its own). */
  fromCache(ctx: RequestContext, name: string, maxStale: number): Outcome | undefined {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') return undefined;
    const hit = this.s.cache.get(this.cacheKey(ctx));
    if (!hit) {
      this.s.looked(this.upstream, 'miss');
      return undefined;
    }
    const ageMs = this.s.clock.wall() - hit.storedAt;
    if (ageMs > maxStale) {
      this.s.looked(this.upstream, 'stale');
      return undefined;
    }
    this.s.looked(this.upstream, 'hit');
    return {
      type: 'local',
      status: hit.status,
      headers: hit.headers,
      body: hit.body,
      fallback: name,
      age: Math.floor(ageMs / 1000),
    };
  }

  private async serveOne(
    ctx: RequestContext,
    name: string,
    grpcNamed: boolean,
  ): Promise<Outcome | undefined> {
    const f = this.s.fallbacks[name];
    if (!f) return undefined;
    if (f.type === 'static_response') {
      const headers: string[] = [];
      for (const [k, v] of Object.entries(f.headers))
        if (!DROP_FROM_LOCAL.has(k.toLowerCase())) headers.push(k, v);
      return {
        type: 'local',
        status: f.status,
        headers,
        body: f.body,
        fallback: name,
        age: undefined,
      };
    }
    if (f.type === 'cache') return this.fromCache(ctx, name, f.maxStale);
    // type upstream: only a request whose body can be sent again (in memory or a temporary file),
    // and, once the upstream may have processed it, only one that may be sent twice (the retry
    // rule: a payment that got a 503 is not sent to a replica that shares its database).
    if (!replayable(ctx.body)) return undefined;
    if (ctx.maybeProcessed && !maySendAgain(ctx, ctx.route.retry, grpcNamed)) return undefined;
    ctx.finishers ??= [];
    const target = this.s.pipelineOf(f.upstream);
    const other: RequestContext = {
      ...ctx,
      upstream: target.upstream,
      // The listener's trusted proxies still decide what X-Forwarded-For means.
      route:
        ctx.route.trust === target.route.trust ? target.route : { ...target.route, trust: ctx.route.trust },
      deadline: Number.POSITIVE_INFINITY,
      expired: false,
      current: undefined,
      tried: undefined,
    };
    const out = await target.handler(other);
    ctx.current = other.current;
    ctx.attempts = other.attempts;
    if (out.type === 'response' && out.head.status < 500) return { ...out, fallback: name };
    if (out.type === 'response') out.attempt.discard();
    return undefined;
  }
}

export interface DegradationPlan {
  readonly monitor: DegradationMonitor;
  /** A fallback name, or a type word: static_response (the chain's static answer), cache_only. */
  readonly fallback: string;
}

/** The outermost layer: fallbacks on failure, and the degraded mode. */
export function fallbackLayer(
  chain: FallbackChain,
  degradation: DegradationPlan | undefined,
  clock: Clock,
): Layer {
  const degradedStart = degradation ? resolveDegradedStart(chain, degradation.fallback) : undefined;
  return (next) => async (ctx) => {
    const monitor = degradation?.monitor;
    if (monitor?.degraded) {
      monitor.maybeJudge();
      if (monitor.degraded && !monitor.shouldProbe()) {
        const served = await serveDegraded(chain, ctx, degradation as DegradationPlan, degradedStart);
        if (served) return served;
      }
    }
    const t0 = clock.now();
    const outcome = await next(ctx);
    if (monitor) {
      const latency = clock.now() - t0;
      if (outcome.type === 'response' && judgedAtTrailers(ctx.grpc, outcome)) {
        // Judged by the grpc-status in the trailers, when the stream is over.
        trailersVerdict(outcome).then((c) => {
          if (c !== undefined) monitor.record(latency, (c.status as number) >= 500);
        });
      } else {
        const c = classifyOutcome(outcome);
        if (c.cause !== 'aborted') monitor.record(latency, degradationFailure(outcome));
      }
    }
    const trigger = triggerOf(outcome);
    if (trigger === undefined || !chain.handles(trigger) || ctx.clientGone) return outcome;
    const served = await chain.serve(
      ctx,
      chain.head,
      trigger,
      ctx.grpc && grpcStatusNamed(ctx.route.retry, outcome),
    );
    if (!served) return outcome;
    if (outcome.type === 'response') outcome.attempt.discard();
    return served;
  };
}

/** Where the degraded mode starts in the chain for a type word; a fallback name starts there. */
function resolveDegradedStart(chain: FallbackChain, word: string): string | undefined {
  if (word !== 'static_response' && word !== 'cache_only') return word;
  const type = word === 'static_response' ? 'static_response' : 'cache';
  for (const name of chain.names(chain.head)) if (chain.s.fallbacks[name]?.type === type) return name;
  return undefined;
}

async function serveDegraded(
  chain: FallbackChain,
  ctx: RequestContext,
  plan: DegradationPlan,
  start: string | undefined,
): Promise<Outcome | undefined> {
  if (start !== undefined) {
    const served = await chain.serve(ctx, start, 'degraded');
    if (served) return served;
  } else if (plan.fallback === 'cache_only') {
    const hit = chain.fromCache(ctx, 'cache_only', DEFAULTS.degradation.cacheOnlyMaxStale);
    if (hit) {
      chain.s.served(chain.upstream, 'cache_only', 'degraded');
      return hit;
    }
  } else {
    return undefined; // static_response with none defined: the request goes upstream
  }
  if (plan.fallback === 'cache_only') {
    return {
      type: 'problem',
      problem: problem(
        'degraded',
        `upstream ${chain.upstream} is degraded and serves only from cache; this request is not cached`,
        {
          upstream: chain.upstream,
          requestId: ctx.requestId,
        },
      ),
    };
  }
  return undefined;
}
