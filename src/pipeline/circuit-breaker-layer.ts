/**
 * The breaker's place in the pipeline: checked before every attempt (inside the retry loop), and
 * told every attempt's result. An open breaker answers 503 `circuit-open` with Retry-After set to
 * the time until it lets a probe through.
 */

import type { Clock } from '../clock.js';
import { type Problem, problem } from '../listener/problem.js';
import type { CircuitBreaker } from './circuit-breaker.js';
import { classifyOutcome, compileOutcomes, judgedAtTrailers, trailersVerdict } from './outcome.js';
import type { CallResponse, Layer } from './types.js';

/**
 * The 503 `circuit-open` answer, Retry-After set to the time until a probe is let through; none
 * when an operator forced the breaker open (no probe will come; nobody knows when it reopens).
 */
export function breakerOpenProblem(breaker: CircuitBreaker, upstream: string, requestId: string): Problem {
  const detail = `the circuit breaker of upstream ${upstream} is ${breaker.state}`;
  if (breaker.state === 'forced_open') return problem('circuit-open', detail, { upstream, requestId });
  const seconds = Math.max(1, Math.ceil(breaker.retryAfterMs() / 1000));
  return problem('circuit-open', detail, { upstream, requestId, headers: ['retry-after', String(seconds)] });
}

/** Works over any call (an HTTP attempt, a WebSocket handshake): one permit per attempt. */
export function circuitBreakerLayer<R extends CallResponse>(
  breaker: CircuitBreaker,
  upstream: string,
  clock: Clock,
  onRejected: () => void,
): Layer<R> {
  // failure_on compiled once: a call looks its status or cause up.
  const failureOn = compileOutcomes(breaker.policy.failureOn);
  return (next) => async (ctx) => {
    const permit = breaker.tryAcquire();
    if (!permit) {
      onRejected();
      return { type: 'problem', problem: breakerOpenProblem(breaker, upstream, ctx.requestId) };
    }
    const t0 = clock.now();
    const outcome = await next(ctx);
    // A gRPC call is judged by the grpc-status in its trailers, when the stream is over; a half-open
    // probe is judged as its response starts (a long stream would hold the probe slot for its life).
    if (!permit.probe && outcome.type === 'response' && judgedAtTrailers(ctx.grpc, outcome)) {
      const elapsed = clock.now() - t0;
      trailersVerdict(outcome).then((c) => {
        const result =
          c === undefined
            ? 'ignored'
            : failureOn.match(c.status, undefined) !== undefined
              ? 'failure'
              : 'success';
        breaker.onResult(permit, result, elapsed);
      });
      return outcome;
    }
    const c = classifyOutcome(outcome);
    const result =
      c.cause === 'aborted' || ctx.clientGone || outcome.type === 'problem'
        ? 'ignored'
        : failureOn.match(c.status, c.cause) !== undefined
          ? 'failure'
          : 'success';
    breaker.onResult(permit, result, clock.now() - t0);
    return outcome;
  };
}
