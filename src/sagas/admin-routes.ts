/**
 * The admin API of sagas:
 *   GET    /sagas?state=&saga=&limit=   newest first (limit default 100, at most 1000)
 *   GET    /sagas/<id>                  one saga with its steps and history
 *   POST   /sagas/<id>/retry            a failed_to_compensate saga compensates again
 *   DELETE /sagas/<id>                  forget a saga that is not running
 * Writes need the operator (loopback or the admin token), as every admin write.
 */
import type { FastifyInstance } from 'fastify';
import { requireOperator } from '../admin/auth.js';
import { adminProblem } from '../admin/problem.js';
import type { AdminRuntime } from '../admin/runtime.js';
import { SAGA_STATES, type SagaRecord } from './machine.js';
import { SagaService } from './service.js';

const MAX_LIST = 1000;

function summary(r: SagaRecord) {
  return {
    id: r.id,
    saga: r.saga,
    state: r.state,
    created_at: new Date(r.createdAt).toISOString(),
    updated_at: new Date(r.updatedAt).toISOString(),
    finished_at: r.finishedAt === undefined ? null : new Date(r.finishedAt).toISOString(),
    failed_step: r.failedStep ?? null,
    reason: r.reason ?? null,
    request_id: r.request.requestId,
  };
}

function detail(r: SagaRecord) {
  return {
    ...summary(r),
    deadline: new Date(r.deadline).toISOString(),
    steps: r.steps.map((s) => ({
      name: s.name,
      state: s.state,
      status: s.answer?.status ?? null,
      failure: s.failure ?? null,
      status_checks: s.statusChecks,
      compensation_attempts: s.compensationAttempts,
      next_attempt_at: s.nextAttemptAt === undefined ? null : new Date(s.nextAttemptAt).toISOString(),
      last_error: s.lastError ?? null,
    })),
    history: r.history.map((h) => ({
      at: new Date(h.at).toISOString(),
      event: h.event,
      step: h.step ?? null,
      detail: h.detail ?? null,
    })),
  };
}

export function sagaRoutes(runtime: AdminRuntime, token: string | undefined) {
  return async (app: FastifyInstance) => {
    const service = () => runtime.sagas?.();
    const none = 'no saga is configured (add a sagas: block)';
    app.get<{ Querystring: { state?: string; saga?: string; limit?: string } }>(
      '/sagas',
      async (req, reply) => {
        reply.header('cache-control', 'no-store');
        const s = service();
        if (!s) return { sagas: [] };
        const { state, saga } = req.query;
        if (state !== undefined && !SagaService.isState(state))
          return adminProblem(
            reply,
            400,
            'bad-request',
            `state must be one of ${SAGA_STATES.join(', ')}, got ${JSON.stringify(state)}`,
          );
        const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST)
          return adminProblem(reply, 400, 'bad-request', `limit must be an integer from 1 to ${MAX_LIST}`);
        return { sagas: (await s.list({ state, saga, limit })).map(summary) };
      },
    );
    app.get<{ Params: { id: string } }>('/sagas/:id', async (req, reply) => {
      reply.header('cache-control', 'no-store');
      const rec = await service()?.get(req.params.id);
      if (!rec)
        return adminProblem(
          reply,
          404,
          'unknown-saga',
          service() ? `no saga ${req.params.id} in the log` : none,
        );
      return detail(rec);
    });
    app.post<{ Params: { id: string } }>(
      '/sagas/:id/retry',
      { preHandler: requireOperator(token) },
      async (req, reply) => {
        const s = service();
        if (!s) return adminProblem(reply, 404, 'unknown-saga', none);
        const r = await s.retry(req.params.id);
        if (r === 'not_found')
          return adminProblem(reply, 404, 'unknown-saga', `no saga ${req.params.id} in the log`);
        if (r === 'unknown_saga')
          return adminProblem(
            reply,
            409,
            'saga-conflict',
            `saga ${req.params.id} belongs to a saga the config no longer defines`,
          );
        if (r === 'conflict')
          return adminProblem(
            reply,
            409,
            'saga-conflict',
            `saga ${req.params.id} is ${(await s.get(req.params.id))?.state}: only a failed_to_compensate saga is retried`,
          );
        reply.code(202);
        return detail((await s.get(req.params.id)) as SagaRecord);
      },
    );
    app.delete<{ Params: { id: string } }>(
      '/sagas/:id',
      { preHandler: requireOperator(token) },
      async (req, reply) => {
        const s = service();
        if (!s) return adminProblem(reply, 404, 'unknown-saga', none);
        const r = await s.forget(req.params.id);
        if (r === 'not_found')
          return adminProblem(reply, 404, 'unknown-saga', `no saga ${req.params.id} in the log`);
        if (r === 'conflict')
          return adminProblem(
            reply,
            409,
            'saga-conflict',
            `saga ${req.params.id} is being driven now (here or by another replica); forget it once it is parked or finished`,
          );
        return { forgotten: req.params.id };
      },
    );
  };
}
