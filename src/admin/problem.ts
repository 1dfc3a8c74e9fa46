/**
 * The one shape of every admin error: `application/problem+json` (RFC 9457) with a type
 * `urn:breakwater:problem:admin-<kind>`, a title, the status and a detail, plus extension members
 * where a call has more to say (a rejected reload's problems). fastify's own errors (no route,
 * a body too large) are answered in the same shape by the handlers in admin.ts.
 */
import type { FastifyReply } from 'fastify';

export type AdminProblemKind =
  | 'bad-request'
  | 'forbidden'
  | 'not-found'
  | 'unknown-upstream'
  | 'no-circuit-breaker'
  | 'payload-too-large'
  | 'config-invalid'
  | 'unknown-saga'
  | 'saga-conflict'
  | 'conflict'
  | 'store-unavailable'
  | 'internal-error';

const TITLES: Record<AdminProblemKind, string> = {
  'bad-request': 'The admin call is malformed',
  forbidden: 'Admin changes need loopback or the admin token',
  'not-found': 'No such admin endpoint',
  'unknown-upstream': 'No upstream of that name',
  'no-circuit-breaker': 'The upstream has no circuit breaker',
  'payload-too-large': 'The request body is too large for an admin call',
  'config-invalid': 'The config file is invalid; the last good config keeps serving',
  'unknown-saga': 'No saga of that id',
  'saga-conflict': 'The saga is not in a state that allows this',
  conflict: 'The item is not in a state that allows this',
  'store-unavailable': 'The shared store (Redis) did not answer; nothing was changed',
  'internal-error': 'The admin call failed',
};

export function adminProblem(
  reply: FastifyReply,
  status: number,
  kind: AdminProblemKind,
  detail: string,
  extra: Record<string, unknown> = {},
): FastifyReply {
  reply.code(status).type('application/problem+json').header('cache-control', 'no-store');
  return reply.send({
    type: `urn:breakwater:problem:admin-${kind}`,
    title: TITLES[kind],
    status,
    detail,
    ...extra,
  });
}

/** The problem kind of an error status fastify raised itself. */
export function kindOfStatus(status: number): AdminProblemKind {
  if (status === 404 || status === 405) return 'not-found';
  if (status === 413) return 'payload-too-large';
  if (status >= 400 && status < 500) return 'bad-request';
  return 'internal-error';
}

/**
 * The body of a write call, read as JSON whatever its content type (curl's `-d` sends
 * `application/x-www-form-urlencoded`). An empty body is `undefined`.
 */
export function jsonBody(body: unknown): { ok: true; value: unknown } | { ok: false; detail: string } {
  if (body === undefined || body === null) return { ok: true, value: undefined };
  const text = typeof body === 'string' ? body : Buffer.isBuffer(body) ? body.toString('utf8') : '';
  if (text.trim() === '') return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (err) {
    return {
      ok: false,
      detail: `the body is not JSON (${(err as Error).message}); send e.g. {"mode": "open"}`,
    };
  }
}
