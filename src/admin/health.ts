/**
 * `GET /health/live` and `GET /health/ready`.
 *
 * Liveness says only that the process and its event loop answer: it never depends on an upstream,
 * so a failing upstream never gets the sidecar restarted. Readiness is true once the config is
 * loaded and every listener is bound, and false again from the moment shutdown begins.
 */
import type { FastifyInstance } from 'fastify';

export interface Readiness {
  ready(): { ready: boolean; reason: string };
}

export function healthRoutes(readiness: Readiness) {
  return async (app: FastifyInstance) => {
    app.get('/health/live', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return { status: 'alive' };
    });
    app.get('/health/ready', async (_req, reply) => {
      const r = readiness.ready();
      reply.header('cache-control', 'no-store');
      reply.code(r.ready ? 200 : 503);
      return { status: r.ready ? 'ready' : 'not ready', reason: r.reason };
    });
  };
}
