/**
 * The circuit breaker in isolation, stepped with a ManualClock: examples for each rule of the state
 * machine, then a model-based property test that runs random call sequences against the breaker
 * and a small reference model written from the documented state machine.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type CircuitBreakerPolicy, DEFAULTS } from '../../src/config/resolve.js';
import {
  type BreakerState,
  type CallResult,
  CircuitBreaker,
  isFailure,
  type Permit,
  type Transition,
} from '../../src/pipeline/circuit-breaker.js';
import { ManualClock } from '../kit/clock.js';

function policy(over: Partial<CircuitBreakerPolicy> = {}): CircuitBreakerPolicy {
  return { ...DEFAULTS.circuitBreaker, ...over };
}

function breaker(over: Partial<CircuitBreakerPolicy> = {}): {
  clock: ManualClock;
  cb: CircuitBreaker;
  transitions: Transition[];
} {
  const clock = new ManualClock();
  const cb = new CircuitBreaker(policy(over), clock);
  const transitions: Transition[] = [];
  cb.onTransition((t) => transitions.push(t));
  return { clock, cb, transitions };
}

/** Acquires a permit (which must be granted) and reports `result` at once. */
function call(cb: CircuitBreaker, result: CallResult, durationMs = 1): void {
  const permit = cb.tryAcquire();
  if (!permit) throw new Error(`call rejected in state ${cb.state}`);
  cb.onResult(permit, result, durationMs);
}

function acquire(cb: CircuitBreaker): Permit {
  const permit = cb.tryAcquire();
  if (!permit) throw new Error(`call rejected in state ${cb.state}`);
  return permit;
}

describe('CircuitBreaker: consecutive failures', () => {
  it('opens after failure_threshold consecutive failures', () => {
    const { cb } = breaker({ failureThreshold: 3, resetTimeout: 1000 });
    call(cb, 'failure');
    call(cb, 'failure');
    expect(cb.state).toBe('closed');
    expect(cb.stats().consecutiveFailures).toBe(2);
    call(cb, 'failure');
    expect(cb.state).toBe('open');
    expect(cb.tryAcquire()).toBeUndefined();
  });

  it('a success in between resets the count', () => {
    const { cb } = breaker({ failureThreshold: 3 });
    call(cb, 'failure');
    call(cb, 'failure');
    call(cb, 'success');
    expect(cb.stats().consecutiveFailures).toBe(0);
    call(cb, 'failure');
    call(cb, 'failure');
    expect(cb.state).toBe('closed');
    call(cb, 'failure');
    expect(cb.state).toBe('open');
  });

  it('an ignored result neither counts as a failure nor resets the count', () => {
    const { cb } = breaker({ failureThreshold: 2 });
    call(cb, 'failure');
    call(cb, 'ignored');
    expect(cb.stats().consecutiveFailures).toBe(1);
    call(cb, 'failure');
    expect(cb.state).toBe('open');
  });
});

describe('CircuitBreaker: open', () => {
  it('rejects while open and retryAfterMs() counts down to the probe', () => {
    const { cb, clock } = breaker({ failureThreshold: 1, resetTimeout: 1000 });
    expect(cb.retryAfterMs()).toBe(0);
    call(cb, 'failure');
    expect(cb.state).toBe('open');
    expect(cb.retryAfterMs()).toBe(1000);
    clock.advance(300);
    expect(cb.tryAcquire()).toBeUndefined();
    expect(cb.retryAfterMs()).toBe(700);
    clock.advance(699);
    expect(cb.tryAcquire()).toBeUndefined();
    expect(cb.retryAfterMs()).toBe(1);
    expect(cb.state).toBe('open');
    clock.advance(1);
    expect(cb.retryAfterMs()).toBe(0);
    // the move to half_open happens only when a call arrives
    expect(cb.state).toBe('open');
    const probe = cb.tryAcquire();
    expect(probe).toMatchObject({ probe: true });
    expect(cb.state).toBe('half_open');
    expect(cb.retryAfterMs()).toBe(0);
  });
});

describe('CircuitBreaker: half_open', () => {
  it('after reset_timeout the next tryAcquire() moves to half_open; at most half_open_requests probes in flight', () => {
    const { cb, clock, transitions } = breaker({
      failureThreshold: 1,
      resetTimeout: 500,
      halfOpenRequests: 2,
      successThreshold: 3,
    });
    call(cb, 'failure');
    clock.advance(500);
    const p1 = acquire(cb);
    expect(cb.state).toBe('half_open');
    expect(transitions.at(-1)).toMatchObject({ from: 'open', to: 'half_open' });
    const p2 = acquire(cb);
    expect(p1.probe && p2.probe).toBe(true);
    expect(cb.tryAcquire()).toBeUndefined();
    expect(cb.tryAcquire()).toBeUndefined();
    // a finished probe frees its slot
    cb.onResult(p1, 'success', 1);
    expect(cb.state).toBe('half_open');
    const p3 = acquire(cb);
    expect(cb.tryAcquire()).toBeUndefined();
    // an ignored probe also frees its slot, and does not count as a success
    cb.onResult(p2, 'ignored', 1);
    const p4 = acquire(cb);
    expect(cb.tryAcquire()).toBeUndefined();
    cb.onResult(p3, 'success', 1);
    expect(cb.state).toBe('half_open');
    cb.onResult(p4, 'success', 1);
    expect(cb.state).toBe('closed');
  });

  it('success_threshold successful probes close it', () => {
    const { cb, clock, transitions } = breaker({
      failureThreshold: 1,
      resetTimeout: 100,
      halfOpenRequests: 1,
      successThreshold: 2,
    });
    call(cb, 'failure');
    clock.advance(100);
    call(cb, 'success');
    expect(cb.state).toBe('half_open');
    call(cb, 'success');
    expect(cb.state).toBe('closed');
    expect(transitions.map((t) => `${t.from}->${t.to}`)).toEqual([
      'closed->open',
      'open->half_open',
      'half_open->closed',
    ]);
    expect(transitions.at(-1)?.reason).toBe('2 probe(s) succeeded');
    // closed again with a clean count: it takes a full failure_threshold to reopen
    expect(cb.stats().consecutiveFailures).toBe(0);
    expect(cb.tryAcquire()).toMatchObject({ probe: false });
  });

  it('any probe failure re-opens it, and openedAt restarts from that moment', () => {
    const { cb, clock } = breaker({
      failureThreshold: 1,
      resetTimeout: 1000,
      halfOpenRequests: 1,
      successThreshold: 3,
    });
    call(cb, 'failure'); // opened at t=0
    clock.advance(1500);
    call(cb, 'success'); // half_open, 1 of 3
    expect(cb.state).toBe('half_open');
    call(cb, 'failure'); // t=1500: open again
    expect(cb.state).toBe('open');
    expect(cb.retryAfterMs()).toBe(1000); // not 0: the timer restarted at 1500, not at 0
    clock.advance(999);
    expect(cb.tryAcquire()).toBeUndefined();
    clock.advance(1);
    expect(acquire(cb).probe).toBe(true);
    // probe successes were reset by the re-open: three more are needed
    expect(cb.state).toBe('half_open');
  });
});

describe('CircuitBreaker: generations', () => {
  it('a result from a call started before a transition is ignored', () => {
    const { cb, clock } = breaker({ failureThreshold: 2, resetTimeout: 100, successThreshold: 1 });
    const old = acquire(cb); // closed, generation 0
    call(cb, 'failure');
    call(cb, 'failure');
    expect(cb.state).toBe('open');
    // an old success does not close an open breaker
    cb.onResult(old, 'success', 1);
    expect(cb.state).toBe('open');
    clock.advance(100);
    const probe = acquire(cb);
    expect(cb.state).toBe('half_open');
    // nor does an old result count as a probe result
    cb.onResult(old, 'failure', 1);
    expect(cb.state).toBe('half_open');
    cb.onResult(old, 'success', 1);
    expect(cb.state).toBe('half_open');
    // and it did not free the probe slot
    expect(cb.tryAcquire()).toBeUndefined();
    cb.onResult(probe, 'success', 1);
    expect(cb.state).toBe('closed');
  });

  it('a probe still in flight when another probe re-opened the breaker is ignored', () => {
    const { cb, clock } = breaker({
      failureThreshold: 1,
      resetTimeout: 100,
      halfOpenRequests: 2,
      successThreshold: 1,
    });
    call(cb, 'failure');
    clock.advance(100);
    const p1 = acquire(cb);
    const p2 = acquire(cb);
    cb.onResult(p1, 'failure', 1);
    expect(cb.state).toBe('open');
    cb.onResult(p2, 'success', 1);
    expect(cb.state).toBe('open');
  });

  it('an old closed-state failure arriving after the breaker re-closed does not count', () => {
    const { cb, clock } = breaker({ failureThreshold: 2, resetTimeout: 100 });
    const old = acquire(cb);
    call(cb, 'failure');
    call(cb, 'failure');
    clock.advance(100);
    call(cb, 'success');
    expect(cb.state).toBe('closed');
    cb.onResult(old, 'failure', 1);
    expect(cb.stats().consecutiveFailures).toBe(0);
  });
});

describe('CircuitBreaker: rates', () => {
  it('failure rate over a count window trips only once minimum_calls are in the window', () => {
    const { cb, transitions } = breaker({
      failureThreshold: 1000,
      window: { type: 'count', size: 10 },
      minimumCalls: 5,
      failureRateThreshold: 0.5,
    });
    for (let i = 0; i < 4; i++) call(cb, 'failure');
    expect(cb.stats()).toMatchObject({ calls: 4, failureRate: 1 });
    expect(cb.state).toBe('closed'); // 100% but below minimum_calls
    call(cb, 'success');
    expect(cb.state).toBe('open');
    expect(transitions.at(-1)?.reason).toBe('failure rate 80.0% over 5 calls');
    expect(transitions.at(-1)?.counts).toMatchObject({ calls: 5, failureRate: 0.8 });
    // the window was cleared by the transition
    expect(cb.stats().calls).toBe(0);
  });

  it('the count window slides: only the last `size` calls are judged', () => {
    const { cb } = breaker({
      failureThreshold: 1000,
      window: { type: 'count', size: 4 },
      minimumCalls: 4,
      failureRateThreshold: 0.5,
    });
    const seq: CallResult[] = ['failure', 'success', 'success', 'success', 'success', 'success', 'success'];
    for (const r of seq) call(cb, r);
    expect(cb.stats()).toMatchObject({ calls: 4, failureRate: 0 });
    call(cb, 'failure'); // [S S S F]: 25%
    expect(cb.state).toBe('closed');
    call(cb, 'failure'); // [S S F F]: 50% (3/9 had the first failure never left the window)
    expect(cb.state).toBe('open');
  });

  it('failure rate over a time window: samples older than the window expire', () => {
    const { cb, clock } = breaker({
      failureThreshold: 1000,
      window: { type: 'time', size: 1000 },
      minimumCalls: 3,
      failureRateThreshold: 0.5,
    });
    call(cb, 'failure');
    call(cb, 'failure');
    clock.advance(999);
    expect(cb.stats().calls).toBe(2);
    clock.advance(1);
    expect(cb.stats().calls).toBe(0);
    call(cb, 'success'); // with the old failures this would be 2/3
    expect(cb.state).toBe('closed');
    expect(cb.stats()).toMatchObject({ calls: 1, failureRate: 0 });
    clock.advance(500);
    call(cb, 'failure');
    call(cb, 'failure'); // 2/3 within the last second
    expect(cb.state).toBe('open');
  });

  it('a time window counts right when it holds more calls than its first buffer, after sliding', () => {
    // The window starts with room for 64 samples; expire 10, then wrap around and grow past 64.
    const { cb, clock } = breaker({
      failureThreshold: 1000,
      window: { type: 'time', size: 100 },
      minimumCalls: 1000, // record, never judge
      failureRateThreshold: 0.5,
      slowCallDuration: 100,
    });
    for (let i = 0; i < 10; i++) call(cb, 'failure'); // t=0
    clock.advance(50);
    for (let i = 0; i < 30; i++) call(cb, 'success', 500); // t=50, slow
    clock.advance(50);
    expect(cb.stats()).toMatchObject({ calls: 30, failureRate: 0, slowRate: 1 }); // the t=0 calls expired
    for (let i = 0; i < 40; i++) call(cb, i % 2 ? 'success' : 'failure'); // t=100
    expect(cb.stats()).toMatchObject({ calls: 70, failureRate: 20 / 70, slowRate: 30 / 70 });
    clock.advance(50); // t=150: the t=50 calls expire
    expect(cb.stats()).toMatchObject({ calls: 40, failureRate: 0.5, slowRate: 0 });
    clock.advance(50); // t=200: all expired
    expect(cb.stats()).toMatchObject({ calls: 0, failureRate: 0, slowRate: 0 });
    call(cb, 'success', 500);
    expect(cb.stats()).toMatchObject({ calls: 1, failureRate: 0, slowRate: 1 });
    expect(cb.state).toBe('closed');
  });

  it('slow-call rate trips the breaker even when every call succeeds', () => {
    const { cb, transitions } = breaker({
      failureThreshold: 1000,
      window: { type: 'count', size: 10 },
      minimumCalls: 4,
      slowCallDuration: 100,
      slowCallRateThreshold: 0.5,
    });
    call(cb, 'success', 150);
    call(cb, 'success', 10);
    call(cb, 'success', 250);
    expect(cb.state).toBe('closed');
    expect(cb.stats()).toMatchObject({ calls: 3, failureRate: 0 });
    call(cb, 'success', 20);
    expect(cb.state).toBe('open');
    expect(transitions.at(-1)?.reason).toBe('slow-call rate 50.0% over 4 calls');
    expect(transitions.at(-1)?.counts).toMatchObject({ slowRate: 0.5, failureRate: 0 });
  });

  it('a call of exactly slow_call_duration is not slow ("slower than", resilience4j: duration > threshold)', () => {
    // docs/configuration.md: "A call slower than the duration is slow"; resilience4j counts a call
    // as slow only when its duration is strictly greater than slowCallDurationThreshold.
    const { cb } = breaker({
      failureThreshold: 1000,
      window: { type: 'count', size: 10 },
      minimumCalls: 4,
      slowCallDuration: 100,
      slowCallRateThreshold: 0.5,
    });
    for (let i = 0; i < 3; i++) call(cb, 'success', 100);
    expect(cb.stats().slowRate).toBe(0);
    call(cb, 'success', 100);
    expect(cb.state).toBe('closed');
  });

  it('minimum_calls larger than a count window is capped at the window size (as resilience4j does)', () => {
    // window.size 10 with the default minimum_calls 20: a count window never holds 20 calls, so
    // without the cap the failure-rate rule could never fire. resilience4j's CircuitBreakerMetrics
    // uses min(minimumNumberOfCalls, slidingWindowSize) for COUNT_BASED windows.
    const { cb } = breaker({
      failureThreshold: 1000,
      window: { type: 'count', size: 10 },
      failureRateThreshold: 0.5,
    });
    expect(cb.policy.minimumCalls).toBe(20);
    for (let i = 0; i < 10; i++) call(cb, i % 2 ? 'success' : 'failure');
    // ten calls in a full window, 50% failed
    expect(cb.state).toBe('open');
  });
});

describe('CircuitBreaker: operator control', () => {
  it("force('open') rejects until 'auto', whatever the clock says, and schedules no probe", () => {
    const { cb, clock } = breaker({ resetTimeout: 1000 });
    cb.force('open');
    expect(cb.state).toBe('forced_open');
    expect(cb.tryAcquire()).toBeUndefined();
    expect(cb.retryAfterMs()).toBe(0); // no probe is scheduled: only the operator reopens it
    clock.advance(1_000_000);
    expect(cb.tryAcquire()).toBeUndefined();
    expect(cb.state).toBe('forced_open');
    cb.force('auto');
    expect(cb.state).toBe('closed');
    expect(cb.tryAcquire()).toMatchObject({ probe: false });
  });

  it("force('close') lets everything through and failures do not open it", () => {
    const { cb } = breaker({ failureThreshold: 1 });
    cb.force('close');
    expect(cb.state).toBe('forced_closed');
    for (let i = 0; i < 10; i++) call(cb, 'failure');
    expect(cb.state).toBe('forced_closed');
    expect(cb.retryAfterMs()).toBe(0);
    cb.force('auto');
    expect(cb.state).toBe('closed');
    expect(cb.stats().consecutiveFailures).toBe(0);
    call(cb, 'failure');
    expect(cb.state).toBe('open');
  });

  it('forcing the state it is already forced into publishes no transition', () => {
    const { cb, transitions } = (() => {
      const clock = new ManualClock();
      const b = new CircuitBreaker({ ...DEFAULTS.circuitBreaker }, clock);
      const seen: string[] = [];
      b.onTransition((t) => seen.push(`${t.from}->${t.to}`));
      return { cb: b, transitions: seen };
    })();
    cb.force('open');
    cb.force('open');
    expect(transitions).toEqual(['closed->forced_open']);
  });

  it("force('open') overrides an automatic state; 'auto' outside a forced state changes nothing", () => {
    const { cb, transitions } = breaker({ failureThreshold: 1, resetTimeout: 1000 });
    cb.force('auto');
    expect(transitions).toHaveLength(0);
    call(cb, 'failure');
    expect(cb.state).toBe('open');
    cb.force('auto');
    expect(cb.state).toBe('open');
    expect(transitions).toHaveLength(1);
    cb.force('close');
    expect(cb.state).toBe('forced_closed');
    cb.force('open');
    expect(cb.state).toBe('forced_open');
    expect(transitions.slice(1).map((t) => [t.from, t.to, t.reason])).toEqual([
      ['open', 'forced_closed', 'forced by operator'],
      ['forced_closed', 'forced_open', 'forced by operator'],
    ]);
  });
});

describe('CircuitBreaker: transitions', () => {
  it('listeners receive from, to, reason, time and the counts that caused it', () => {
    const { cb, clock } = breaker({ failureThreshold: 2, resetTimeout: 100 });
    const a: Transition[] = [];
    const b: Transition[] = [];
    cb.onTransition((t) => a.push(t));
    cb.onTransition((t) => b.push(t));
    clock.advance(42);
    call(cb, 'failure');
    call(cb, 'failure');
    expect(a).toEqual([
      {
        from: 'closed',
        to: 'open',
        reason: '2 consecutive failures',
        at: 42,
        counts: { consecutiveFailures: 2, calls: 0, failureRate: 0, slowRate: 0 },
      },
    ]);
    expect(b).toEqual(a);
    expect(cb.recent).toEqual(a);
    clock.advance(100);
    acquire(cb);
    expect(a[1]).toMatchObject({ from: 'open', to: 'half_open', reason: 'reset_timeout elapsed', at: 142 });
  });

  it('recent keeps the last 20 transitions', () => {
    const { cb, transitions } = breaker();
    for (let i = 0; i < 25; i++) cb.force(i % 2 ? 'close' : 'open');
    expect(transitions).toHaveLength(25);
    expect(cb.recent).toHaveLength(20);
    expect(cb.recent).toEqual(transitions.slice(5));
  });
});

describe('isFailure', () => {
  it('5xx matches every status >= 500', () => {
    expect(isFailure(['5xx'], 500, undefined)).toBe(true);
    expect(isFailure(['5xx'], 503, undefined)).toBe(true);
    expect(isFailure(['5xx'], 599, undefined)).toBe(true);
    expect(isFailure(['5xx'], 499, undefined)).toBe(false);
    expect(isFailure(['5xx'], 200, undefined)).toBe(false);
    expect(isFailure(['5xx'], undefined, 'timeout')).toBe(false);
  });

  it('4xx matches 400..499 only', () => {
    expect(isFailure(['4xx'], 400, undefined)).toBe(true);
    expect(isFailure(['4xx'], 429, undefined)).toBe(true);
    expect(isFailure(['4xx'], 499, undefined)).toBe(true);
    expect(isFailure(['4xx'], 399, undefined)).toBe(false);
    expect(isFailure(['4xx'], 500, undefined)).toBe(false);
  });

  it('gateway-error matches 502, 503 and 504', () => {
    for (const s of [502, 503, 504]) expect(isFailure(['gateway-error'], s, undefined)).toBe(true);
    for (const s of [500, 501, 505, 404]) expect(isFailure(['gateway-error'], s, undefined)).toBe(false);
  });

  it('explicit status codes match exactly', () => {
    expect(isFailure([408, 429], 408, undefined)).toBe(true);
    expect(isFailure([408, 429], 429, undefined)).toBe(true);
    expect(isFailure([408, 429], 400, undefined)).toBe(false);
    expect(isFailure([408, 429], 500, undefined)).toBe(false);
  });

  it('causes match by name', () => {
    for (const c of ['connect-failure', 'reset', 'timeout'] as const) {
      expect(isFailure([c], undefined, c)).toBe(true);
      expect(isFailure([c], 200, c)).toBe(true);
    }
    expect(isFailure(['connect-failure'], undefined, 'reset')).toBe(false);
    expect(isFailure(['timeout'], undefined, 'connect-failure')).toBe(false);
    expect(isFailure(['reset'], undefined, undefined)).toBe(false);
  });

  it('the default failure_on: 5xx, 408, 429 and the three causes, other 4xx are the client’s', () => {
    const d = DEFAULTS.circuitBreaker.failureOn;
    expect(isFailure(d, 500, undefined)).toBe(true);
    expect(isFailure(d, 408, undefined)).toBe(true);
    expect(isFailure(d, 429, undefined)).toBe(true);
    expect(isFailure(d, undefined, 'connect-failure')).toBe(true);
    expect(isFailure(d, undefined, 'reset')).toBe(true);
    expect(isFailure(d, undefined, 'timeout')).toBe(true);
    expect(isFailure(d, 404, undefined)).toBe(false);
    expect(isFailure(d, 200, undefined)).toBe(false);
    expect(isFailure([], 500, 'timeout')).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// Model-based: random sequences against a reference model of the documented state machine.
// ---------------------------------------------------------------------------------------------

interface ModelPermit {
  readonly generation: number;
  readonly probe: boolean;
}

interface ModelSample {
  readonly at: number;
  readonly failed: boolean;
  readonly slow: boolean;
}

/**
 * The state machine as the module header and docs/configuration.md describe it, with resilience4j's
 * reading of the rate rules: the window is a plain array, rates are judged (>= threshold) once
 * min(minimum_calls, size) calls (count) or minimum_calls calls (time) are in it, and a call is
 * slow when strictly slower than slow_call_duration.
 */
class Model {
  state: BreakerState = 'closed';
  generation = 0;
  openedAt = 0;
  consecutive = 0;
  inFlight = 0;
  successes = 0;
  window: ModelSample[] = [];
  readonly transitions: string[] = [];

  constructor(
    private readonly p: CircuitBreakerPolicy,
    private readonly clock: ManualClock,
  ) {}

  private go(to: BreakerState): void {
    this.transitions.push(`${this.state}->${to}`);
    this.state = to;
    this.generation++;
    this.inFlight = 0;
    this.successes = 0;
    if (to === 'open') this.openedAt = this.clock.now();
    if (to === 'open' || to === 'closed') {
      this.consecutive = 0;
      this.window = [];
    }
  }

  acquire(): ModelPermit | undefined {
    if (this.state === 'closed' || this.state === 'forced_closed')
      return { generation: this.generation, probe: false };
    if (this.state === 'forced_open') return undefined;
    if (this.state === 'open') {
      if (this.clock.now() - this.openedAt < this.p.resetTimeout) return undefined;
      this.go('half_open');
    }
    if (this.inFlight >= this.p.halfOpenRequests) return undefined;
    this.inFlight++;
    return { generation: this.generation, probe: true };
  }

  result(permit: ModelPermit, r: CallResult, durationMs: number): void {
    if (permit.generation !== this.generation) return;
    if (permit.probe) this.inFlight--;
    if (r === 'ignored') return;
    if (this.state === 'closed') {
      this.consecutive = r === 'failure' ? this.consecutive + 1 : 0;
      if (this.consecutive >= this.p.failureThreshold) this.go('open');
      else this.judge(r === 'failure', durationMs);
    } else if (this.state === 'half_open') {
      if (r === 'failure') this.go('open');
      else if (++this.successes >= this.p.successThreshold) this.go('closed');
    }
  }

  private judge(failed: boolean, durationMs: number): void {
    const p = this.p;
    if (p.failureRateThreshold === undefined && p.slowCallRateThreshold === undefined) return;
    const slow = p.slowCallDuration !== undefined && durationMs > p.slowCallDuration;
    this.window.push({ at: this.clock.now(), failed, slow });
    const c = this.counts();
    const minimum = p.window.type === 'count' ? Math.min(p.minimumCalls, p.window.size) : p.minimumCalls;
    if (c.calls < minimum) return;
    if (p.failureRateThreshold !== undefined && c.failureRate >= p.failureRateThreshold) this.go('open');
    else if (p.slowCallRateThreshold !== undefined && c.slowRate >= p.slowCallRateThreshold) this.go('open');
  }

  counts(): Transition['counts'] {
    const w = this.p.window;
    this.window =
      w.type === 'count'
        ? this.window.slice(-w.size)
        : this.window.filter((s) => s.at > this.clock.now() - w.size);
    const calls = this.window.length;
    const failures = this.window.filter((s) => s.failed).length;
    const slow = this.window.filter((s) => s.slow).length;
    return {
      consecutiveFailures: this.consecutive,
      calls,
      failureRate: calls ? failures / calls : 0,
      slowRate: calls ? slow / calls : 0,
    };
  }

  force(mode: 'open' | 'close' | 'auto'): void {
    // Forcing the state it is already forced into changes nothing (no transition is published).
    if (mode === 'open') {
      if (this.state !== 'forced_open') this.go('forced_open');
    } else if (mode === 'close') {
      if (this.state !== 'forced_closed') this.go('forced_closed');
    } else if (this.state === 'forced_open' || this.state === 'forced_closed') this.go('closed');
  }

  retryAfterMs(): number {
    if (this.state !== 'open') return 0;
    return Math.max(0, this.openedAt + this.p.resetTimeout - this.clock.now());
  }
}

type Action =
  | { readonly kind: 'call'; readonly result: CallResult; readonly ms: number }
  | { readonly kind: 'hold' }
  | { readonly kind: 'complete'; readonly index: number; readonly result: CallResult; readonly ms: number }
  | { readonly kind: 'advance'; readonly ms: number }
  /** Advances to `delta` ms around the moment an open breaker lets a probe through. */
  | { readonly kind: 'advanceToProbe'; readonly delta: number }
  | { readonly kind: 'force'; readonly mode: 'open' | 'close' | 'auto' };

const resultArb = fc.constantFrom<CallResult>('success', 'failure', 'ignored');
const mostlySuccessArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant<CallResult>('success') },
  { weight: 2, arbitrary: fc.constant<CallResult>('failure') },
  { weight: 1, arbitrary: fc.constant<CallResult>('ignored') },
);
/** Call durations around the slow_call_duration of `rateRulesArb` (20..40 ms), boundary included. */
const durationArb = fc.integer({ min: 0, max: 60 });

function actionsArb(weights: {
  call: number;
  advance: number;
  force: number;
  maxAdvance: number;
  maxLength: number;
  result: fc.Arbitrary<CallResult>;
}) {
  return fc.array(
    fc.oneof(
      {
        weight: weights.call,
        arbitrary: fc.record({ kind: fc.constant('call' as const), result: weights.result, ms: durationArb }),
      },
      { weight: 3, arbitrary: fc.constant({ kind: 'hold' as const }) },
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant('complete' as const),
          index: fc.nat(),
          result: weights.result,
          ms: durationArb,
        }),
      },
      {
        weight: weights.advance,
        arbitrary: fc.record({
          kind: fc.constant('advance' as const),
          ms: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: weights.maxAdvance })),
        }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant('advanceToProbe' as const),
          delta: fc.integer({ min: -1, max: 1 }),
        }),
      },
      {
        weight: weights.force,
        arbitrary: fc.record({
          kind: fc.constant('force' as const),
          mode: fc.constantFrom('open' as const, 'close' as const, 'auto' as const),
        }),
      },
    ),
    { minLength: 1, maxLength: weights.maxLength, size: 'max' },
  );
}

const stateMachineArb = fc.record({
  failureThreshold: fc.integer({ min: 1, max: 5 }),
  resetTimeout: fc.integer({ min: 1, max: 1000 }),
  halfOpenRequests: fc.integer({ min: 1, max: 3 }),
  successThreshold: fc.integer({ min: 1, max: 3 }),
});

/** The consecutive-failure rule only. */
const consecutivePolicyArb: fc.Arbitrary<CircuitBreakerPolicy> = stateMachineArb.map((p) =>
  policy({ ...p, failureRateThreshold: undefined, slowCallRateThreshold: undefined }),
);

/** Rate rules over a small count or time window, next to the consecutive rule. */
const ratePolicyArb: fc.Arbitrary<CircuitBreakerPolicy> = fc
  .record({
    machine: stateMachineArb,
    failureThreshold: fc.integer({ min: 1, max: 12 }),
    window: fc.oneof(
      fc.record({ type: fc.constant('count' as const), size: fc.integer({ min: 1, max: 12 }) }),
      fc.record({ type: fc.constant('time' as const), size: fc.integer({ min: 1, max: 300 }) }),
    ),
    minimumCalls: fc.integer({ min: 1, max: 15 }),
    failureRateThreshold: fc.option(fc.constantFrom(0.25, 0.5, 0.6, 0.75, 1), { nil: undefined }),
    slowCallDuration: fc.option(fc.integer({ min: 20, max: 40 }), { nil: undefined }),
    slowCallRateThreshold: fc.option(fc.constantFrom(0.25, 0.5, 1), { nil: undefined }),
  })
  .map(({ machine, ...rates }) => policy({ ...machine, ...rates }));

/** Runs `actions` against a real breaker and the model, comparing them after every step. */
function runAgainstModel(p: CircuitBreakerPolicy, actions: readonly Action[], compareWindow: boolean): void {
  const clock = new ManualClock();
  const cb = new CircuitBreaker(p, clock);
  const model = new Model(p, clock);
  const seen: string[] = [];
  cb.onTransition((t) => seen.push(`${t.from}->${t.to}`));
  const held: { real: Permit; model: ModelPermit }[] = [];

  const acquireBoth = (): { real: Permit; model: ModelPermit } | undefined => {
    const m = model.acquire();
    const r = cb.tryAcquire();
    expect(r !== undefined, 'tryAcquire granted').toBe(m !== undefined);
    if (!r || !m) return undefined;
    expect(r.probe).toBe(m.probe);
    return { real: r, model: m };
  };

  for (const a of actions) {
    switch (a.kind) {
      case 'call': {
        const got = acquireBoth();
        if (got) {
          cb.onResult(got.real, a.result, a.ms);
          model.result(got.model, a.result, a.ms);
        }
        break;
      }
      case 'hold': {
        const got = acquireBoth();
        if (got) held.push(got);
        break;
      }
      case 'complete': {
        if (held.length === 0) break;
        const [got] = held.splice(a.index % held.length, 1);
        if (!got) break;
        cb.onResult(got.real, a.result, a.ms);
        model.result(got.model, a.result, a.ms);
        break;
      }
      case 'advance':
        clock.advance(a.ms);
        break;
      case 'advanceToProbe':
        clock.advance(Math.max(0, model.retryAfterMs() + a.delta));
        break;
      case 'force':
        cb.force(a.mode);
        model.force(a.mode);
        break;
    }
    expect(cb.state).toBe(model.state);
    expect(cb.retryAfterMs()).toBe(model.retryAfterMs());
    expect(seen).toEqual(model.transitions);
    if (compareWindow) expect(cb.stats()).toEqual(model.counts());
    else expect(cb.stats().consecutiveFailures).toBe(model.consecutive);
  }
}

describe('CircuitBreaker: model-based', () => {
  it('agrees with the reference state machine on random call sequences (consecutive-failure rule)', () => {
    fc.assert(
      fc.property(
        consecutivePolicyArb,
        actionsArb({ call: 6, advance: 4, force: 1, maxAdvance: 1500, maxLength: 100, result: resultArb }),
        (p, actions) => runAgainstModel(p, actions, false),
      ),
      { numRuns: 500 },
    );
  });

  it('agrees with the reference model on the failure-rate and slow-call-rate rules over count and time windows', () => {
    fc.assert(
      fc.property(
        ratePolicyArb,
        actionsArb({
          call: 12,
          advance: 3,
          force: 0,
          maxAdvance: 400,
          maxLength: 120,
          result: mostlySuccessArb,
        }),
        (p, actions) => runAgainstModel(p, actions, true),
      ),
      { numRuns: 200 },
    );
  });
});
