/**
 * Who may call the admin listener's mutating endpoints: a client on loopback (the pod itself, an
 * operator with kubectl port-forward... which arrives on loopback too), or one that carries the
 * bearer token from the environment variable named by `admin.token_env`. Reads are open to whoever
 * can reach the admin port: bind it to loopback (the default) or restrict it by network policy.
 */
import { timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { adminProblem } from './problem.js';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && LOOPBACK.test(address);
}

function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

/** A fastify preHandler that refuses mutating calls from elsewhere without the token. */
export function requireOperator(token: string | undefined) {
  return async (request: FastifyRequest, reply: FastifyReply) => {
    if (isLoopback(request.socket.remoteAddress)) return;
    if (token && tokenMatches(request.headers.authorization, token)) return;
    return adminProblem(
      reply,
      403,
      'forbidden',
      token
        ? 'send Authorization: Bearer <token> (the value of admin.token_env)'
        : 'this call is allowed from loopback only (no admin token is configured)',
    );
  };
}
