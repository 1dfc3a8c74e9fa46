/**
 * The innermost handler: one attempt to one endpoint of the route's upstream.
 */
import { Attempt, type AttemptError } from '../proxy/attempt.js';
import { peerAddress } from '../proxy/client-address.js';
import { grpcHttpEquivalent } from '../proxy/grpc.js';
import { upstreamRequestHeaders } from '../proxy/headers.js';
import { problem } from '../proxy/problem.js';
import { classifyOutcome, judgedStatus, statusLabel } from './outcome.js';
import type { Clock, Handler, Outcome, RequestContext } from './types.js';

/** Header that tells the upstream how long breakwater will wait for this attempt (ms). */
export const TIMEOUT_HEADER = 'x-breakwater-timeout-ms';

/** `onOutcome` hears every attempt's outcome label (metrics), with no promise of its own. */
export function upstreamCall(clock: Clock, onOutcome?: (label: string) => void): Handler {
  return (ctx: RequestContext) => {
    // Each attempt gets its own timeout, cut short by what is left of the request deadline. A cut
    // attempt that times out ends at the deadline: that is the request's timeout (request-timeout).
    const left = Math.floor(ctx.deadline - clock.now());
    const cut = left <= ctx.route.timeouts.attempt;
    const timeout = Math.max(1, cut ? left : ctx.route.timeouts.attempt);
    const { req, upstream, route } = ctx;
    const endpoint = upstream.pick(ctx.tried);
    if (endpoint === undefined) {
      onOutcome?.('no_endpoint');
      return Promise.resolve({
        type: 'problem',
        problem: problem('no-healthy-endpoint', `no endpoint of upstream ${upstream.name} is healthy`, {
          upstream: upstream.name,
          requestId: ctx.requestId,
        }),
      });
    }
    ctx.tried = endpoint;
    const sentAt = clock.now();
    ctx.attempts++;
    const headers = upstreamRequestHeaders(req, {
      host: upstream.hostFor(endpoint, req.headers.host),
      requestId: ctx.requestId,
      proto: 'http',
      remoteAddress: peerAddress(req),
      trust: route.trust,
    });
    headers.push(TIMEOUT_HEADER, String(timeout));
    // gRPC: `te: trailers` is how gRPC says it reads trailers (hop-by-hop, so not passed on by
    // itself); a call with a deadline tells the upstream the time left of it as grpc-timeout.
    if (ctx.grpc) {
      headers.push('te', 'trailers');
      if (ctx.grpcTimeout < Number.POSITIVE_INFINITY)
        headers.push('grpc-timeout', `${Math.max(1, Math.floor(ctx.deadline - clock.now()))}m`);
    }
    endpoint.inflight++;
    const attempt = new Attempt({
      dispatcher: endpoint.pool,
      method: ctx.method,
      path: ctx.path,
      headers,
      body: ctx.body,
      timeout,
      bodyTimeout: route.timeouts.body,
      servername: endpoint.servername,
      onSettled: () => {
        endpoint.inflight--;
      },
      grpc: ctx.grpc,
      h2: upstream.model.protocol !== 'http1',
    });
    ctx.current = attempt;
    const processedBefore = ctx.maybeProcessed;
    ctx.maybeProcessed = true;
    attempt.start();
    return attempt.head.then(
      (head): Outcome => {
        const latency = clock.now() - sentAt;
        if (ctx.grpc && head.grpcStatus === undefined && head.status === 200) {
          // The call's status comes in the trailers: outlier detection hears it then.
          attempt.grpcEnd().then((code) => {
            if (code !== undefined) upstream.recordResult(endpoint, grpcHttpEquivalent(code) >= 500, latency);
          });
          onOutcome?.(statusLabel(head.status));
        } else {
          const status = judgedStatus(head);
          onOutcome?.(statusLabel(status));
          upstream.recordResult(endpoint, status >= 500, latency);
        }
        return { type: 'response', attempt, head, endpoint };
      },
      (err: AttemptError): Outcome => {
        if (cut && err.kind === 'timeout' && !ctx.clientGone) ctx.expired = true;
        const outcome: Outcome = { type: 'failure', error: err, endpoint };
        if (!err.mayHaveReachedUpstream) ctx.maybeProcessed = processedBefore;
        const c = classifyOutcome(outcome);
        onOutcome?.(c.label);
        if (c.cause !== 'aborted') ctx.upstreamError = err.code ?? err.kind;
        if (c.cause !== 'aborted' && !ctx.clientGone) upstream.recordResult(endpoint, true, undefined);
        return outcome;
      },
    );
  };
}
