/**
 * The resilience strategies of an upstream, each in one shape (as Polly's strategies): a factory
 * `createXStrategy(model, ctx, previous)` takes the strategy's resolved model (options validated
 * and defaulted once, at load) and the builder context (StrategyContext: upstream, clock,
 * randomness, metrics, logger, Redis), carries over the previous strategy's state while its model
 * is the same (a reload must not close an open breaker or refill a drained bucket: survives.ts
 * decides), wires the strategy's metrics and logs once, and returns a Strategy whose `layer(use)`
 * is the strategy's layer for one kind of call on one route. Predicates (`retry_on`,
 * `failure_on`) are compiled once per strategy or route, never interpreted per call.
 *
 * | strategy        | state (per upstream, kept across routes)         | layer works over          |
 * | --------------- | ------------------------------------------------ | ------------------------- |
 * | rate limiter    | the local bucket(s); scope global: Redis + share | any call                  |
 * | bulkhead        | slots and the wait queue                         | any call                  |
 * | circuit breaker | the state machine                                | any call (one per attempt)|
 * | retry           | the retry budget                                 | HTTP requests             |
 * | fallback        | the chain and the degradation monitor            | HTTP requests             |
 */
import type { ResponseCache } from '../cache/response-cache.js';
import type {
  BulkheadPolicy,
  CircuitBreakerPolicy,
  DegradationModel,
  FallbackModel,
  RateLimiterPolicy,
  RetryPolicy,
  RouteModel,
  UpstreamModel,
} from '../config/resolve.js';
import type { IdempotencyStore } from '../idempotency/store.js';
import { carried, sameSettings } from '../lifecycle/survives.js';
import { type Problem, problem } from '../listener/problem.js';
import type { UpstreamStats } from '../observability/upstream-stats.js';
import { Bulkhead } from './bulkhead.js';
import { CircuitBreaker } from './circuit-breaker.js';
import { DegradationMonitor } from './degradation.js';
import { type DegradationPlan, FallbackChain, type FallbackServices, fallbackLayer } from './fallback.js';
import { GlobalRateLimiter, localShare } from './global-rate-limiter.js';
import { classifyOutcome, compileOutcomes, judgedAtTrailers, trailersVerdict } from './outcome.js';
import { RateLimiter, type RateLimiterEvents } from './rate-limiter.js';
import { RetryBudget, type RetryEvents, retryLayer } from './retry.js';
import {
  forgetBreaker,
  observeBreaker,
  observeDegradation,
  type StrategyContext,
} from './strategy-context.js';
import type { CallResponse, HttpResponse, Layer } from './types.js';

/** The kinds of call a pipeline is built for. */
export type CallKind = 'request' | 'upgrade';

/** What a layer is built for: the kind of call and the route it runs on. */
export interface LayerUse {
  readonly kind: CallKind;
  readonly route: RouteModel;
}

/** A strategy over calls whose response is `R`. */
export interface Strategy<R extends CallResponse> {
  layer(use: LayerUse): Layer<R>;
}

/** A strategy that admits (or refuses) any kind of call: its layer is generic over the response. */
export interface AdmissionStrategy {
  layer<R extends CallResponse>(use: LayerUse): Layer<R>;
}

// ---- rate limiter (scope local and global) -------------------------------------------------

export interface RateLimiterStrategy extends AdmissionStrategy {
  readonly model: RateLimiterPolicy;
  /** The local bucket; for scope global, this replica's share, used while Redis is unreachable. */
  readonly local: RateLimiter;
  /** scope global (with stores.redis): the limit shared through Redis. */
  readonly global: GlobalRateLimiter | undefined;
}

/**
 * A request takes a token of the global limit (scope global) or of the local bucket, and may wait
 * in the shaper's queue; a WebSocket handshake is answered at once: it takes a token of the local
 * bucket (a global limit's local share) and is never queued.
 */
export function createRateLimiterStrategy(
  model: RateLimiterPolicy,
  ctx: StrategyContext,
  previous: RateLimiterStrategy | undefined,
): RateLimiterStrategy {
  const { upstream, clock, metrics, logger } = ctx;
  const local =
    carried(previous?.local, previous?.model, model) ??
    new RateLimiter(model.scope === 'global' ? localShare(model) : model, clock);
  const redis = model.scope === 'global' ? ctx.redis : undefined;
  const prevGlobal = previous?.global;
  const global = redis
    ? prevGlobal && prevGlobal.store === redis && prevGlobal.local === local
      ? prevGlobal
      : new GlobalRateLimiter(model, redis, local, upstream, clock, metrics, logger)
    : undefined;
  return {
    model,
    local,
    global,
    layer: <R extends CallResponse>(use: LayerUse): Layer<R> => {
      // The series appear with the first pipeline that uses them (an upstream no route reaches exports none).
      const rejected = metrics.rateLimited.labels(upstream, model.mode);
      const delayed = metrics.shaped.labels(upstream);
      const events: RateLimiterEvents = { rejected: () => rejected.inc(), delayed: () => delayed.inc() };
      return use.kind === 'request' && global
        ? global.layer<R>(upstream, events)
        : local.layer<R>(upstream, events, use.kind === 'request');
    },
  };
}

// ---- bulkhead ----------------------------------------------------------------------------------

export interface BulkheadStrategy extends AdmissionStrategy {
  readonly model: BulkheadPolicy;
  readonly bulkhead: Bulkhead;
}

/** A slot per call, held until the call's finishers run; the same slots for every kind of call. */
export function createBulkheadStrategy(
  model: BulkheadPolicy,
  ctx: StrategyContext,
  previous: BulkheadStrategy | undefined,
): BulkheadStrategy {
  const bulkhead = carried(previous?.bulkhead, previous?.model, model) ?? new Bulkhead(model, ctx.clock);
  return {
    model,
    bulkhead,
    layer: <R extends CallResponse>(): Layer<R> => {
      const rejected = ctx.metrics.bulkheadRejected.labels(ctx.upstream);
      return bulkhead.layer<R>(ctx.upstream, () => rejected.inc());
    },
  };
}

// ---- circuit breaker ---------------------------------------------------------------------------

export interface CircuitBreakerStrategy extends AdmissionStrategy {
  readonly model: CircuitBreakerPolicy;
  readonly breaker: CircuitBreaker;
}

/**
 * The breaker, asked before every attempt (inside the retry loop) and told every attempt's
 * result. A new breaker's state gauge, transitions and log lines are wired here; an upstream
 * without a breaker exports no breaker state (`noCircuitBreaker`).
 */
export function createCircuitBreakerStrategy(
  model: CircuitBreakerPolicy,
  ctx: StrategyContext,
  previous: CircuitBreakerStrategy | undefined,
): CircuitBreakerStrategy {
  const kept = carried(previous?.breaker, previous?.model, model);
  const breaker = kept ?? new CircuitBreaker(model, ctx.clock);
  if (!kept) observeBreaker(breaker, ctx);
  // failure_on compiled once: a call looks its status or cause up.
  const failureOn = compileOutcomes(model.failureOn);
  const { upstream, clock } = ctx;
  return {
    model,
    breaker,
    layer: <R extends CallResponse>(): Layer<R> => {
      const rejected = ctx.metrics.breakerRejected.labels(upstream);
      return (next) => async (call) => {
        const permit = breaker.tryAcquire();
        if (!permit) {
          rejected.inc();
          return { type: 'problem', problem: breakerOpenProblem(breaker, upstream, call.requestId) };
        }
        const t0 = clock.now();
        const outcome = await next(call);
        // A gRPC call is judged by the grpc-status in its trailers, when the stream is over; a
        // half-open probe is judged as its response starts (a long stream would hold the probe
        // slot for its life).
        if (!permit.probe && outcome.type === 'response' && judgedAtTrailers(call.grpc, outcome)) {
          const elapsed = clock.now() - t0;
          trailersVerdict(outcome).then((c) => {
            const result =
              c === undefined
                ? 'ignored'
                : failureOn.match(c.status, undefined) !== undefined
                  ? 'failure'
                  : 'success';
            breaker.onResult(permit, result, elapsed);
          });
          return outcome;
        }
        const c = classifyOutcome(outcome);
        const result =
          c.cause === 'aborted' || call.clientGone || outcome.type === 'problem'
            ? 'ignored'
            : failureOn.match(c.status, c.cause) !== undefined
              ? 'failure'
              : 'success';
        breaker.onResult(permit, result, clock.now() - t0);
        return outcome;
      };
    },
  };
}

/** An upstream without a breaker: none, and no breaker state exported. */
export function noCircuitBreaker(ctx: StrategyContext): undefined {
  forgetBreaker(ctx);
  return undefined;
}

/**
 * The 503 `circuit-open` answer, Retry-After set to the time until a probe is let through; none
 * when an operator forced the breaker open (no probe will come; nobody knows when it reopens).
 */
export function breakerOpenProblem(breaker: CircuitBreaker, upstream: string, requestId: string): Problem {
  const detail = `the circuit breaker of upstream ${upstream} is ${breaker.state}`;
  if (breaker.state === 'forced_open') return problem('circuit-open', detail, { upstream, requestId });
  const seconds = Math.max(1, Math.ceil(breaker.retryAfterMs() / 1000));
  return problem('circuit-open', detail, { upstream, requestId, headers: ['retry-after', String(seconds)] });
}

// ---- retry ---------------------------------------------------------------------------------

export interface RetryStrategy extends Strategy<HttpResponse> {
  readonly model: RetryPolicy['budget'];
  readonly budget: RetryBudget;
}

/**
 * The upstream's retry budget (shared by its routes), and per route the retry loop of the route's
 * `retry` block (its `retry_on` compiled once per route).
 */
export function createRetryStrategy(
  model: RetryPolicy['budget'],
  ctx: StrategyContext,
  previous: RetryStrategy | undefined,
): RetryStrategy {
  const budget = carried(previous?.budget, previous?.model, model) ?? new RetryBudget(model, ctx.clock);
  const { metrics, upstream } = ctx;
  const events: RetryEvents = {
    retried: (reason) => metrics.retries.labels(upstream, reason).inc(),
    skipped: (reason) => metrics.retriesSkipped.labels(upstream, reason).inc(),
  };
  return {
    model,
    budget,
    layer: (use) => retryLayer(use.route.retry, budget, ctx.clock, ctx.random, events),
  };
}

// ---- fallback and degradation ----------------------------------------------------------------

/** What the fallback strategy needs from the whole process: fallbacks, cache, other upstreams. */
export interface FallbackContext {
  /** Where Idempotency-Key records are kept. */
  readonly idempotency: IdempotencyStore;
  /** The Idempotency-Key store shared by the replicas (idempotency.store: redis), if configured. */
  readonly sharedIdempotency?: IdempotencyStore | undefined;
  readonly fallbacks: Readonly<Record<string, FallbackModel>>;
  readonly cache: ResponseCache;
  readonly degradation: DegradationModel | undefined;
  /** The fallback-free pipeline of an upstream, for fallbacks of type upstream. */
  readonly pipelineOf: FallbackServices['pipelineOf'];
}

/** The settings a degradation monitor is built from (compared on reload). */
type DegradationSettings = {
  readonly svc: DegradationModel['services'][number];
  readonly settings: {
    readonly window: number;
    readonly minimumRequests: number;
    readonly recovery: number;
    readonly probeRatio: number;
  };
};

export interface FallbackStrategy extends Strategy<HttpResponse> {
  readonly chain: FallbackChain;
  readonly degradation: DegradationPlan | undefined;
  /** The degradation settings this upstream was built with (compared on reload). */
  readonly degradationSettings: DegradationSettings | undefined;
  /** Whether this upstream's responses are teed into the response cache. */
  readonly caches: boolean;
  /** Whether the pipeline has a fallback layer at all (a chain or a degradation plan). */
  readonly active: boolean;
}

/** The upstream's fallback chain and degraded mode: the outermost policy of its requests. */
export function createFallbackStrategy(
  model: UpstreamModel,
  fallback: FallbackContext,
  stats: UpstreamStats,
  ctx: StrategyContext,
  previous: FallbackStrategy | undefined,
): FallbackStrategy {
  const { clock, metrics, logger, upstream: name } = ctx;
  const chain = new FallbackChain(name, model.fallback, {
    fallbacks: fallback.fallbacks,
    cache: fallback.cache,
    clock,
    pipelineOf: fallback.pipelineOf,
    served: (u, f, reason) => {
      stats.fallbacks++;
      metrics.fallbacks.labels(u, f, reason).inc();
    },
    looked: (u, result) => metrics.cacheLookups.labels(u, result).inc(),
  });
  const d = fallback.degradation;
  const svc = d?.services.find((x) => x.name === name);
  const degradationSettings: DegradationSettings | undefined =
    svc && d
      ? {
          svc,
          settings: {
            window: d.window,
            minimumRequests: d.minimumRequests,
            recovery: d.recovery,
            probeRatio: d.probeRatio,
          },
        }
      : undefined;
  let degradation: DegradationPlan | undefined;
  const prevMonitor = previous?.degradation?.monitor;
  if (svc && prevMonitor && sameSettings(previous?.degradationSettings, degradationSettings)) {
    degradation = { monitor: prevMonitor, fallback: svc.fallback };
  } else if (svc && degradationSettings) {
    const monitor = new DegradationMonitor(svc.conditions, degradationSettings.settings, clock, ctx.random);
    observeDegradation(monitor, ctx);
    degradation = { monitor, fallback: svc.fallback };
  }
  const inChain = [...chain.names(model.fallback)].map((f) => fallback.fallbacks[f]?.type);
  const caches =
    inChain.includes('cache') ||
    svc?.fallback === 'cache_only' ||
    (svc !== undefined && fallback.fallbacks[svc.fallback]?.type === 'cache');
  if (svc && svc.fallback === 'static_response' && !inChain.includes('static_response')) {
    logger.warn(
      { upstream: name },
      `degradation of ${name} names static_response, but its fallbacks have none: while degraded, requests still go upstream`,
    );
  }
  return {
    chain,
    degradation,
    degradationSettings,
    caches,
    active: chain.head !== undefined || degradation !== undefined,
    layer: () => fallbackLayer(chain, degradation, clock),
  };
}
