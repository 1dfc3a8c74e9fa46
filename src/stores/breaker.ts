/**
 * The breaker in front of a shared store (Redis): while the store is down, callers are told so at
 * once instead of each waiting a `command_timeout` for it.
 *
 *   closed ──(failure_threshold failures in a row)──► open
 *   open ──(reset_timeout passed, or the client reconnected)──► half_open
 *   half_open ──(the one probe succeeds)──► closed
 *   half_open ──(the probe fails)──► open
 *
 * In half_open exactly one call goes to the store; the others are refused as in open, so an outage
 * costs one `command_timeout` per `reset_timeout` at most. Transitions are published to listeners
 * (metrics, logs); the breaker itself knows nothing about either.
 */
import type { Clock } from '../clock.js';

export type StoreBreakerState = 'closed' | 'open' | 'half_open';

export interface StoreBreakerOptions {
  /** Failures in a row that open the breaker. */
  readonly failureThreshold: number;
  /** Time open before one probe is let through (ms). */
  readonly resetTimeout: number;
}

export class StoreBreaker {
  private current: StoreBreakerState = 'closed';
  private failures = 0;
  private openedAt = 0;
  private probing = false;
  private readonly listeners: ((from: StoreBreakerState, to: StoreBreakerState, reason: string) => void)[] =
    [];

  constructor(
    private readonly options: StoreBreakerOptions,
    private readonly clock: Clock,
  ) {}

  get state(): StoreBreakerState {
    return this.current;
  }

  /** Milliseconds until the next probe may go (0 when closed or a probe may go now). */
  retryInMs(): number {
    if (this.current !== 'open') return 0;
    return Math.max(0, this.openedAt + this.options.resetTimeout - this.clock.now());
  }

  onTransition(fn: (from: StoreBreakerState, to: StoreBreakerState, reason: string) => void): void {
    this.listeners.push(fn);
  }

  /** Whether a call may go to the store now; a true in half_open makes the caller the probe. */
  allow(): boolean {
    if (this.current === 'closed') return true;
    if (this.current === 'open') {
      if (this.clock.now() - this.openedAt < this.options.resetTimeout) return false;
      this.move('half_open', 'reset_timeout passed');
    }
    if (this.probing) return false;
    this.probing = true;
    return true;
  }

  success(): void {
    this.failures = 0;
    if (this.current === 'half_open') {
      this.probing = false;
      this.move('closed', 'probe succeeded');
    }
  }

  failure(reason: string): void {
    if (this.current === 'half_open') {
      this.probing = false;
      this.open(`probe failed: ${reason}`);
      return;
    }
    if (this.current === 'open') return;
    this.failures++;
    if (this.failures >= this.options.failureThreshold)
      this.open(`${this.failures} failures in a row, last: ${reason}`);
  }

  /** The client is connected again: let the next call probe without waiting out reset_timeout. */
  reconnected(): void {
    if (this.current === 'open') this.move('half_open', 'client reconnected');
  }

  private open(reason: string): void {
    this.openedAt = this.clock.now();
    this.failures = 0;
    this.move('open', reason);
  }

  private move(to: StoreBreakerState, reason: string): void {
    const from = this.current;
    if (from === to) return;
    this.current = to;
    for (const fn of this.listeners) fn(from, to, reason);
  }
}
