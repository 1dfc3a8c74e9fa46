/**
 * The innermost handler: one attempt to one endpoint of the route's upstream.
 */

import { Attempt, type AttemptError } from '../attempt/attempt.js';
import { upstreamRequestHeaders } from '../attempt/headers.js';
import type { Clock } from '../clock.js';
import { problem } from '../listener/problem.js';
import { FileBody, replayable } from '../listener/request-body.js';
import type { Endpoint } from '../upstream/upstream.js';
import { classifyOutcome, judgedAtTrailers, judgedStatus, statusLabel, trailersVerdict } from './outcome.js';
import type { Handler, HttpResponse, Outcome, RequestContext } from './types.js';

/** Header that tells the upstream how long breakwater will wait for this attempt (ms). */
export const TIMEOUT_HEADER = 'x-breakwater-timeout-ms';

/** `onOutcome` hears every attempt's outcome label (metrics), with no promise of its own. */
export function upstreamCall(clock: Clock, onOutcome?: (label: string) => void): Handler {
  const noEndpoint = (ctx: RequestContext): Promise<Outcome> => {
    onOutcome?.('no_endpoint');
    return Promise.resolve({
      type: 'problem',
      problem: problem('no-healthy-endpoint', `no endpoint of upstream ${ctx.upstream.name} is healthy`, {
        upstream: ctx.upstream.name,
        requestId: ctx.requestId,
      }),
    });
  };

  /**
   * An attempt that streams at the client's pace (an unbuffered upload or response) first takes a
   * place in the upstream's streaming share; with none free it waits, within its attempt timeout,
   * for one to be given back, then gets 503 `streaming-limit`.
   */
  const streamingCall = async (ctx: RequestContext, timeout: number, cut: boolean): Promise<Outcome> => {
    const until = clock.now() + timeout;
    const share = ctx.upstream.share;
    for (;;) {
      const picked = ctx.upstream.pickStreaming(ctx.tried);
      if (picked === undefined) return noEndpoint(ctx);
      const left = Math.floor(until - clock.now());
      if (picked !== 'full') return send(ctx, picked, Math.max(1, left), true, cut);
      if (left <= 0 || ctx.clientGone || ctx.expired) break;
      if (!(await share.wait(left))) break;
    }
    onOutcome?.('streaming_limit');
    const detail = `every one of upstream ${ctx.upstream.name}'s ${share.limit} places per endpoint for streaming requests (unbuffered uploads and responses) is in use`;
    return {
      type: 'problem',
      problem: problem('streaming-limit', detail, {
        upstream: ctx.upstream.name,
        requestId: ctx.requestId,
        headers: ['retry-after', '1'],
      }),
    };
  };

  const send = (
    ctx: RequestContext,
    endpoint: Endpoint,
    timeout: number,
    streaming: boolean,
    cut: boolean,
  ): Promise<Outcome> => {
    const { req, upstream, route } = ctx;
    ctx.tried = endpoint;
    const sentAt = clock.now();
    ctx.attempts++;
    const headers = upstreamRequestHeaders(req, {
      host: upstream.hostFor(endpoint, req.headers.host),
      requestId: ctx.requestId,
      proto: 'http',
      remoteAddress: ctx.peer,
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
    let body = ctx.body;
    if (body instanceof FileBody) {
      // Read again from the temporary file for each attempt; a chunked body now has a length.
      if (req.headers['content-length'] === undefined) headers.push('content-length', String(body.size));
      body = body.stream();
    }
    endpoint.inflight++;
    const attempt = new Attempt({
      dispatcher: endpoint.pool,
      method: ctx.method,
      path: ctx.path,
      headers,
      body,
      timeout,
      clock,
      bodyTimeout: route.timeouts.body,
      servername: endpoint.servername,
      onSettled: streaming
        ? () => {
            endpoint.inflight--;
            upstream.share.release(endpoint);
          }
        : () => {
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
        const response: HttpResponse = { type: 'response', attempt, head, endpoint };
        if (judgedAtTrailers(ctx.grpc, response)) {
          // The call's status comes in the trailers: outlier detection hears it then.
          trailersVerdict(response).then((c) => {
            if (c !== undefined) upstream.recordResult(endpoint, (c.status as number) >= 500, latency);
          });
          onOutcome?.(statusLabel(head.status));
        } else {
          const status = judgedStatus(head);
          onOutcome?.(statusLabel(status));
          upstream.recordResult(endpoint, status >= 500, latency);
        }
        return response;
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

  return (ctx: RequestContext) => {
    // Each attempt gets its own timeout, cut short by what is left of the request deadline. A cut
    // attempt that times out ends at the deadline: that is the request's timeout (request-timeout).
    const left = Math.floor(ctx.deadline - clock.now());
    const cut = left <= ctx.route.timeouts.attempt;
    const timeout = Math.max(1, cut ? left : ctx.route.timeouts.attempt);
    if (ctx.unbufferedResponse || !replayable(ctx.body)) return streamingCall(ctx, timeout, cut);
    const endpoint = ctx.upstream.pick(ctx.tried);
    if (endpoint === undefined) return noEndpoint(ctx);
    return send(ctx, endpoint, timeout, false, cut);
  };
}
