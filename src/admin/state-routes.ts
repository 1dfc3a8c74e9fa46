/**
 * `GET /state`: what every upstream's policies are doing now; and operator control of a breaker,
 * `POST /upstreams/<name>/breaker` with `{"mode": "open" | "close" | "auto"}` (resilience4j's
 * FORCED_OPEN / DISABLED, Polly's Isolate).
 */
import type { FastifyInstance } from 'fastify';
import type { AdminRuntime } from './admin.js';
import { requireOperator } from './auth.js';

export function stateRoutes(runtime: AdminRuntime, token: string | undefined) {
  return async (app: FastifyInstance) => {
    app.get('/state', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return runtime.state();
    });
    app.post<{
      Params: { name: string };
      Body: { mode?: string } | undefined;
      Querystring: { mode?: string };
    }>('/upstreams/:name/breaker', { preHandler: requireOperator(token) }, async (req, reply) => {
      const mode = req.body?.mode ?? req.query.mode;
      if (mode !== 'open' && mode !== 'close' && mode !== 'auto') {
        reply.code(400);
        return { error: 'mode must be open, close or auto' };
      }
      const result = runtime.forceBreaker(req.params.name, mode);
      if (!result.ok) reply.code(result.status);
      return result;
    });
  };
}
