/**
 * What a strategy is built with (as Polly's StrategyBuilderContext): the upstream it serves, the
 * clock, randomness, metrics, the logger and the Redis store. The observability of a strategy's
 * state changes (the breaker's transitions, the degradation monitor's verdicts) is here, wired
 * once per strategy built by its factory (strategies.ts).
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RedisStore } from '../stores/redis.js';
import { BREAKER_STATES, type CircuitBreaker, countsFields } from './circuit-breaker.js';
import type { DegradationMonitor } from './degradation.js';

export interface StrategyContext {
  readonly upstream: string;
  readonly clock: Clock;
  readonly random: () => number;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** stores.redis, when configured (global rate limits). */
  readonly redis: RedisStore | undefined;
}

export function strategyContext(
  upstream: string,
  services: {
    clock: Clock;
    random: () => number;
    metrics: Metrics;
    logger: Logger;
    redis?: RedisStore | undefined;
  },
): StrategyContext {
  return {
    upstream,
    clock: services.clock,
    random: services.random,
    metrics: services.metrics,
    logger: services.logger,
    redis: services.redis,
  };
}

/** A new breaker's state gauge, transition counter and transition log lines. */
export function observeBreaker(breaker: CircuitBreaker, ctx: StrategyContext): void {
  const { metrics, logger, upstream: name } = ctx;
  const setState = () => {
    for (const s of BREAKER_STATES) metrics.breakerState.labels(name, s).set(s === breaker.state ? 1 : 0);
  };
  setState();
  breaker.onTransition((t) => {
    setState();
    metrics.breakerTransitions.labels(name, t.from, t.to, reasonLabel(t.reason)).inc();
    const log =
      t.to === 'open' || t.to === 'forced_open' ? logger.warn.bind(logger) : logger.info.bind(logger);
    log(
      {
        event: 'circuit_breaker_transition',
        upstream: name,
        from: t.from,
        to: t.to,
        reason: t.reason,
        ...countsFields(t.counts),
      },
      `circuit breaker ${name}: ${t.from} -> ${t.to} (${t.reason})`,
    );
  });
}

/** An upstream without a breaker exports no breaker state. */
export function forgetBreaker(ctx: StrategyContext): void {
  for (const st of BREAKER_STATES) ctx.metrics.breakerState.remove(ctx.upstream, st);
}

/** A new degradation monitor's gauge and its degraded / recovered log lines. */
export function observeDegradation(monitor: DegradationMonitor, ctx: StrategyContext): void {
  const { metrics, logger, upstream: name } = ctx;
  metrics.degraded.labels(name).set(0);
  monitor.onChange((c) => {
    metrics.degraded.labels(name).set(c.degraded ? 1 : 0);
    const fields = {
      event: 'degradation',
      upstream: name,
      degraded: c.degraded,
      condition: c.condition,
      value: c.value,
      threshold: c.threshold,
      requests: c.requests,
    };
    if (c.degraded)
      logger.warn(
        fields,
        `upstream ${name} degraded: ${c.condition} ${c.value} against threshold ${c.threshold}`,
      );
    else logger.info(fields, `upstream ${name} recovered from degradation`);
  });
}

/** Bounded label for a transition reason (the free text goes to the log line). */
function reasonLabel(reason: string): string {
  if (reason.includes('consecutive')) return 'consecutive_failures';
  if (reason.startsWith('failure rate')) return 'failure_rate';
  if (reason.startsWith('slow-call')) return 'slow_call_rate';
  if (reason.startsWith('reset_timeout')) return 'reset_timeout';
  if (reason.includes('probe failed')) return 'probe_failed';
  if (reason.includes('probe')) return 'probes_succeeded';
  return 'operator';
}
