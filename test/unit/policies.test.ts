/**
 * Policies in isolation, with a ManualClock: time is stepped, never slept.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Attempt, ResponseHead } from '../../src/attempt/attempt.js';
import { AttemptError } from '../../src/attempt/attempt.js';
import { DEFAULTS, type RetryPolicy, type RouteModel } from '../../src/config/resolve.js';
import { Bulkhead } from '../../src/pipeline/bulkhead.js';
import { deadlineLayer } from '../../src/pipeline/deadline.js';
import { RateLimiter } from '../../src/pipeline/rate-limiter.js';
import { backoff, RetryBudget, retryAfterMs, retryLayer } from '../../src/pipeline/retry.js';
import { callRequest, newContext, type Outcome, type RequestContext } from '../../src/pipeline/types.js';
import { ManualClock } from '../kit/clock.js';

function ctx(method = 'GET', headers: Record<string, string> = {}): RequestContext {
  // An internal call's context: no client socket, no response to write.
  return newContext({
    req: callRequest(Object.entries(headers).flat()),
    peer: '10.0.0.1',
    res: undefined,
    route: {
      timeouts: { attempt: 1000, request: 10_000, connect: 1000, body: 1000 },
    } as unknown as RouteModel,
    upstream: { name: 'app', model: { idempotencyKeys: 'ignored' } } as RequestContext['upstream'],
    requestId: 'r1',
    method,
    path: '/',
    start: 0,
    body: null,
    grpc: false,
    grpcTimeout: Number.POSITIVE_INFINITY,
    unbufferedResponse: false,
  });
}

function response(
  status: number,
  headers: Record<string, string> = {},
): Outcome & { discarded: () => boolean } {
  let discarded = false;
  const rawHeaders = Object.entries(headers).flatMap(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
  const head: ResponseHead = { status, statusText: '', rawHeaders };
  const attempt = {
    discard: () => {
      discarded = true;
    },
  } as unknown as Attempt;
  return { type: 'response', attempt, head, endpoint: {} as never, discarded: () => discarded };
}

const NO_LIMITER_EVENTS = { rejected: () => undefined, delayed: () => undefined };

const flush = () => new Promise((r) => setImmediate(r));

describe('backoff and Retry-After', () => {
  const policy: RetryPolicy = {
    ...DEFAULTS.retry,
    initialWait: 100,
    maxWait: 1000,
    multiplier: 2,
    jitter: 'none',
  };
  it('grows exponentially and is capped by max_wait', () => {
    expect([0, 1, 2, 3, 4, 5].map((n) => backoff(policy, n, () => 0.5))).toEqual([
      100, 200, 400, 800, 1000, 1000,
    ]);
  });
  it('full jitter draws in [0, wait), equal jitter in [wait/2, wait]', () => {
    expect(backoff({ ...policy, jitter: 'full' }, 2, () => 0)).toBe(0);
    expect(backoff({ ...policy, jitter: 'full' }, 2, () => 0.999)).toBe(399);
    expect(backoff({ ...policy, jitter: 'equal' }, 2, () => 0)).toBe(200);
    expect(backoff({ ...policy, jitter: 'equal' }, 2, () => 0.999)).toBe(399);
    // Every draw of Math.random's range [0, 1), at every retry, for any policy: within the bounds,
    // never past the wait (nor max_wait). Equal jitter may reach the whole wait when a draw within
    // 2^-52 of 1 rounds up (base/2 + 0.99..98 * base/2 is base in floating point).
    fc.assert(
      fc.property(
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        fc.integer({ min: 0, max: 12 }),
        fc.integer({ min: 1, max: 5000 }),
        fc.integer({ min: 1, max: 60_000 }),
        fc.constantFrom(1.5, 2, 3),
        (r, retry, initialWait, maxWait, multiplier) => {
          const p = { ...policy, initialWait, maxWait, multiplier };
          const wait = Math.min(maxWait, initialWait * multiplier ** retry);
          const full = backoff({ ...p, jitter: 'full' }, retry, () => r);
          const equal = backoff({ ...p, jitter: 'equal' }, retry, () => r);
          expect(full).toBeGreaterThanOrEqual(0);
          expect(full).toBeLessThan(wait);
          expect(equal).toBeGreaterThanOrEqual(Math.floor(wait / 2));
          expect(equal).toBeLessThanOrEqual(wait);
        },
      ),
    );
  });
  it('reads Retry-After as seconds or as an HTTP date', () => {
    const wall = Date.parse('Fri, 27 Nov 2026 10:00:00 GMT');
    expect(retryAfterMs([Buffer.from('Retry-After'), Buffer.from('3')], wall)).toBe(3000);
    expect(
      retryAfterMs([Buffer.from('retry-after'), Buffer.from('Fri, 27 Nov 2026 10:00:05 GMT')], wall),
    ).toBe(5000);
    expect(
      retryAfterMs([Buffer.from('retry-after'), Buffer.from('Fri, 27 Nov 2026 09:00:00 GMT')], wall),
    ).toBe(0);
    expect(retryAfterMs([Buffer.from('x-other'), Buffer.from('3')], wall)).toBeUndefined();
  });
});

describe('retry budget', () => {
  it('allows ratio x requests over the sliding window, plus min_per_second in any second', () => {
    const clock = new ManualClock();
    const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 2, window: 10_000 }, clock);
    const take = (n: number) => {
      let granted = 0;
      for (let i = 0; i < n; i++) if (budget.tryRetry()) granted++;
      return granted;
    };
    expect(take(30)).toBe(2); // no requests yet: only the per-second minimum
    clock.advance(1000);
    expect(take(30)).toBe(2); // a new second, two more
    for (let i = 0; i < 100; i++) budget.recordRequest();
    expect(take(30)).toBe(16); // 20% of 100 = 20 over the window, 4 already taken
    clock.advance(11_000); // the window slid past everything
    expect(take(30)).toBe(2);
  });
});

describe('retry layer', () => {
  const events = () => {
    const log: string[] = [];
    return {
      log,
      events: {
        retried: (r: string) => log.push(`retry:${r}`),
        skipped: (r: string) => log.push(`skip:${r}`),
      },
    };
  };
  const policy: RetryPolicy = { ...DEFAULTS.retry, initialWait: 100, jitter: 'none' };

  it('retries 5xx with the planned waits and returns the first success', async () => {
    const clock = new ManualClock();
    const { log, events: ev } = events();
    const outcomes = [response(500), response(503), response(200)];
    let calls = 0;
    const handler = retryLayer(
      policy,
      new RetryBudget(policy.budget, clock),
      clock,
      () => 0,
      ev,
    )(async () => outcomes[calls++] as Outcome);
    const p = handler(ctx());
    await flush();
    expect(calls).toBe(1);
    clock.advance(99);
    await flush();
    expect(calls).toBe(1);
    clock.advance(1);
    await flush();
    expect(calls).toBe(2);
    clock.advance(200);
    await flush();
    expect(calls).toBe(3);
    const out = await p;
    expect(out).toBe(outcomes[2]);
    expect(outcomes[0]?.discarded()).toBe(true);
    expect(log).toEqual(['retry:5xx', 'retry:5xx']);
  });

  it('does not retry a POST that may have been processed, but does after a connect failure', async () => {
    const clock = new ManualClock();
    const { log, events: ev } = events();
    const layer = retryLayer(policy, new RetryBudget(policy.budget, clock), clock, () => 0, ev);
    let calls = 0;
    const out = await layer(async () => {
      calls++;
      return response(500);
    })(ctx('POST'));
    expect(calls).toBe(1);
    expect(out.type).toBe('response');
    expect(log).toEqual(['skip:method']);

    calls = 0;
    const refused: Outcome = {
      type: 'failure',
      error: new AttemptError('connect-failure', 'refused', false),
      endpoint: undefined,
    };
    const p = layer(async () => (++calls === 1 ? refused : response(201)))(ctx('POST'));
    await flush();
    clock.advance(100);
    expect(((await p) as { head: ResponseHead }).head.status).toBe(201);
    expect(calls).toBe(2);
  });

  it('skips a retry whose wait and attempt timeout would not fit before the deadline', async () => {
    const clock = new ManualClock();
    const { log, events: ev } = events();
    const c = ctx();
    c.deadline = 1050; // attempt timeout 1000 + wait 100 > 1050
    const out = await retryLayer(
      policy,
      new RetryBudget(policy.budget, clock),
      clock,
      () => 0,
      ev,
    )(async () => response(502))(c);
    expect(out.type).toBe('response');
    expect(log).toEqual(['skip:deadline']);
  });
});

describe('deadline layer', () => {
  it('answers 504 request-timeout when the deadline passes and aborts the attempt in flight', async () => {
    const clock = new ManualClock();
    const c = ctx();
    let aborted = false;
    c.current = {
      abort: () => {
        aborted = true;
      },
    } as unknown as Attempt;
    const late = response(200);
    let finish!: (o: Outcome) => void;
    const p = deadlineLayer(
      500,
      clock,
    )(
      () =>
        new Promise<Outcome>((r) => {
          finish = r;
        }),
    )(c);
    expect(c.deadline).toBe(500);
    clock.advance(500);
    const out = await p;
    expect(out.type === 'problem' && out.problem.kind).toBe('request-timeout');
    expect(aborted).toBe(true);
    expect(c.expired).toBe(true);
    finish(late);
    await flush();
    expect(late.discarded()).toBe(true);
  });
});

describe('bulkhead', () => {
  it('admits max_concurrent, queues max_queue until queue_timeout, refuses the rest', async () => {
    const clock = new ManualClock();
    const b = new Bulkhead({ maxConcurrent: 2, maxQueue: 1, queueTimeout: 100 }, clock);
    expect(b.acquire()).toBe(true);
    expect(b.acquire()).toBe(true);
    const waiting = b.acquire() as Promise<boolean>;
    expect(b.acquire()).toBe(false);
    expect(b.queueLength).toBe(1);
    b.release();
    expect(await waiting).toBe(true);
    expect(b.inFlight).toBe(2);
    const timedOut = b.acquire() as Promise<boolean>;
    clock.advance(100);
    expect(await timedOut).toBe(false);
    expect(b.queueLength).toBe(0);
  });

  it('releases the slot when the response is over (finishers)', async () => {
    const clock = new ManualClock();
    const b = new Bulkhead({ maxConcurrent: 1, maxQueue: 0, queueTimeout: 100 }, clock);
    const c = ctx();
    await b.layer('app', () => undefined)(async () => response(200))(c);
    expect(b.inFlight).toBe(1);
    for (const f of c.finishers ?? []) f();
    for (const f of c.finishers ?? []) f(); // twice: released once
    expect(b.inFlight).toBe(0);
  });
});

describe('rate limiter layer', () => {
  it('reject mode answers 429 with the draft RateLimit headers once the burst is spent', async () => {
    const clock = new ManualClock();
    const rl = new RateLimiter(
      { ...DEFAULTS.rateLimiter, ratePerSecond: 10, burst: 2, key: { kind: 'none' } },
      clock,
    );
    const layer = rl.layer('app', NO_LIMITER_EVENTS)(async () => response(200));
    expect((await layer(ctx())).type).toBe('response');
    expect((await layer(ctx())).type).toBe('response');
    const limited = await layer(ctx());
    expect(limited.type === 'problem' && limited.problem.status).toBe(429);
    expect(limited.type === 'problem' && limited.problem.headers).toEqual([
      'retry-after',
      '1',
      'ratelimit-policy',
      '"default";q=10;w=1',
      'ratelimit',
      '"default";r=0;t=1',
    ]);
    clock.advance(100);
    expect((await layer(ctx())).type).toBe('response');
  });

  it("keys buckets by a header value: one tenant cannot spend another tenant's tokens", async () => {
    const clock = new ManualClock();
    const rl = new RateLimiter(
      { ...DEFAULTS.rateLimiter, ratePerSecond: 1, burst: 1, key: { kind: 'header', header: 'x-tenant' } },
      clock,
    );
    const layer = rl.layer('app', NO_LIMITER_EVENTS)(async () => response(200));
    expect((await layer(ctx('GET', { 'x-tenant': 'a' }))).type).toBe('response');
    expect((await layer(ctx('GET', { 'x-tenant': 'a' }))).type).toBe('problem');
    expect((await layer(ctx('GET', { 'x-tenant': 'b' }))).type).toBe('response');
  });

  it('shape mode releases queued requests at the configured rate', async () => {
    const clock = new ManualClock();
    const rl = new RateLimiter(
      {
        ...DEFAULTS.rateLimiter,
        mode: 'shape',
        ratePerSecond: 10,
        burst: 1,
        maxDelay: 1000,
        maxQueue: 10,
        key: { kind: 'none' },
      },
      clock,
    );
    let passed = 0;
    const layer = rl.layer(
      'app',
      NO_LIMITER_EVENTS,
    )(async () => {
      passed++;
      return response(200);
    });
    const all = Promise.all([1, 2, 3, 4].map(() => layer(ctx())));
    await flush();
    expect(passed).toBe(1);
    expect(rl.queueLength).toBe(3);
    clock.advance(100);
    await flush();
    expect(passed).toBe(2);
    clock.advance(200);
    await flush();
    expect(passed).toBe(4);
    expect((await all).every((o) => o.type === 'response')).toBe(true);
  });
});
