/**
 * Circuit breaker, one per upstream: a visible state machine.
 *
 *   closed ──(failure_threshold consecutive failures, or failure/slow-call rate over the window)──► open
 *   open ──(reset_timeout passed; checked when a call arrives)──► half_open
 *   half_open ──(success_threshold successful probes)──► closed
 *   half_open ──(any probe fails)──► open
 *   forced_open / forced_closed: set by an operator; only `auto` leaves them
 *
 * Every transition is published to listeners (metrics, logs, /state) with its reason and counts;
 * nothing else in the breaker knows about metrics or logs.
 */

import type { Clock } from '../clock.js';
import type { CircuitBreakerPolicy, FailureOutcome } from '../config/resolve.js';

export type BreakerState = 'closed' | 'open' | 'half_open' | 'forced_open' | 'forced_closed';
export const BREAKER_STATES: readonly BreakerState[] = [
  'closed',
  'open',
  'half_open',
  'forced_open',
  'forced_closed',
];

export interface Transition {
  readonly from: BreakerState;
  readonly to: BreakerState;
  readonly reason: string;
  /** Clock time of the transition. */
  readonly at: number;
  readonly counts: {
    readonly consecutiveFailures: number;
    readonly calls: number;
    readonly failureRate: number;
    readonly slowRate: number;
  };
}

/** A call's permission to proceed; hand it back with the result. */
export interface Permit {
  readonly generation: number;
  readonly probe: boolean;
}

export type CallResult = 'success' | 'failure' | 'ignored';

/**
 * The calls of the last `size` calls (count) or the last `size` ms (time), with running totals so
 * recording a call and reading the rates cost O(1) (amortized), not a pass over the window.
 */
class SlidingWindow {
  private at: Float64Array;
  private flags: Uint8Array;
  private head = 0;
  private length = 0;
  calls = 0;
  failures = 0;
  slow = 0;

  constructor(
    private readonly type: 'count' | 'time',
    private readonly size: number,
  ) {
    const capacity = type === 'count' ? size : 64;
    this.at = new Float64Array(capacity);
    this.flags = new Uint8Array(capacity);
  }

  record(now: number, failed: boolean, slow: boolean): void {
    if (this.type === 'count' && this.length === this.size) this.dropOldest();
    if (this.length === this.at.length) this.grow();
    const i = (this.head + this.length) % this.at.length;
    this.at[i] = now;
    this.flags[i] = (failed ? 1 : 0) | (slow ? 2 : 0);
    this.length++;
    this.calls++;
    if (failed) this.failures++;
    if (slow) this.slow++;
  }

  /** Drops samples older than the window (time windows only). */
  expire(now: number): void {
    if (this.type !== 'time') return;
    while (this.length > 0 && (this.at[this.head] as number) <= now - this.size) this.dropOldest();
  }

  clear(): void {
    this.head = 0;
    this.length = 0;
    this.calls = 0;
    this.failures = 0;
    this.slow = 0;
  }

  private dropOldest(): void {
    const f = this.flags[this.head] as number;
    this.calls--;
    if (f & 1) this.failures--;
    if (f & 2) this.slow--;
    this.head = (this.head + 1) % this.at.length;
    this.length--;
  }

  private grow(): void {
    const cap = this.at.length * 2;
    const at = new Float64Array(cap);
    const flags = new Uint8Array(cap);
    for (let k = 0; k < this.length; k++) {
      const i = (this.head + k) % this.at.length;
      at[k] = this.at[i] as number;
      flags[k] = this.flags[i] as number;
    }
    this.at = at;
    this.flags = flags;
    this.head = 0;
  }
}

export class CircuitBreaker {
  private stateValue: BreakerState = 'closed';
  /** Changes with every transition, so a result from an older state is not miscounted. */
  private generation = 0;
  private openedAt = 0;
  private consecutiveFailures = 0;
  private probesInFlight = 0;
  private probeSuccesses = 0;
  private readonly window: SlidingWindow;
  private readonly listeners: ((t: Transition) => void)[] = [];
  readonly recent: Transition[] = [];

  constructor(
    readonly policy: CircuitBreakerPolicy,
    private readonly clock: Clock,
  ) {
    this.window = new SlidingWindow(policy.window.type, policy.window.size);
  }

  get state(): BreakerState {
    return this.stateValue;
  }

  onTransition(fn: (t: Transition) => void): void {
    this.listeners.push(fn);
  }

  /**
   * Milliseconds until an open breaker lets a probe through; 0 in any other state (a forced-open
   * breaker never probes: only the operator closes it).
   */
  retryAfterMs(): number {
    if (this.stateValue !== 'open') return 0;
    return Math.max(0, this.openedAt + this.policy.resetTimeout - this.clock.now());
  }

  /** Asks to make a call: a Permit, or undefined when the breaker rejects it. */
  tryAcquire(): Permit | undefined {
    switch (this.stateValue) {
      case 'closed':
      case 'forced_closed':
        return { generation: this.generation, probe: false };
      case 'forced_open':
        return undefined;
      case 'open':
        if (this.clock.now() < this.openedAt + this.policy.resetTimeout) return undefined;
        this.transition('half_open', 'reset_timeout elapsed');
        return this.tryAcquire();
      case 'half_open':
        if (this.probesInFlight >= this.policy.halfOpenRequests) return undefined;
        this.probesInFlight++;
        return { generation: this.generation, probe: true };
    }
  }

  /** Records the result of a call made with `permit`; `durationMs` judges slow calls. */
  onResult(permit: Permit, result: CallResult, durationMs: number): void {
    if (permit.generation !== this.generation) return; // started before a transition: not counted
    if (permit.probe) this.probesInFlight--;
    if (result === 'ignored') return;
    const failed = result === 'failure';
    switch (this.stateValue) {
      case 'closed':
        this.recordClosed(failed, durationMs);
        return;
      case 'half_open':
        if (failed) {
          this.transition('open', 'probe failed');
        } else if (++this.probeSuccesses >= this.policy.successThreshold) {
          this.transition('closed', `${this.probeSuccesses} probe(s) succeeded`);
        }
        return;
      default:
        return;
    }
  }

  /** Operator control: `open` and `close` force a state until `auto`. */
  force(mode: 'open' | 'close' | 'auto'): void {
    if (mode === 'open') {
      if (this.stateValue !== 'forced_open') this.transition('forced_open', 'forced by operator');
    } else if (mode === 'close') {
      if (this.stateValue !== 'forced_closed') this.transition('forced_closed', 'forced by operator');
    } else if (this.stateValue === 'forced_open' || this.stateValue === 'forced_closed')
      this.transition('closed', 'returned to automatic by operator');
  }

  /** Counts of the current window, for /state. */
  stats(): Transition['counts'] {
    const w = this.window;
    w.expire(this.clock.now());
    return {
      consecutiveFailures: this.consecutiveFailures,
      calls: w.calls,
      failureRate: w.calls ? w.failures / w.calls : 0,
      slowRate: w.calls ? w.slow / w.calls : 0,
    };
  }

  private recordClosed(failed: boolean, durationMs: number): void {
    const p = this.policy;
    this.consecutiveFailures = failed ? this.consecutiveFailures + 1 : 0;
    if (this.consecutiveFailures >= p.failureThreshold) {
      this.transition('open', `${this.consecutiveFailures} consecutive failures`);
      return;
    }
    if (p.failureRateThreshold === undefined && p.slowCallRateThreshold === undefined) return;
    const slow = p.slowCallDuration !== undefined && durationMs > p.slowCallDuration;
    this.window.record(this.clock.now(), failed, slow);
    const c = this.stats();
    // As resilience4j: a count window smaller than minimum_calls is judged once it is full.
    const minimum = p.window.type === 'count' ? Math.min(p.minimumCalls, p.window.size) : p.minimumCalls;
    if (c.calls < minimum) return;
    if (p.failureRateThreshold !== undefined && c.failureRate >= p.failureRateThreshold) {
      this.transition('open', `failure rate ${(c.failureRate * 100).toFixed(1)}% over ${c.calls} calls`);
    } else if (p.slowCallRateThreshold !== undefined && c.slowRate >= p.slowCallRateThreshold) {
      this.transition('open', `slow-call rate ${(c.slowRate * 100).toFixed(1)}% over ${c.calls} calls`);
    }
  }

  private transition(to: BreakerState, reason: string): void {
    const from = this.stateValue;
    const counts = this.stats();
    this.stateValue = to;
    this.generation++;
    this.probesInFlight = 0;
    this.probeSuccesses = 0;
    if (to === 'open') this.openedAt = this.clock.now();
    if (to === 'closed' || to === 'open') {
      this.consecutiveFailures = 0;
      this.window.clear();
    }
    const t: Transition = { from, to, reason, at: this.clock.now(), counts };
    this.recent.push(t);
    if (this.recent.length > 20) this.recent.shift();
    for (const fn of this.listeners) fn(t);
  }
}

/** A transition's counts as snake_case fields, the naming of /state, the log lines and the config. */
export function countsFields(c: Transition['counts']): {
  consecutive_failures: number;
  calls: number;
  failure_rate: number;
  slow_rate: number;
} {
  return {
    consecutive_failures: c.consecutiveFailures,
    calls: c.calls,
    failure_rate: c.failureRate,
    slow_rate: c.slowRate,
  };
}

/** Whether an attempt's outcome counts as a failure under `failure_on`. */
export function isFailure(
  failureOn: readonly FailureOutcome[],
  status: number | undefined,
  cause: string | undefined,
): boolean {
  for (const f of failureOn) {
    if (typeof f === 'number') {
      if (status === f) return true;
    } else if (f === '5xx') {
      if (status !== undefined && status >= 500) return true;
    } else if (f === '4xx') {
      if (status !== undefined && status >= 400 && status < 500) return true;
    } else if (f === 'gateway-error') {
      if (status === 502 || status === 503 || status === 504) return true;
    } else if (f === cause) {
      return true;
    }
  }
  return false;
}
