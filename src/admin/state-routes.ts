/**
 * `GET /state`: what every upstream's policies are doing now; and operator control of a breaker,
 * `POST /upstreams/<name>/breaker` with `{"mode": "open" | "close" | "auto"}` (resilience4j's
 * FORCED_OPEN / DISABLED, Polly's Isolate). The body is JSON whatever its content type (curl's
 * `-d`), or `?mode=` in the query.
 */
import type { FastifyInstance } from 'fastify';
import { requireOperator } from './auth.js';
import { adminProblem, jsonBody } from './problem.js';
import type { AdminRuntime } from './runtime.js';

const MODES = new Set(['open', 'close', 'auto']);

export function stateRoutes(runtime: AdminRuntime, token: string | undefined) {
  return async (app: FastifyInstance) => {
    app.get('/state', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return runtime.state();
    });
    app.post<{ Params: { name: string }; Querystring: { mode?: string } }>(
      '/upstreams/:name/breaker',
      { preHandler: requireOperator(token) },
      async (req, reply) => {
        const name = req.params.name;
        if (!Object.hasOwn(runtime.config.upstreams, name)) {
          const known = Object.keys(runtime.config.upstreams);
          return adminProblem(
            reply,
            404,
            'unknown-upstream',
            `no upstream "${name}"; defined: ${known.join(', ') || 'none'}`,
          );
        }
        const body = jsonBody(req.body);
        if (!body.ok) return adminProblem(reply, 400, 'bad-request', body.detail);
        const fromBody =
          body.value && typeof body.value === 'object' && 'mode' in body.value
            ? (body.value as { mode: unknown }).mode
            : undefined;
        const mode = fromBody ?? req.query.mode;
        if (typeof mode !== 'string' || !MODES.has(mode)) {
          return adminProblem(
            reply,
            400,
            'bad-request',
            `mode must be "open", "close" or "auto" (body {"mode": "open"} or ?mode=open), got ${JSON.stringify(mode ?? null)}`,
          );
        }
        const result = runtime.forceBreaker(name, mode as 'open' | 'close' | 'auto');
        if (result.ok) return result;
        return adminProblem(
          reply,
          result.status,
          result.status === 404 ? 'unknown-upstream' : 'no-circuit-breaker',
          result.error,
        );
      },
    );
  };
}
