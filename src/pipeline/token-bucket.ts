/**
 * A token bucket: `burst` tokens at most, refilled at `ratePerSecond`. Lazy refill on each call,
 * so an idle bucket costs nothing. `reserve` lets the balance go negative, which is how the shaper
 * queues: a request that reserves a token owed in the future waits until it is due.
 */
import type { Clock } from '../clock.js';

/**
 * Refill adds fractions of a token per call; their float sum can land a hair under a whole token
 * (ten 0.1s make 0.9999999999999999). Balances this close to a whole number count as whole.
 */
const EPSILON = 1e-9;

export class TokenBucket {
  private balance: number;
  private last: number;

  constructor(
    readonly ratePerSecond: number,
    readonly burst: number,
    private readonly clock: Clock,
  ) {
    this.balance = burst;
    this.last = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
    if (now > this.last) {
      this.balance = Math.min(this.burst, this.balance + ((now - this.last) * this.ratePerSecond) / 1000);
      this.last = now;
    }
  }

  /** Tokens available now (may be fractional, never above burst). */
  tokens(): number {
    this.refill();
    return this.balance;
  }

  /** Takes one token if there is a whole one. */
  tryTake(): boolean {
    this.refill();
    if (this.balance >= 1 - EPSILON) {
      this.balance = Math.max(0, this.balance - 1);
      return true;
    }
    return false;
  }

  /** Milliseconds until one whole token is available (0 if now). */
  msUntilToken(): number {
    this.refill();
    return this.balance >= 1 - EPSILON
      ? 0
      : Math.ceil(((1 - this.balance) * 1000) / this.ratePerSecond - EPSILON);
  }

  /**
   * Reserves one token, owed in the future if need be; returns the wait in ms, or undefined when
   * the wait would exceed `maxWaitMs` (nothing is reserved then).
   */
  reserve(maxWaitMs: number): number | undefined {
    this.refill();
    const wait =
      this.balance >= 1 - EPSILON ? 0 : Math.ceil(((1 - this.balance) * 1000) / this.ratePerSecond - EPSILON);
    if (wait > maxWaitMs) return undefined;
    this.balance -= 1;
    return wait;
  }
}
