/**
 * The deferred queue on the admin listener:
 *
 *   GET  /deferred?status=&upstream=&route=&older_than=&newer_than=&limit=   list, oldest first
 *   GET  /deferred/<id>                  one item, with its attempts and last answer (the
 *                                        202's Location: a client polls its own item here)
 *   POST /deferred/<id>/cancel           a pending item -> cancelled
 *   POST /deferred/<id>/replay           failed, expired, cancelled -> pending (or a pending one now)
 *   POST /deferred/cancel, /deferred/replay   the same for every item the filter matches (query or
 *                                        JSON body: status, upstream, route, older_than, newer_than)
 *
 * Reads are open like /state; the POSTs need loopback or the admin token (auth.ts). Items show no
 * request headers or body (they may carry credentials).
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { requireOperator } from '../admin/auth.js';
import { adminProblem, jsonBody } from '../admin/problem.js';
import { parseDuration } from '../config/units.js';
import { StoreUnavailableError } from '../stores/redis.js';
import type { DeferredBackend, Filter } from './backend.js';
import { STATES, type State, summary } from './model.js';

export interface DeferredRuntime {
  readonly deferred?: { readonly queue: DeferredBackend } | undefined;
}

type Query = Record<string, string | undefined>;

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

export function deferredRoutes(runtime: DeferredRuntime, token: string | undefined) {
  const queueOr = (reply: FastifyReply): DeferredBackend | undefined => {
    const q = runtime.deferred?.queue;
    if (!q)
      void adminProblem(
        reply,
        404,
        'not-found',
        'deferred delivery is off: no route of the config has a deferred: block',
      );
    return q;
  };
  return async (app: FastifyInstance) => {
    // The Redis backend's calls fail when Redis is away: 503, never a hang or a 500.
    app.setErrorHandler((err, _req, reply) => {
      if (err instanceof StoreUnavailableError)
        return adminProblem(reply, 503, 'store-unavailable', err.message);
      throw err;
    });
    app.get<{ Querystring: Query }>('/deferred', async (req, reply) => {
      const q = queueOr(reply);
      if (!q) return reply;
      const f = filterOf(req.query);
      if (typeof f === 'string') return adminProblem(reply, 400, 'bad-request', f);
      const limit = Math.min(MAX_LIMIT, Number(req.query.limit ?? DEFAULT_LIMIT));
      if (!Number.isInteger(limit) || limit < 1)
        return adminProblem(reply, 400, 'bad-request', `limit must be a whole number from 1 to ${MAX_LIMIT}`);
      const now = q.now();
      const { items, truncated } = await q.list(f, limit);
      reply.header('cache-control', 'no-store');
      return { items: items.map((i) => summary(i, now)), count: items.length, truncated };
    });
    app.get<{ Params: { id: string } }>('/deferred/:id', async (req, reply) => {
      const q = queueOr(reply);
      if (!q) return reply;
      const item = await q.get(req.params.id);
      if (!item) return adminProblem(reply, 404, 'not-found', `no deferred item ${req.params.id}`);
      reply.header('cache-control', 'no-store');
      return {
        ...summary(item, q.now()),
        history: item.history.map((h) => ({
          at: new Date(h.at).toISOString(),
          status: h.status ?? null,
          error: h.error ?? null,
        })),
        last_answer: item.lastBody ?? null,
      };
    });
    for (const action of ['cancel', 'replay'] as const) {
      app.post<{ Params: { id: string } }>(
        `/deferred/:id/${action}`,
        { preHandler: requireOperator(token) },
        async (req, reply) => {
          const q = queueOr(reply);
          if (!q) return reply;
          const r = action === 'cancel' ? await q.cancel(req.params.id) : await q.replay(req.params.id);
          if (!r.ok)
            return adminProblem(reply, r.status, r.status === 404 ? 'not-found' : 'conflict', r.detail);
          return summary(r.item, q.now());
        },
      );
      app.post<{ Querystring: Query }>(
        `/deferred/${action}`,
        { preHandler: requireOperator(token) },
        async (req, reply) => {
          const q = queueOr(reply);
          if (!q) return reply;
          const body = jsonBody(req.body);
          if (!body.ok) return adminProblem(reply, 400, 'bad-request', body.detail);
          const fromBody =
            body.value && typeof body.value === 'object' ? (body.value as Record<string, unknown>) : {};
          const merged: Query = { ...req.query };
          for (const [k, v] of Object.entries(fromBody))
            if (typeof v === 'string' || typeof v === 'number') merged[k] = String(v);
          const f = filterOf(merged);
          if (typeof f === 'string') return adminProblem(reply, 400, 'bad-request', f);
          if (Object.values(f).every((v) => v === undefined))
            return adminProblem(
              reply,
              400,
              'bad-request',
              `a bulk ${action} needs a filter (status, upstream, route, older_than or newer_than), e.g. {"status": "failed"}`,
            );
          return q.bulk(action, f);
        },
      );
    }
  };
}

/** The filter of a list or bulk call, or what is wrong with it. */
function filterOf(q: Query): Filter | string {
  const status = q.status;
  if (status !== undefined && !(STATES as readonly string[]).includes(status))
    return `status must be one of ${STATES.join(', ')}, got ${JSON.stringify(status)}`;
  const age = (key: 'older_than' | 'newer_than'): number | undefined | string => {
    const v = q[key];
    if (v === undefined) return undefined;
    return parseDuration(v) ?? `${key} must be a duration such as 10m or 2h, got ${JSON.stringify(v)}`;
  };
  const olderThan = age('older_than');
  if (typeof olderThan === 'string') return olderThan;
  const newerThan = age('newer_than');
  if (typeof newerThan === 'string') return newerThan;
  return {
    status: status as State | undefined,
    upstream: q.upstream,
    route: q.route,
    olderThan,
    newerThan,
  };
}
