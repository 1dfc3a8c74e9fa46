/**
 * The innermost handler: one attempt to one endpoint of the route's upstream.
 */
import { Attempt, type AttemptError } from '../proxy/attempt.js';
import { upstreamRequestHeaders } from '../proxy/headers.js';
import type { Clock, Handler, RequestContext } from './types.js';

/** Header that tells the upstream how long breakwater will wait for this attempt (ms). */
export const TIMEOUT_HEADER = 'x-breakwater-timeout-ms';

export function upstreamCall(clock: Clock): Handler {
  return async (ctx: RequestContext) => {
    // Each attempt gets its own timeout, cut short by what is left of the request deadline.
    const timeout = Math.max(1, Math.min(ctx.route.timeouts.attempt, Math.floor(ctx.deadline - clock.now())));
    const { req, upstream, route } = ctx;
    const endpoint = upstream.pick(ctx.tried);
    ctx.tried = endpoint;
    ctx.attempts++;
    const headers = upstreamRequestHeaders(req, {
      host: upstream.hostFor(endpoint, req.headers.host),
      requestId: ctx.requestId,
      proto: 'http',
      remoteAddress: req.socket.remoteAddress,
    });
    headers.push(TIMEOUT_HEADER, String(timeout));
    endpoint.inflight++;
    const attempt = new Attempt({
      dispatcher: endpoint.pool,
      method: ctx.method,
      path: ctx.path,
      headers,
      body: ctx.body,
      timeout,
      bodyTimeout: route.timeouts.body,
      onSettled: () => {
        endpoint.inflight--;
      },
    });
    ctx.current = attempt;
    attempt.start();
    try {
      const head = await attempt.head;
      return { type: 'response', attempt, head, endpoint };
    } catch (err) {
      return { type: 'failure', error: err as AttemptError, endpoint };
    }
  };
}
