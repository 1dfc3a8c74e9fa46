/**
 * The Prometheus registry of one breakwater process. Every metric is created here, named by the
 * catalogue in docs/metrics.md; modules receive this object rather than reaching for a global.
 * Labels are bounded: listener, route and upstream names come from the config, methods outside the
 * standard set are folded into OTHER.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { hotCounter, hotGauge, hotHistogram } from './hot-metrics.js';

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

  // The metrics moved on every request count in cached children (./hot-metrics.ts), merged at a scrape.
  const REQUEST_LABELS = ['listener', 'route', 'upstream', 'method', 'code'] as const;
  const requests = hotCounter(
    new Counter({
      name: 'breakwater_requests_total',
      help: 'Requests answered by a data-plane listener, by the status sent to the client.',
      labelNames: REQUEST_LABELS,
      registers: [registry],
    }),
    REQUEST_LABELS,
  );
  const grpcCalls = new Counter({
    name: 'breakwater_grpc_calls_total',
    help: 'gRPC calls answered by a data-plane listener, by the grpc-status the client got (its HTTP status is 200).',
    labelNames: ['listener', 'route', 'upstream', 'grpc_status'] as const,
    registers: [registry],
  });
  const DURATION_LABELS = ['listener', 'route', 'upstream'] as const;
  const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30];
  const duration = hotHistogram(
    new Histogram({
      name: 'breakwater_request_duration_seconds',
      help: 'Time from request received to response finished, as the client sees it.',
      labelNames: DURATION_LABELS,
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    DURATION_LABELS,
    DURATION_BUCKETS,
  );
  const inflight = hotGauge(
    new Gauge({
      name: 'breakwater_requests_in_flight',
      help: 'Requests being handled by a data-plane listener.',
      labelNames: ['listener'] as const,
      registers: [registry],
    }),
    ['listener'] as const,
  );
  const sendTimeouts = new Counter({
    name: 'breakwater_send_timeouts_total',
    help: 'Clients disconnected because they accepted no byte of their response for limits.send_timeout (their upstream request aborted).',
    labelNames: ['listener'] as const,
    registers: [registry],
  });
  const tempFiles = new Gauge({
    name: 'breakwater_temp_files',
    help: 'Temporary files of buffered bodies open now, by kind (request, response).',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const tempFileBytes = new Gauge({
    name: 'breakwater_temp_file_bytes',
    help: 'Bytes in the temporary files of buffered bodies now, by kind (request, response).',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const tempFileErrors = new Counter({
    name: 'breakwater_temp_file_errors_total',
    help: 'Temporary files that could not be made, written or read (disk full, permissions), by kind: a request answered 507/503, a response buffered in memory only.',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const streamingInFlight = new Gauge({
    name: 'breakwater_streaming_in_flight',
    help: "Attempts streaming at the client's pace (unbuffered uploads and responses) holding a place of the upstream's streaming share.",
    labelNames: ['upstream'] as const,
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

  const attempts = hotCounter(
    new Counter({
      name: 'breakwater_upstream_attempts_total',
      help: 'Attempts sent to an upstream, by outcome (2xx..5xx, connect_failure, reset, timeout, protocol_error, aborted, no_endpoint, streaming_limit).',
      labelNames: ['upstream', 'outcome'] as const,
      registers: [registry],
    }),
    ['upstream', 'outcome'] as const,
  );
  const retries = new Counter({
    name: 'breakwater_retries_total',
    help: 'Retries made, by the outcome that triggered them.',
    labelNames: ['upstream', 'reason'] as const,
    registers: [registry],
  });
  const retriesSkipped = new Counter({
    name: 'breakwater_retries_skipped_total',
    help: 'Retries that retry_on asked for but were not made (budget, body_too_large, deadline, method, retry_after).',
    labelNames: ['upstream', 'reason'] as const,
    registers: [registry],
  });
  const breakerState = new Gauge({
    name: 'breakwater_circuit_breaker_state',
    help: '1 for the current state of each upstream circuit breaker, 0 for the others.',
    labelNames: ['upstream', 'state'] as const,
    registers: [registry],
  });
  const breakerTransitions = new Counter({
    name: 'breakwater_circuit_breaker_transitions_total',
    help: 'Circuit breaker state changes.',
    labelNames: ['upstream', 'from', 'to', 'reason'] as const,
    registers: [registry],
  });
  const breakerRejected = new Counter({
    name: 'breakwater_circuit_breaker_rejected_total',
    help: 'Attempts refused because the circuit breaker was open.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const rateLimited = new Counter({
    name: 'breakwater_rate_limited_total',
    help: 'Requests answered 429 by the rate limiter (mode reject) or the shaper (queue full or max_delay).',
    labelNames: ['upstream', 'mode'] as const,
    registers: [registry],
  });
  const shaped = new Counter({
    name: 'breakwater_rate_limiter_delayed_total',
    help: 'Requests the shaper delayed rather than rejected.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const limiterQueue = new Gauge({
    name: 'breakwater_rate_limiter_queued',
    help: 'Requests waiting in the shaper queue.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const bulkheadInFlight = new Gauge({
    name: 'breakwater_bulkhead_in_flight',
    help: 'Requests holding a bulkhead slot.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const bulkheadQueue = new Gauge({
    name: 'breakwater_bulkhead_queued',
    help: 'Requests waiting for a bulkhead slot.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const bulkheadRejected = new Counter({
    name: 'breakwater_bulkhead_rejected_total',
    help: 'Requests answered 503 because the bulkhead and its queue were full.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });

  const fallbacks = new Counter({
    name: 'breakwater_fallbacks_total',
    help: 'Answers served by a fallback instead of the upstream, by the event that triggered it.',
    labelNames: ['upstream', 'fallback', 'reason'] as const,
    registers: [registry],
  });
  const degraded = new Gauge({
    name: 'breakwater_degraded',
    help: '1 while an upstream is degraded (answered by its fallback), else 0.',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const cacheBytes = new Gauge({
    name: 'breakwater_cache_bytes',
    help: 'Bytes held by the response cache (bodies and an estimate of headers).',
    registers: [registry],
  });
  const cacheEntries = new Gauge({
    name: 'breakwater_cache_entries',
    help: 'Responses held by the response cache.',
    registers: [registry],
  });
  const cacheLookups = new Counter({
    name: 'breakwater_cache_lookups_total',
    help: 'Response-cache lookups by fallbacks, by result (hit, miss, stale).',
    labelNames: ['upstream', 'result'] as const,
    registers: [registry],
  });
  const cacheEvictions = new Counter({
    name: 'breakwater_cache_evictions_total',
    help: 'Responses evicted from the cache to stay within cache.max_bytes.',
    registers: [registry],
  });

  const idempotency = new Counter({
    name: 'breakwater_idempotency_total',
    help: 'Requests with an Idempotency-Key, by result (stored, replayed, conflict, mismatch, missing, malformed, released, store_error_rejected, store_error_forwarded).',
    labelNames: ['route', 'result'] as const,
    registers: [registry],
  });

  const storeRequests = new Counter({
    name: 'breakwater_store_requests_total',
    help: 'Calls to a shared store (stores.redis), by operation and result (ok, error, timeout, unavailable: not sent because the store breaker is open or the client is disconnected).',
    labelNames: ['store', 'op', 'result'] as const,
    registers: [registry],
  });
  const storeDuration = new Histogram({
    name: 'breakwater_store_duration_seconds',
    help: 'Round trip of the calls sent to a shared store, by operation.',
    labelNames: ['store', 'op'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25],
    registers: [registry],
  });
  const storeUp = new Gauge({
    name: 'breakwater_store_up',
    help: '1 while a shared store is connected and its breaker closed, else 0.',
    labelNames: ['store'] as const,
    registers: [registry],
  });
  const rateLimitDecisions = new Counter({
    name: 'breakwater_rate_limit_decisions_total',
    help: 'Decisions of global (scope: global) rate limiters, by result (allowed, limited, unavailable) and source (store: Redis answered; cache: a denial cached until its reset; local_fallback: on_store_error applied).',
    labelNames: ['upstream', 'result', 'source'] as const,
    registers: [registry],
  });

  const configReloads = new Counter({
    name: 'breakwater_config_reloads_total',
    help: 'Config reloads (SIGHUP, POST /config/reload, file change), by result.',
    labelNames: ['result'] as const,
    registers: [registry],
  });

  const endpointHealthy = new Gauge({
    name: 'breakwater_endpoint_healthy',
    help: '1 when an endpoint may get traffic (not failing its health check, not ejected), else 0.',
    labelNames: ['upstream', 'endpoint'] as const,
    registers: [registry],
  });
  const endpointInFlight = new Gauge({
    name: 'breakwater_endpoint_in_flight',
    help: 'Attempts in flight to an endpoint.',
    labelNames: ['upstream', 'endpoint'] as const,
    registers: [registry],
  });
  const endpointEjections = new Counter({
    name: 'breakwater_endpoint_ejections_total',
    help: 'Times outlier detection ejected an endpoint.',
    labelNames: ['upstream', 'endpoint'] as const,
    registers: [registry],
  });

  const websocketUpgrades = new Counter({
    name: 'breakwater_websocket_upgrades_total',
    help: 'WebSocket handshakes, by outcome (upgraded, 2xx..5xx: the upstream refused, connect_failure, timeout, reset, protocol_error, circuit_open, bulkhead_full, rate_limited, no_endpoint, refused, client_gone).',
    labelNames: ['upstream', 'outcome'] as const,
    registers: [registry],
  });
  const websocketOpen = new Gauge({
    name: 'breakwater_websocket_connections',
    help: 'WebSocket connections open now (tunnels between a client and an upstream).',
    labelNames: ['upstream'] as const,
    registers: [registry],
  });
  const websocketClosed = new Counter({
    name: 'breakwater_websocket_closed_total',
    help: 'WebSocket connections closed, by who or what closed them (client, upstream, error, idle_timeout, max_duration, shutdown).',
    labelNames: ['upstream', 'reason'] as const,
    registers: [registry],
  });

  const sagas = new Counter({
    name: 'breakwater_sagas_total',
    help: 'Sagas that ended, by outcome (completed, compensated, failed_to_compensate).',
    labelNames: ['saga', 'outcome'] as const,
    registers: [registry],
  });
  const sagasInFlight = new Gauge({
    name: 'breakwater_sagas_in_flight',
    help: 'Sagas running or compensating in this process now.',
    labelNames: ['saga'] as const,
    registers: [registry],
  });
  const sagasParked = new Gauge({
    name: 'breakwater_sagas_failed_to_compensate',
    help: 'Sagas in the log in state failed_to_compensate, waiting for an operator (retry or forget).',
    labelNames: ['saga'] as const,
    registers: [registry],
  });
  const sagaDuration = new Histogram({
    name: 'breakwater_saga_duration_seconds',
    help: "Time from a saga's start to its end (completed, compensated or failed_to_compensate).",
    labelNames: ['saga'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600],
    registers: [registry],
  });
  const sagaCompensations = new Counter({
    name: 'breakwater_saga_compensations_total',
    help: 'Compensation calls of saga steps, by outcome (success; failure: to be retried; gave_up: max_attempts or max_age reached).',
    labelNames: ['saga', 'step', 'outcome'] as const,
    registers: [registry],
  });
  const sagasRecovered = new Counter({
    name: 'breakwater_sagas_recovered_total',
    help: 'Sagas found running or compensating in the saga log at start-up and driven on.',
    registers: [registry],
  });
  const deferredEnqueued = new Counter({
    name: 'breakwater_deferred_enqueued_total',
    help: 'Requests stored for later delivery (answered 202), by route and upstream.',
    labelNames: ['route', 'upstream'] as const,
    registers: [registry],
  });
  const deferredItems = new Gauge({
    name: 'breakwater_deferred_items',
    help: 'Deferred items in the store, by state (pending, delivering, synced, failed, expired, cancelled).',
    labelNames: ['state'] as const,
    registers: [registry],
  });
  const deferredOldestPending = new Gauge({
    name: 'breakwater_deferred_oldest_pending_age_seconds',
    help: 'Age of the oldest deferred item still to deliver (pending or delivering); 0 when none.',
    registers: [registry],
  });
  const deferredDeliveries = new Counter({
    name: 'breakwater_deferred_deliveries_total',
    help: 'Delivery attempts of deferred items, by outcome (synced, failed, expired, retry).',
    labelNames: ['upstream', 'outcome'] as const,
    registers: [registry],
  });
  const deferredStoreBytes = new Gauge({
    name: 'breakwater_deferred_store_bytes',
    help: 'Bytes the embedded store (data_dir) takes on disk.',
    registers: [registry],
  });

  /** Gauges that read live state are set by these just before each scrape (keyed, so a reload replaces its own). */
  const collectors = new Map<string, () => void>();
  const scrape = async (): Promise<string> => {
    for (const c of collectors.values()) c();
    return registry.metrics();
  };

  const metrics = {
    registry,
    collectors,
    scrape,
    requests,
    grpcCalls,
    duration,
    inflight,
    sendTimeouts,
    tempFiles,
    tempFileBytes,
    tempFileErrors,
    streamingInFlight,
    ready,
    configInfo,
    configLoaded,
    attempts,
    retries,
    retriesSkipped,
    breakerState,
    breakerTransitions,
    breakerRejected,
    rateLimited,
    shaped,
    limiterQueue,
    bulkheadInFlight,
    bulkheadQueue,
    bulkheadRejected,
    fallbacks,
    degraded,
    cacheBytes,
    cacheEntries,
    cacheLookups,
    cacheEvictions,
    idempotency,
    storeRequests,
    storeDuration,
    storeUp,
    rateLimitDecisions,
    configReloads,
    endpointHealthy,
    endpointInFlight,
    endpointEjections,
    websocketUpgrades,
    websocketOpen,
    websocketClosed,
    sagas,
    sagasInFlight,
    sagasParked,
    sagaDuration,
    sagaCompensations,
    sagasRecovered,
    deferredEnqueued,
    deferredItems,
    deferredOldestPending,
    deferredDeliveries,
    deferredStoreBytes,
    forget,
  };

  /**
   * Removes every series whose labels include all of `labels` (an upstream a reload removed:
   * `{ upstream }`; an endpoint: `{ upstream, endpoint }`), counters included, so nothing that
   * no longer exists keeps exporting its last values.
   */
  async function forget(labels: Readonly<Record<string, string>>): Promise<void> {
    const wanted = Object.entries(labels);
    for (const m of Object.values(metrics)) {
      if (!(m instanceof Counter || m instanceof Gauge || m instanceof Histogram)) continue;
      // prom-client keeps the label names it was created with on the metric.
      const names = (m as { labelNames?: readonly string[] }).labelNames ?? [];
      if (!wanted.every(([k]) => names.includes(k))) continue;
      const done = new Set<string>();
      for (const v of (await m.get()).values) {
        const seriesLabels: Readonly<Record<string, string | number | undefined>> = v.labels;
        if (!wanted.every(([k, x]) => seriesLabels[k] === x)) continue;
        // A histogram's buckets carry `le` besides the series' own labels.
        const own = Object.fromEntries(Object.entries(seriesLabels).filter(([k]) => k !== 'le'));
        const id = JSON.stringify(own);
        if (done.has(id)) continue;
        done.add(id);
        m.remove(own);
      }
    }
  }

  return metrics;
}
