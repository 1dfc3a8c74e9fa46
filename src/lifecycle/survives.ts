/**
 * What survives a reload: the one place that decides whether a piece of live state is carried
 * over to the new config or built anew. A piece survives when the settings it was built from are
 * the same (compared by value, as JSON: the resolved models are plain data; TLS models hold the
 * certificate files' bytes, so a changed file counts as a change).
 *
 * | state                                   | kept while these are the same                         |
 * | --------------------------------------- | ----------------------------------------------------- |
 * | response cache                          | `cache`                                               |
 * | Redis client (and its Idempotency-Key store) | `stores.redis`                                   |
 * | an upstream's endpoints, pools, health  | `poolSettings()` below                                |
 * | circuit breaker, rate limiter, bulkhead, retry budget | that policy's resolved block            |
 * | global limit                            | the Redis client and the local bucket it falls back to |
 * | degradation monitor                     | the upstream's degradation settings                   |
 * | live traffic figures (/state)           | always (per upstream name)                            |
 *
 * Listeners are kept while their address is the same (app.ts swaps their routes in place).
 */
import type { UpstreamModel } from '../config/resolve.js';

/** Whether two settings are the same (by value). */
export function sameSettings(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** `previous` when it was built from the same settings, else undefined (build a new one). */
export function carried<T>(
  previous: T | undefined,
  previousSettings: unknown,
  settings: unknown,
): T | undefined {
  return previous !== undefined && sameSettings(previousSettings, settings) ? previous : undefined;
}

/**
 * What decides whether an upstream's connection pools can be kept across a reload. The TLS model
 * holds the certificate files' bytes (JSON-serialized by content), so a changed file makes new pools.
 */
export function poolSettings(m: UpstreamModel): unknown {
  const hc = m.healthCheck
    ? { ...m.healthCheck, expectedStatuses: [...(m.healthCheck.expectedStatuses ?? [])] }
    : undefined;
  return [
    m.endpoints,
    m.maxConnections,
    m.keepaliveTimeout,
    m.timeouts.connect,
    m.timeouts.body,
    hc,
    m.outlierDetection,
    m.tls,
    m.protocol,
    m.maxConcurrentStreams,
  ];
}
