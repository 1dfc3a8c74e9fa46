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
 * Per-upstream state (breaker, limiter, bulkhead, retry budget, fallback chain and degradation
 * monitor) lives in UpstreamPolicies, one strategy per policy (strategies.ts), shared by every
 * route to that upstream; the route's own settings (timeouts, retry, idempotency) shape its stack.
 *
 * A WebSocket handshake passes the same admission layers (limiter, bulkhead, breaker; see
 * `admissionLayers`) around its own innermost call, the handshake (`buildUpgradePipeline`). A call
 * breakwater makes itself (a fallback of type upstream, a deferred delivery, a saga step) runs the
 * upstream's request pipeline without its fallback layer (`withFallback: false`), with a context
 * that has no client.
 */

import { type HandshakeResponse, handshakeCall } from '../attempt/handshake.js';
import type { Clock } from '../clock.js';
import type { RouteModel, UpstreamModel } from '../config/resolve.js';
import type { IdempotencyStore } from '../idempotency/store.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { UpstreamStats } from '../observability/upstream-stats.js';
import type { RedisStore } from '../stores/redis.js';
import type { Bulkhead } from './bulkhead.js';
import type { CircuitBreaker } from './circuit-breaker.js';
import { deadlineLayer } from './deadline.js';
import type { FallbackChain } from './fallback.js';
import type { GlobalRateLimiter } from './global-rate-limiter.js';
import { idempotencyLayer } from './idempotency.js';
import type { RateLimiter } from './rate-limiter.js';
import type { RetryBudget } from './retry.js';
import {
  type BulkheadStrategy,
  type CallKind,
  type CircuitBreakerStrategy,
  createBulkheadStrategy,
  createCircuitBreakerStrategy,
  createFallbackStrategy,
  createRateLimiterStrategy,
  createRetryStrategy,
  type FallbackContext,
  type FallbackStrategy,
  noCircuitBreaker,
  type RateLimiterStrategy,
  type RetryStrategy,
} from './strategies.js';
import { strategyContext } from './strategy-context.js';
import {
  type Call,
  type CallResponse,
  compose,
  type Handler,
  type HttpResponse,
  type Layer,
} from './types.js';
import { upstreamCall } from './upstream-call.js';

export type { CallKind, FallbackContext } from './strategies.js';

export interface PipelineServices {
  readonly clock: Clock;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly random: () => number;
  /** stores.redis, when configured: global rate limits and the shared Idempotency-Key store use it. */
  readonly redis?: RedisStore | undefined;
}

/**
 * The state one upstream's policies share across routes and, while its settings stay the same,
 * across reloads: one strategy per policy, each made by its factory (strategies.ts) from the
 * upstream's resolved model and one builder context.
 */
export class UpstreamPolicies {
  readonly rateLimiter: RateLimiterStrategy | undefined;
  readonly bulkheadStrategy: BulkheadStrategy | undefined;
  readonly circuitBreaker: CircuitBreakerStrategy | undefined;
  readonly retry: RetryStrategy;
  readonly fallback: FallbackStrategy;
  readonly idempotencyStore: IdempotencyStore | undefined;
  readonly sharedIdempotencyStore: IdempotencyStore | undefined;
  /** Live traffic figures (carried across reloads). */
  readonly stats: UpstreamStats;

  /**
   * `previous` is the same upstream's policies under the config being replaced: each strategy
   * carries over its state while its settings did not change, so a reload does not close an open
   * breaker or refill a drained bucket.
   */
  constructor(
    readonly model: UpstreamModel,
    services: PipelineServices,
    fallback: FallbackContext,
    previous?: UpstreamPolicies,
  ) {
    const ctx = strategyContext(model.name, services);
    this.stats = previous?.stats ?? new UpstreamStats();
    this.idempotencyStore = fallback.idempotency;
    this.sharedIdempotencyStore = fallback.sharedIdempotency;
    this.fallback = createFallbackStrategy(model, fallback, this.stats, ctx, previous?.fallback);
    this.circuitBreaker = model.circuitBreaker
      ? createCircuitBreakerStrategy(model.circuitBreaker, ctx, previous?.circuitBreaker)
      : noCircuitBreaker(ctx);
    this.rateLimiter = model.rateLimiter
      ? createRateLimiterStrategy(model.rateLimiter, ctx, previous?.rateLimiter)
      : undefined;
    this.bulkheadStrategy = model.bulkhead
      ? createBulkheadStrategy(model.bulkhead, ctx, previous?.bulkheadStrategy)
      : undefined;
    this.retry = createRetryStrategy(model.retry.budget, ctx, previous?.retry);
    const { limiter, bulkhead } = this;
    const { metrics } = services;
    const name = model.name;
    metrics.collectors.set(`upstream:${name}`, () => {
      if (limiter) metrics.limiterQueue.labels(name).set(limiter.queueLength);
      if (bulkhead) {
        metrics.bulkheadInFlight.labels(name).set(bulkhead.inFlight);
        metrics.bulkheadQueue.labels(name).set(bulkhead.queueLength);
      }
    });
  }

  get breaker(): CircuitBreaker | undefined {
    return this.circuitBreaker?.breaker;
  }
  /** The local bucket; for scope global, this replica's share, used while Redis is unreachable. */
  get limiter(): RateLimiter | undefined {
    return this.rateLimiter?.local;
  }
  /** scope global: the limit shared through Redis. */
  get globalLimiter(): GlobalRateLimiter | undefined {
    return this.rateLimiter?.global;
  }
  get bulkhead(): Bulkhead | undefined {
    return this.bulkheadStrategy?.bulkhead;
  }
  get budget(): RetryBudget {
    return this.retry.budget;
  }
  get chain(): FallbackChain {
    return this.fallback.chain;
  }
  /** Whether this upstream's responses are teed into the response cache. */
  get caches(): boolean {
    return this.fallback.caches;
  }
  get degradation(): FallbackStrategy['degradation'] {
    return this.fallback.degradation;
  }
}

/**
 * The layers that admit a call to an upstream, whatever the call: the rate limiter (or the global
 * limit) and the bulkhead, outermost first, and the circuit breaker, asked for each attempt
 * (innermost). HTTP requests and WebSocket handshakes are admitted by these same strategies, with
 * the same metrics; each kind of call places them in its stack (`buildPipeline`,
 * `buildUpgradePipeline`).
 */
export function admissionLayers<R extends CallResponse>(
  policies: UpstreamPolicies,
  kind: CallKind,
  route: RouteModel,
): { readonly admit: Layer<R>[]; readonly breaker: Layer<R> | undefined } {
  const use = { kind, route };
  const admit: Layer<R>[] = [];
  if (policies.rateLimiter) admit.push(policies.rateLimiter.layer<R>(use));
  if (policies.bulkheadStrategy) admit.push(policies.bulkheadStrategy.layer<R>(use));
  return { admit, breaker: policies.circuitBreaker?.layer<R>(use) };
}

/** An HTTP request's pipeline for `route` (see the order at the top of this file). */
export function buildPipeline(
  route: RouteModel,
  policies: UpstreamPolicies,
  services: PipelineServices,
  options: { withFallback?: boolean } = {},
): Handler {
  const { clock, metrics } = services;
  const name = policies.model.name;
  const use = { kind: 'request', route } as const;
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
  if (options.withFallback !== false && policies.fallback.active) layers.push(policies.fallback.layer(use));
  const admission = admissionLayers<HttpResponse>(policies, 'request', route);
  layers.push(...admission.admit);
  layers.push(deadlineLayer(route.timeouts.request, clock));
  layers.push(policies.retry.layer(use));
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
  route: RouteModel,
  policies: UpstreamPolicies,
  services: PipelineServices,
): Call<HandshakeResponse> {
  const admission = admissionLayers<HandshakeResponse>(policies, 'upgrade', route);
  const layers = admission.breaker ? [...admission.admit, admission.breaker] : admission.admit;
  return compose(layers, handshakeCall(services.clock));
}
