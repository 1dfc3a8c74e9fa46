/**
 * `GET /config` (the effective config, every default filled in, secrets redacted),
 * `GET /config/status` (which config is live, and how the last reload went) and
 * `POST /config/reload`.
 */
import type { FastifyInstance } from 'fastify';
import { formatProblem } from '../config/load.js';
import { isTemplate } from '../sagas/template.js';
import { requireOperator } from './auth.js';
import { adminProblem } from './problem.js';
import type { AdminRuntime } from './runtime.js';

const SECRET_KEY = /token|secret|password|passwd|authorization|api[-_]?key|cookie/i;

/** JSON for the config model: Sets as lists, Buffers as their length, secret-looking keys redacted. */
export function redactedConfig(value: unknown, key = ''): unknown {
  if (SECRET_KEY.test(key) && key !== 'tokenEnv') return '[REDACTED]';
  if (value instanceof Set) return [...value];
  if (Buffer.isBuffer(value)) return `<${value.length} bytes>`;
  // A saga's compiled template is shown as written; a header pair named like a secret is redacted.
  if (isTemplate(value)) return value.source;
  if (Array.isArray(value) && value.length === 2 && typeof value[0] === 'string' && isTemplate(value[1]))
    return [value[0], redactedConfig(value[1], value[0])];
  if (Array.isArray(value)) return value.map((v) => redactedConfig(v));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = redactedConfig(v, k);
    return out;
  }
  return value;
}

export function configRoutes(runtime: AdminRuntime, token: string | undefined) {
  return async (app: FastifyInstance) => {
    app.get('/config', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return { hash: runtime.configHash, config: redactedConfig(runtime.config) };
    });
    app.get('/config/status', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return { file: runtime.config.file, hash: runtime.configHash, last_reload: runtime.lastReload ?? null };
    });
    app.post('/config/reload', { preHandler: requireOperator(token) }, async (_req, reply) => {
      const status = await runtime.reload('POST /config/reload');
      if (status.ok) return status;
      return adminProblem(
        reply,
        422,
        'config-invalid',
        status.problems.map((p) => formatProblem(p).trim()).join('\n'),
        { ...status },
      );
    });
  };
}
