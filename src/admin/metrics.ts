/**
 * `GET /metrics`: the process's registry in Prometheus text format.
 */
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../observability/metrics.js';

export function metricsRoute(metrics: Metrics) {
  return async (app: FastifyInstance) => {
    app.get('/metrics', async (_req, reply) => {
      reply.header('content-type', metrics.registry.contentType);
      reply.header('cache-control', 'no-store');
      return metrics.scrape();
    });
  };
}
