/**
 * The whole-request deadline (`request_timeout`): retries, waits and attempts all fit inside it.
 * When it passes, the attempt in flight is aborted and the client gets 504 `request-timeout`;
 * anything the inner layers produce later is discarded. Inner layers read `ctx.deadline` to cap
 * each attempt and to skip retries that could not finish in time.
 */

import { AttemptError } from '../attempt/attempt.js';
import type { Clock } from '../clock.js';
import { problem } from '../listener/problem.js';
import type { Layer, Outcome, RequestContext } from './types.js';

function expired(ctx: RequestContext, requestTimeout: number, routeTimeout: number): Outcome {
  return {
    type: 'problem',
    problem: problem(
      'request-timeout',
      requestTimeout === routeTimeout
        ? `the request did not complete within request_timeout (${requestTimeout} ms)`
        : `the call did not complete within its grpc-timeout (${requestTimeout} ms)`,
      { upstream: ctx.upstream.name, requestId: ctx.requestId },
    ),
  };
}

export function deadlineLayer(routeTimeout: number, clock: Clock): Layer {
  return (next) => (ctx) => {
    // A gRPC call's own grpc-timeout shortens the deadline, never lengthens it.
    const requestTimeout = Math.min(ctx.grpcTimeout, routeTimeout);
    ctx.deadline = clock.now() + requestTimeout;
    return new Promise<Outcome>((resolve, reject) => {
      let settled = false;
      const timer = clock.setTimeout(() => {
        if (settled) return;
        settled = true;
        ctx.expired = true;
        ctx.current?.abort(
          new AttemptError('timeout', `the request deadline (${requestTimeout} ms) passed`, true),
        );
        resolve(expired(ctx, requestTimeout, routeTimeout));
      }, requestTimeout);
      next(ctx).then(
        (outcome) => {
          if (settled) {
            if (outcome.type === 'response') outcome.attempt.discard();
            return;
          }
          settled = true;
          clock.clearTimeout(timer);
          // An attempt whose timeout was what was left of the deadline timed out (upstream-call
          // marks it expired): the deadline passed, whichever of the two timers fired first.
          resolve(
            ctx.expired && outcome.type === 'failure' ? expired(ctx, requestTimeout, routeTimeout) : outcome,
          );
        },
        (err: unknown) => {
          settled = true;
          clock.clearTimeout(timer);
          reject(err);
        },
      );
    });
  };
}
