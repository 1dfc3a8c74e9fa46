/**
 * Which failed attempts the retry layer sends again: the table of docs/configuration.md
 * ("Which requests are retried"), row by row, with a ManualClock, and a property over random
 * sequences of outcomes.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Attempt, AttemptError, type ResponseHead } from '../../src/attempt/attempt.js';
import {
  DEFAULTS,
  type IdempotencyPolicy,
  type RetryPolicy,
  type RouteModel,
} from '../../src/config/resolve.js';
import { RetryBudget, retryLayer } from '../../src/pipeline/retry.js';
import { callRequest, newContext, type Outcome, type RequestContext } from '../../src/pipeline/types.js';
import { ManualClock } from '../kit/clock.js';

/** How an attempt failed. `refused` and `refused-stream` certainly were not processed. */
type Failure = 'refused' | 'refused-stream' | '503' | 'timeout-after-send' | 'reset-after-send';
const FAILURES: readonly Failure[] = [
  'refused',
  'refused-stream',
  '503',
  'timeout-after-send',
  'reset-after-send',
];
const NOT_PROCESSED = new Set<Failure>(['refused', 'refused-stream']);

interface Case {
  readonly method: string;
  readonly key: boolean;
  /** The route has an idempotency block (methods POST, PATCH, its default). */
  readonly routeIdempotency: boolean;
  readonly honored: boolean;
  readonly retryNonIdempotent?: boolean;
  readonly methods?: readonly string[];
}

function outcomeOf(f: Failure | 'ok'): Outcome {
  if (f === 'ok' || f === '503') {
    const head: ResponseHead = { status: f === 'ok' ? 200 : 503, statusText: '', rawHeaders: [] };
    return {
      type: 'response',
      attempt: { discard: () => undefined } as unknown as Attempt,
      head,
      endpoint: {} as never,
    };
  }
  const error =
    f === 'refused'
      ? new AttemptError('connect-failure', 'refused', false, 'ECONNREFUSED')
      : f === 'refused-stream'
        ? new AttemptError('reset', 'refused stream', false, 'REFUSED_STREAM')
        : f === 'timeout-after-send'
          ? new AttemptError('timeout', 'no headers', true)
          : new AttemptError('reset', 'closed', true, 'ECONNRESET');
  return { type: 'failure', error, endpoint: undefined };
}

const ROUTE_IDEMPOTENCY = {
  methods: new Set(['POST', 'PATCH']),
} as unknown as IdempotencyPolicy;

function contextOf(c: Case): RequestContext {
  const headers: Record<string, string> = c.key ? { 'idempotency-key': 'k-42' } : {};
  return newContext({
    req: callRequest(Object.entries(headers).flat()),
    peer: '127.0.0.1',
    res: undefined,
    route: {
      timeouts: { attempt: 1000, request: 60_000, connect: 1000, body: 1000 },
      idempotency: c.routeIdempotency ? ROUTE_IDEMPOTENCY : undefined,
    } as unknown as RouteModel,
    upstream: {
      name: 'payments',
      model: { idempotencyKeys: c.honored ? 'honored' : 'ignored' },
    } as unknown as RequestContext['upstream'],
    requestId: 'r1',
    method: c.method,
    path: '/charges',
    start: 0,
    body: null,
    grpc: false,
    grpcTimeout: Number.POSITIVE_INFINITY,
    unbufferedResponse: false,
  });
}

function policyOf(c: Case, maxAttempts = 2): RetryPolicy {
  return {
    ...DEFAULTS.retry,
    maxAttempts,
    initialWait: 50,
    jitter: 'none',
    retryOn: ['connect-failure', 'reset', 'timeout', '5xx'],
    retryNonIdempotent: c.retryNonIdempotent ?? false,
    methods: c.methods ? new Set(c.methods) : undefined,
  };
}

/** Runs one request whose attempts end as `script` says (then 200); returns the attempts made. */
async function attemptsFor(c: Case, script: readonly Failure[], maxAttempts = 2): Promise<number> {
  const clock = new ManualClock();
  const policy = policyOf(c, maxAttempts);
  let calls = 0;
  const handler = retryLayer(
    policy,
    new RetryBudget({ ratio: 1, minPerSecond: 1000, window: 10_000 }, clock),
    clock,
    () => 0,
    { retried: () => undefined, skipped: () => undefined },
  )(async () => outcomeOf(script[calls++] ?? 'ok'));
  const done = handler(contextOf(c));
  let settled = false;
  void done.then(() => {
    settled = true;
  });
  // Step the clock through the waits (50 ms, 100 ms, ...) until the request is over.
  for (let i = 0; i < 100 && !settled; i++) {
    await new Promise((r) => setImmediate(r));
    clock.advance(1000);
  }
  await done;
  return calls;
}

const IDEMPOTENT = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'];

/** The docs table, written out on its own: whether `failure` is retried for `c`. */
function retriedPerTable(c: Case, failure: Failure): boolean {
  if (NOT_PROCESSED.has(failure)) return true;
  if (c.methods !== undefined && !c.methods.includes(c.method)) return false;
  if (c.key && c.honored) return true;
  const covered = c.routeIdempotency && (c.method === 'POST' || c.method === 'PATCH');
  if (covered) return false;
  return IDEMPOTENT.includes(c.method) || (c.retryNonIdempotent ?? false);
}

describe('which failed attempts are retried', () => {
  // [method, key, route idempotency, upstream honours keys, failure, retried]
  const rows: [string, boolean, boolean, boolean, Failure, boolean][] = [
    // Nothing was processed: every request goes again.
    ['POST', false, false, false, 'refused', true],
    ['POST', true, true, false, 'refused', true],
    ['PATCH', true, true, false, 'refused-stream', true],
    // Idempotent methods: retried on every retry_on outcome.
    ['GET', false, false, false, '503', true],
    ['PUT', false, false, false, 'timeout-after-send', true],
    ['DELETE', false, false, false, 'reset-after-send', true],
    ['GET', false, true, false, '503', true], // the route's idempotency covers POST and PATCH only
    // POST without a key: never after it may have been processed.
    ['POST', false, false, false, '503', false],
    ['POST', false, false, false, 'timeout-after-send', false],
    ['POST', false, false, true, 'reset-after-send', false],
    // A key alone is no promise: the upstream must declare it deduplicates.
    ['POST', true, false, false, '503', false],
    ['POST', true, false, true, '503', true],
    ['PATCH', true, false, true, 'timeout-after-send', true],
    // The issue-22 payment: route idempotency, a key, an upstream that does not dedupe.
    ['POST', true, true, false, '503', false],
    ['POST', true, true, false, 'timeout-after-send', false],
    ['POST', true, true, false, 'reset-after-send', false],
    // ... and with the upstream's declaration.
    ['POST', true, true, true, '503', true],
    ['POST', true, true, true, 'timeout-after-send', true],
    // The declaration needs a key.
    ['POST', false, true, true, '503', false],
  ];
  it.each(rows)(
    '%s key=%s route-idempotency=%s honored=%s, %s -> retried %s',
    async (method, key, routeIdempotency, honored, failure, retried) => {
      const c = { method, key, routeIdempotency, honored };
      expect(retriedPerTable(c, failure)).toBe(retried);
      expect(await attemptsFor(c, [failure])).toBe(retried ? 2 : 1);
    },
  );

  it('retry_non_idempotent repeats a POST, but not on a route with idempotency', async () => {
    const base = { method: 'POST', key: false, honored: false, retryNonIdempotent: true };
    expect(await attemptsFor({ ...base, routeIdempotency: false }, ['503'])).toBe(2);
    expect(await attemptsFor({ ...base, routeIdempotency: true }, ['503'])).toBe(1);
    expect(await attemptsFor({ ...base, routeIdempotency: true }, ['refused'])).toBe(2);
  });

  it('retry.methods [GET]: a 503 is retried for GET only; a refused connection for any method', async () => {
    const c = (method: string) => ({
      method,
      key: false,
      routeIdempotency: false,
      honored: false,
      methods: ['GET'],
    });
    expect(await attemptsFor(c('GET'), ['503'])).toBe(2);
    expect(await attemptsFor(c('HEAD'), ['503'])).toBe(1);
    expect(await attemptsFor(c('PUT'), ['503'])).toBe(1);
    expect(await attemptsFor(c('PUT'), ['refused'])).toBe(2);
    // A keyed POST to an upstream that honours keys is not listed either.
    expect(await attemptsFor({ ...c('POST'), key: true, honored: true }, ['503'])).toBe(1);
  });

  it('a request that may not be sent twice goes again only after attempts that were not processed', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          method: fc.constantFrom('GET', 'HEAD', 'PUT', 'DELETE', 'POST', 'PATCH'),
          key: fc.boolean(),
          routeIdempotency: fc.boolean(),
          honored: fc.boolean(),
          retryNonIdempotent: fc.boolean(),
          methods: fc.option(fc.subarray(['GET', 'HEAD', 'PUT', 'POST']), { nil: undefined }),
        }),
        fc.array(fc.constantFrom(...FAILURES), { minLength: 1, maxLength: 4 }),
        async (c, script) => {
          const made = await attemptsFor(c, script, 5);
          // Attempt n+1 is made exactly when attempt n failed in a way the table retries.
          let expected = 1;
          for (const f of script) {
            if (!retriedPerTable(c, f)) break;
            expected++;
          }
          expect(made).toBe(expected);
        },
      ),
      { numRuns: 300 },
    );
  });
});
