/**
 * The policy stack of a route, outermost first. This file is the architecture: reading
 * `buildPipeline` tells what happens to a request and in which order.
 *
 *   idempotency             outermost, per route: replay, 409/422/400, or forward and store the
 *                           response (a fallback's answer is never stored as the key's response)
 *   fallback / degradation  answers from a fallback when anything below fails (or at once while
 *                           the upstream is degraded)
 *   rate limiter / shaper   per upstream: 429, or wait in the shaper queue
 *   bulkhead                per upstream: a concurrency slot held until the response is over
 *   deadline                request_timeout over everything below (attempts, waits, retries)
 *   retry                   retry_on, safe methods, replay buffer, Retry-After, budget
 *   circuit breaker         per upstream, checked and told the result on every attempt
 *   upstream call           one attempt to one endpoint, its timeout capped by the deadline
 *
 * Per-upstream state (breaker, limiter, bulkhead, retry budget) lives in UpstreamPolicies, shared
 * by every route to that upstream; the route's own settings (timeouts, retry) shape its stack.
 *
 * A WebSocket handshake passes the same admission layers (limiter, bulkhead, breaker; see
 * `admissionLayers`) around its own innermost call, the handshake (`buildUpgradePipeline`); a call
 * breakwater makes itself runs an upstream's request pipeline with a context that has no client.
 */

import { type HandshakeResponse, handshakeCall } from '../attempt/handshake.js';
import type { ResponseCache } from '../cache/response-cache.js';
import type { Clock } from '../clock.js';
import type { DegradationModel, FallbackModel, RouteModel, UpstreamModel } from '../config/resolve.js';
import type { IdempotencyStore } from '../idempotency/store.js';
import { carried, sameSettings } from '../lifecycle/survives.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { UpstreamStats } from '../observability/upstream-stats.js';
import type { RedisStore } from '../stores/redis.js';
import { Bulkhead } from './bulkhead.js';
import { CircuitBreaker } from './circuit-breaker.js';
import { circuitBreakerLayer } from './circuit-breaker-layer.js';
import { deadlineLayer } from './deadline.js';
import { DegradationMonitor } from './degradation.js';
import { type DegradationPlan, FallbackChain, type FallbackServices, fallbackLayer } from './fallback.js';
import { GlobalRateLimiter, localShare } from './global-rate-limiter.js';
import { idempotencyLayer } from './idempotency.js';
import { RateLimiter } from './rate-limiter.js';
import { RetryBudget, retryLayer } from './retry.js';
import { forgetBreaker, observeBreaker, observeDegradation, strategyContext } from './strategy-context.js';
import {
  type Call,
  type CallResponse,
  compose,
  type Handler,
  type HttpResponse,
  type Layer,
} from './types.js';
import { upstreamCall } from './upstream-call.js';

export interface PipelineServices {
  readonly clock: Clock;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly random: () => number;
  /** stores.redis, when configured: global rate limits and the shared Idempotency-Key store use it. */
  readonly redis?: RedisStore | undefined;
}

/** What the fallback layer needs from the whole process: fallbacks, cache, other upstreams. */
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

/** The state one upstream's policies share across routes and, while its settings stay the same, across reloads. */
export class UpstreamPolicies {
  readonly breaker: CircuitBreaker | undefined;
  /** The local bucket; for scope global, this replica's share, used while Redis is unreachable. */
  readonly limiter: RateLimiter | undefined;
  /** scope global: the limit shared through Redis. */
  readonly globalLimiter: GlobalRateLimiter | undefined;
  readonly bulkhead: Bulkhead | undefined;
  readonly budget: RetryBudget;
  readonly chain: FallbackChain;
  readonly degradation: DegradationPlan | undefined;
  /** Whether this upstream's responses are teed into the response cache. */
  readonly caches: boolean;
  readonly idempotencyStore: IdempotencyStore | undefined;
  readonly sharedIdempotencyStore: IdempotencyStore | undefined;
  /** Live traffic figures (carried across reloads). */
  readonly stats: UpstreamStats;
  /** The degradation settings this upstream was built with (compared on reload). */
  readonly degradationSettings: unknown;

  /**
   * `previous` is the same upstream's policies under the config being replaced: each piece of state
   * (breaker, limiter, bulkhead, retry budget, degradation monitor) whose settings did not change
   * is carried over, so a reload does not close an open breaker or refill a drained bucket.
   */
  constructor(
    readonly model: UpstreamModel,
    services: PipelineServices,
    fallback: FallbackContext,
    previous?: UpstreamPolicies,
  ) {
    const { clock, metrics, logger } = services;
    const name = model.name;
    const sctx = strategyContext(name, services);
    this.stats = previous?.stats ?? new UpstreamStats();
    const stats = this.stats;
    this.idempotencyStore = fallback.idempotency;
    this.sharedIdempotencyStore = fallback.sharedIdempotency;
    this.chain = new FallbackChain(name, model.fallback, {
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
    const degradationSettings =
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
    const prevMonitor = previous?.degradation?.monitor;
    if (svc && prevMonitor && sameSettings(previous?.degradationSettings, degradationSettings)) {
      this.degradation = { monitor: prevMonitor, fallback: svc.fallback };
    } else if (svc && degradationSettings) {
      const monitor = new DegradationMonitor(
        svc.conditions,
        degradationSettings.settings,
        clock,
        services.random,
      );
      observeDegradation(monitor, sctx);
      this.degradation = { monitor, fallback: svc.fallback };
    }
    this.degradationSettings = degradationSettings;
    let caches = false;
    for (const f of this.chain.names(model.fallback))
      if (fallback.fallbacks[f]?.type === 'cache') caches = true;
    if (svc?.fallback === 'cache_only') caches = true;
    if (svc && fallback.fallbacks[svc.fallback]?.type === 'cache') caches = true;
    this.caches = caches;
    if (
      svc &&
      svc.fallback === 'static_response' &&
      ![...this.chain.names(model.fallback)].some((f) => fallback.fallbacks[f]?.type === 'static_response')
    ) {
      logger.warn(
        { upstream: name },
        `degradation of ${name} names static_response, but its fallbacks have none: while degraded, requests still go upstream`,
      );
    }
    const keep = carried;
    const keptBreaker = keep(previous?.breaker, previous?.model.circuitBreaker, model.circuitBreaker);
    this.breaker =
      keptBreaker ?? (model.circuitBreaker ? new CircuitBreaker(model.circuitBreaker, clock) : undefined);
    this.limiter =
      keep(previous?.limiter, previous?.model.rateLimiter, model.rateLimiter) ??
      (model.rateLimiter
        ? new RateLimiter(
            model.rateLimiter.scope === 'global' ? localShare(model.rateLimiter) : model.rateLimiter,
            clock,
          )
        : undefined);
    const redis = model.rateLimiter?.scope === 'global' ? services.redis : undefined;
    const prevGlobal = previous?.globalLimiter;
    this.globalLimiter =
      redis && model.rateLimiter && this.limiter
        ? prevGlobal && prevGlobal.store === redis && prevGlobal.local === this.limiter
          ? prevGlobal
          : new GlobalRateLimiter(model.rateLimiter, redis, this.limiter, name, clock, metrics, logger)
        : undefined;
    this.bulkhead =
      keep(previous?.bulkhead, previous?.model.bulkhead, model.bulkhead) ??
      (model.bulkhead ? new Bulkhead(model.bulkhead, clock) : undefined);
    this.budget =
      keep(previous?.budget, previous?.model.retry.budget, model.retry.budget) ??
      new RetryBudget(model.retry.budget, clock);

    if (!this.breaker) forgetBreaker(sctx);
    else if (!keptBreaker) observeBreaker(this.breaker, sctx);
    const { limiter, bulkhead } = this;
    metrics.collectors.set(`upstream:${name}`, () => {
      if (limiter) metrics.limiterQueue.labels(name).set(limiter.queueLength);
      if (bulkhead) {
        metrics.bulkheadInFlight.labels(name).set(bulkhead.inFlight);
        metrics.bulkheadQueue.labels(name).set(bulkhead.queueLength);
      }
    });
  }
}

/** The kinds of call a pipeline is built for. */
export type CallKind = 'request' | 'upgrade';

/**
 * The layers that admit a call to an upstream, whatever the call: the rate limiter (or the global
 * limit) and the bulkhead, outermost first, and the circuit breaker, asked for each attempt
 * (innermost). HTTP requests and WebSocket handshakes are admitted by these same layers, with the
 * same metrics; each kind of call places them in its stack (`buildPipeline`, `buildUpgradePipeline`).
 * A handshake is answered at once: it takes a token of the local bucket (a global limit's local
 * share) and is never queued by a shaper.
 */
export function admissionLayers<R extends CallResponse>(
  policies: UpstreamPolicies,
  services: PipelineServices,
  kind: CallKind,
): { readonly admit: Layer<R>[]; readonly breaker: Layer<R> | undefined } {
  const { clock, metrics } = services;
  const name = policies.model.name;
  const admit: Layer<R>[] = [];
  const limiter = kind === 'upgrade' ? policies.limiter : (policies.globalLimiter ?? policies.limiter);
  if (limiter) {
    const rejected = metrics.rateLimited.labels(name, limiter.policy.mode);
    const delayed = metrics.shaped.labels(name);
    const events = { rejected: () => rejected.inc(), delayed: () => delayed.inc() };
    admit.push(
      limiter === policies.limiter
        ? policies.limiter.layer<R>(name, events, kind === 'request')
        : limiter.layer<R>(name, events),
    );
  }
  if (policies.bulkhead) {
    const rejected = metrics.bulkheadRejected.labels(name);
    admit.push(policies.bulkhead.layer<R>(name, () => rejected.inc()));
  }
  let breaker: Layer<R> | undefined;
  if (policies.breaker) {
    const rejected = metrics.breakerRejected.labels(name);
    breaker = circuitBreakerLayer<R>(policies.breaker, name, clock, () => rejected.inc());
  }
  return { admit, breaker };
}

/** An HTTP request's pipeline for `route` (see the order at the top of this file). */
export function buildPipeline(
  route: RouteModel,
  policies: UpstreamPolicies,
  services: PipelineServices,
  options: { withFallback?: boolean } = {},
): Handler {
  const { clock, metrics, random } = services;
  const name = policies.model.name;
  const layers: Layer[] = [];
  const idempotencyStore =
    route.idempotency?.store === 'redis' ? policies.sharedIdempotencyStore : policies.idempotencyStore;
  if (route.idempotency && idempotencyStore) {
    const counters = new Map<string, { inc(): void }>();
    layers.push(
      idempotencyLayer(
        route.idempotency,
        idempotencyStore,
        route.name,
        (result) => {
          let c = counters.get(result);
          if (!c) {
            c = metrics.idempotency.labels(route.name, result);
            counters.set(result, c);
          }
          c.inc();
        },
        clock,
      ),
    );
  }
  if (options.withFallback !== false && (policies.chain.head !== undefined || policies.degradation)) {
    layers.push(fallbackLayer(policies.chain, policies.degradation, clock));
  }
  const admission = admissionLayers<HttpResponse>(policies, services, 'request');
  layers.push(...admission.admit);
  layers.push(deadlineLayer(route.timeouts.request, clock));
  layers.push(
    retryLayer(route.retry, policies.budget, clock, random, {
      retried: (reason) => metrics.retries.labels(name, reason).inc(),
      skipped: (reason) => metrics.retriesSkipped.labels(name, reason).inc(),
    }),
  );
  if (admission.breaker) layers.push(admission.breaker);
  // Every attempt (retries included) is counted by outcome.
  const attemptCounters = new Map<string, { inc(): void }>();
  const countAttempt = (label: string) => {
    let c = attemptCounters.get(label);
    if (!c) {
      c = metrics.attempts.labels(name, label);
      attemptCounters.set(label, c);
    }
    c.inc();
  };
  return compose(layers, upstreamCall(clock, countAttempt));
}

/**
 * A WebSocket handshake's pipeline for `route`: admitted as any request to the upstream (limiter,
 * bulkhead, breaker), then the handshake, sent once. No idempotency, fallback, deadline or retry: a
 * handshake is not replayed, and a fallback answer would not be a WebSocket.
 */
export function buildUpgradePipeline(
  policies: UpstreamPolicies,
  services: PipelineServices,
): Call<HandshakeResponse> {
  const admission = admissionLayers<HandshakeResponse>(policies, services, 'upgrade');
  const layers = admission.breaker ? [...admission.admit, admission.breaker] : admission.admit;
  return compose(layers, handshakeCall(services.clock));
}
