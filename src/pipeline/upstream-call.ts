/**
 * The innermost handler: one attempt to one endpoint of the route's upstream.
 */
import { Attempt, type AttemptError } from '../proxy/attempt.js';
import { upstreamRequestHeaders } from '../proxy/headers.js';
import type { Handler, RequestContext } from './types.js';

export function upstreamCall(): Handler {
  return async (ctx: RequestContext) => {
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
    endpoint.inflight++;
    const attempt = new Attempt({
      dispatcher: endpoint.pool,
      method: ctx.method,
      path: ctx.path,
      headers,
      body: ctx.body,
      timeout: route.timeouts.attempt,
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
