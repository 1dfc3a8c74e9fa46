/**
 * A call breakwater makes itself, with no client connection: a deferred delivery replayed later, a
 * saga's step or compensation. It runs through an upstream's pipeline like a client's request
 * (rate limiter, bulkhead, deadline, retries, breaker, one attempt per endpoint) and its answer is
 * read whole into memory instead of being relayed.
 *
 * The pipeline is the upstream's fallback-free one (`pipelineOf`): a call that must reach the
 * upstream is never answered by a fallback.
 */

import type { AttemptCause } from '../attempt/attempt.js';
import { failureProblem, type Problem, problem } from '../listener/problem.js';
import { callRequest, newContext, runFinishers, type UpstreamPipeline } from './types.js';

/** What to send. */
export interface InternalRequest {
  readonly method: string;
  /** Path and query, as sent to the upstream. */
  readonly path: string;
  /** Flat [name, value, ...] list; hop-by-hop headers are dropped as for any request. */
  readonly headers: readonly string[];
  readonly body: Buffer | null;
  /** x-request-id of the call (logs on both sides). */
  readonly requestId: string;
  /** The original client's address, if the call stands for one (X-Forwarded-For). */
  readonly clientAddress?: string | undefined;
}

export type InternalResult =
  | {
      readonly type: 'response';
      readonly status: number;
      /** Flat [name, value, ...] list as the upstream sent it. */
      readonly headers: readonly string[];
      readonly body: Buffer;
      readonly attempts: number;
    }
  | {
      /** No answer from the upstream: the problem a client would have got, and why. */
      readonly type: 'failure';
      readonly problem: Problem;
      /** The failed attempt's cause, or 'refused' when a policy refused (limiter, bulkhead, breaker). */
      readonly cause: AttemptCause | 'refused';
      /** Whether the upstream may have processed it (a timeout after the body was sent). */
      readonly maybeProcessed: boolean;
      readonly attempts: number;
    };

/** Runs `r` through `p`; never rejects. `maxResponseBytes` bounds the answer read into memory. */
export async function internalCall(
  p: UpstreamPipeline,
  r: InternalRequest,
  maxResponseBytes: number,
  now: () => number,
): Promise<InternalResult> {
  const ctx = newContext({
    req: callRequest(withLength(r)),
    peer: r.clientAddress,
    res: undefined,
    route: p.route,
    upstream: p.upstream,
    requestId: r.requestId,
    method: r.method,
    path: r.path,
    start: now(),
    body: r.body,
    grpc: false,
    grpcTimeout: Number.POSITIVE_INFINITY,
    unbufferedResponse: false,
  });
  const upstream = p.upstream.name;
  try {
    const outcome = await p.handler(ctx);
    switch (outcome.type) {
      case 'response': {
        const read = await outcome.attempt.collect(maxResponseBytes);
        if (!read.complete) {
          const err = read.error;
          return {
            type: 'failure',
            problem: err
              ? failureProblem(err, upstream, r.requestId)
              : problem('upstream-reset', 'the response body was cut off', {
                  upstream,
                  requestId: r.requestId,
                }),
            cause: err?.kind ?? 'reset',
            maybeProcessed: true,
            attempts: ctx.attempts,
          };
        }
        return {
          type: 'response',
          status: outcome.head.status,
          headers: outcome.head.rawHeaders.map(String),
          body: read.body,
          attempts: ctx.attempts,
        };
      }
      case 'local':
        return {
          type: 'response',
          status: outcome.status,
          headers: outcome.headers,
          body: outcome.body,
          attempts: ctx.attempts,
        };
      case 'failure':
        return {
          type: 'failure',
          problem: failureProblem(outcome.error, upstream, r.requestId),
          cause: outcome.error.kind,
          maybeProcessed: ctx.maybeProcessed,
          attempts: ctx.attempts,
        };
      default:
        return {
          type: 'failure',
          problem: outcome.problem,
          cause: 'refused',
          maybeProcessed: ctx.maybeProcessed,
          attempts: ctx.attempts,
        };
    }
  } catch (err) {
    return {
      type: 'failure',
      problem: problem('upstream-bad-response', `internal error: ${(err as Error).message}`, {
        status: 500,
        upstream,
        requestId: r.requestId,
      }),
      cause: 'protocol',
      maybeProcessed: ctx.maybeProcessed,
      attempts: ctx.attempts,
    };
  } finally {
    runFinishers(ctx);
  }
}

/** The header list, with a Content-Length for a body that has none declared. */
function withLength(r: InternalRequest): readonly string[] {
  if (r.body === null) return r.headers;
  for (let i = 0; i < r.headers.length; i += 2) {
    const n = (r.headers[i] as string).toLowerCase();
    if (n === 'content-length' || n === 'transfer-encoding') return r.headers;
  }
  return [...r.headers, 'content-length', String(r.body.length)];
}
