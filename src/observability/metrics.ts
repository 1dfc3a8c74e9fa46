/**
 * The Prometheus registry of one breakwater process. Every metric is created here, named by the
 * catalogue in docs/metrics.md; modules receive this object rather than reaching for a global.
 * Labels are bounded: listener, route and upstream names come from the config, methods outside the
 * standard set are folded into OTHER.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

const STANDARD_METHODS = new Set([
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'DELETE',
  'CONNECT',
  'OPTIONS',
  'TRACE',
  'PATCH',
]);

export function methodLabel(method: string): string {
  return STANDARD_METHODS.has(method) ? method : 'OTHER';
}

export type Metrics = ReturnType<typeof createMetrics>;

export function createMetrics(options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (options.defaultMetrics !== false) {
    collectDefaultMetrics({ register: registry, prefix: 'breakwater_' });
    // Gauges that prom-client names *_total, which Prometheus reserves for counters (promtool
    // rejects them); the handle and request counts are not worth a misleading name.
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ]) {
      registry.removeSingleMetric(`breakwater_${name}`);
    }
  }

  const requests = new Counter({
    name: 'breakwater_requests_total',
    help: 'Requests answered by a data-plane listener, by the status sent to the client.',
    labelNames: ['listener', 'route', 'upstream', 'method', 'code'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'breakwater_request_duration_seconds',
    help: 'Time from request received to response finished, as the client sees it.',
    labelNames: ['listener', 'route', 'upstream'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const inflight = new Gauge({
    name: 'breakwater_requests_in_flight',
    help: 'Requests being handled by a data-plane listener.',
    labelNames: ['listener'] as const,
    registers: [registry],
  });
  const upstreamErrors = new Counter({
    name: 'breakwater_upstream_errors_total',
    help: 'Attempts that failed before or while the upstream answered, by cause.',
    labelNames: ['upstream', 'cause'] as const,
    registers: [registry],
  });
  const ready = new Gauge({
    name: 'breakwater_ready',
    help: '1 while breakwater reports ready, 0 while starting or draining.',
    registers: [registry],
  });
  const configInfo = new Gauge({
    name: 'breakwater_config_info',
    help: 'Always 1; the hash label names the config that is live.',
    labelNames: ['hash'] as const,
    registers: [registry],
  });
  const configLoaded = new Gauge({
    name: 'breakwater_config_last_reload_success_timestamp_seconds',
    help: 'When the live config was loaded (Unix seconds).',
    registers: [registry],
  });

  return { registry, requests, duration, inflight, upstreamErrors, ready, configInfo, configLoaded };
}
