/**
 * The token bucket in isolation, stepped with a ManualClock: examples, then a model-based property
 * test against a reference bucket kept in exact integer arithmetic.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../src/pipeline/token-bucket.js';
import { ManualClock } from '../kit/clock.js';

function bucket(ratePerSecond: number, burst: number): { clock: ManualClock; b: TokenBucket } {
  const clock = new ManualClock();
  clock.advance(12_345); // not starting at 0 catches code that assumes it
  return { clock, b: new TokenBucket(ratePerSecond, burst, clock) };
}

describe('TokenBucket', () => {
  it('starts full at burst', () => {
    const { b } = bucket(5, 3);
    expect(b.tokens()).toBe(3);
    expect(b.msUntilToken()).toBe(0);
  });

  it('tryTake drains it one token at a time, then refuses', () => {
    const { b } = bucket(5, 3);
    expect([b.tryTake(), b.tryTake(), b.tryTake()]).toEqual([true, true, true]);
    expect(b.tokens()).toBe(0);
    expect(b.tryTake()).toBe(false);
    expect(b.tokens()).toBe(0); // a refused take costs nothing
  });

  it('refills at ratePerSecond with fractional accrual', () => {
    const { b, clock } = bucket(2, 3);
    while (b.tryTake());
    clock.advance(250);
    expect(b.tokens()).toBeCloseTo(0.5, 12);
    expect(b.tryTake()).toBe(false); // half a token is not a token
    clock.advance(249);
    expect(b.tryTake()).toBe(false);
    clock.advance(1);
    expect(b.tryTake()).toBe(true);
    expect(b.tokens()).toBeCloseTo(0, 12);
    clock.advance(1250);
    expect(b.tokens()).toBeCloseTo(2.5, 12);
  });

  it('fractional rates refill too (0.5 token per second)', () => {
    const { b, clock } = bucket(0.5, 1);
    expect(b.tryTake()).toBe(true);
    clock.advance(1999);
    expect(b.tryTake()).toBe(false);
    clock.advance(1);
    expect(b.tryTake()).toBe(true);
  });

  it('never refills above burst', () => {
    const { b, clock } = bucket(1000, 4);
    b.tryTake();
    clock.advance(3_600_000);
    expect(b.tokens()).toBe(4);
    for (let i = 0; i < 4; i++) expect(b.tryTake()).toBe(true);
    expect(b.tryTake()).toBe(false);
  });

  it('msUntilToken: 0 with a whole token, else the ms until the next one, rounded up', () => {
    const { b, clock } = bucket(4, 1);
    expect(b.msUntilToken()).toBe(0);
    b.tryTake();
    expect(b.msUntilToken()).toBe(250);
    clock.advance(100);
    expect(b.msUntilToken()).toBe(150);
    clock.advance(150);
    expect(b.msUntilToken()).toBe(0);
    const thirds = bucket(3, 1).b;
    thirds.tryTake();
    expect(thirds.msUntilToken()).toBe(334); // 333.3 ms, rounded up so the wait is enough
  });

  it('waiting msUntilToken() is always enough for tryTake()', () => {
    const { b, clock } = bucket(3, 2);
    b.tryTake();
    b.tryTake();
    for (let i = 0; i < 10; i++) {
      const wait = b.msUntilToken();
      expect(wait).toBeGreaterThan(0);
      clock.advance(wait - 1);
      expect(b.tryTake()).toBe(false);
      clock.advance(1);
      expect(b.tryTake()).toBe(true);
    }
  });

  it('reserve(maxWait) returns growing waits and refuses past maxWait without reserving', () => {
    const { b, clock } = bucket(10, 1);
    expect(b.reserve(0)).toBe(0); // the whole token there is
    expect(b.reserve(1000)).toBe(100);
    expect(b.reserve(1000)).toBe(200);
    expect(b.tokens()).toBeCloseTo(-2, 12);
    expect(b.reserve(299)).toBeUndefined(); // would be 300
    expect(b.tokens()).toBeCloseTo(-2, 12); // nothing reserved
    expect(b.reserve(300)).toBe(300);
    // time pays the debt off; the reservations come before anyone else's tryTake
    clock.advance(300);
    expect(b.tryTake()).toBe(false);
    expect(b.msUntilToken()).toBe(100);
    clock.advance(100);
    expect(b.tryTake()).toBe(true);
  });

  it('a token accrued in small steps is as whole as one accrued at once', () => {
    // 100 tokens/s: ten 1 ms steps are exactly 10 ms, exactly one token.
    const { b, clock } = bucket(100, 5);
    while (b.tryTake());
    for (let i = 0; i < 10; i++) {
      clock.advance(1);
      b.tokens();
    }
    expect(b.msUntilToken()).toBe(0);
    expect(b.tryTake()).toBe(true);
  });

  it('the wait for the next token is exact, not a millisecond long', () => {
    // 1 token/s: 3 ms after emptying, 0.003 tokens are there and the next whole one is 997 ms away.
    const { b, clock } = bucket(1, 2);
    b.tryTake();
    clock.advance(3);
    b.tryTake();
    expect(b.msUntilToken()).toBe(997);
    expect(b.reserve(997)).toBe(997); // a shaper with max_delay 997 ms must queue it, not 429
  });
});

// ---------------------------------------------------------------------------------------------
// Model-based: the same bucket in exact integer arithmetic.
// ---------------------------------------------------------------------------------------------

/**
 * A rate of num/den tokens per second is num units per ms, with 1000·den units to a token: every
 * quantity is an integer, so the model has no rounding at all.
 */
class ExactBucket {
  private bal: number;
  private last: number;
  readonly unit: number;

  constructor(
    private readonly num: number,
    den: number,
    readonly burst: number,
    private readonly clock: ManualClock,
  ) {
    this.unit = 1000 * den;
    this.bal = burst * this.unit;
    this.last = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
    if (now > this.last) {
      this.bal = Math.min(this.burst * this.unit, this.bal + (now - this.last) * this.num);
      this.last = now;
    }
  }

  /** Tokens, as units (exact). */
  units(): number {
    this.refill();
    return this.bal;
  }

  tryTake(): boolean {
    this.refill();
    if (this.bal < this.unit) return false;
    this.bal -= this.unit;
    return true;
  }

  msUntilToken(): number {
    this.refill();
    return this.bal >= this.unit ? 0 : Math.ceil((this.unit - this.bal) / this.num);
  }

  reserve(maxWaitMs: number): number | undefined {
    const wait = this.msUntilToken();
    if (wait > maxWaitMs) return undefined;
    this.bal -= this.unit;
    return wait;
  }
}

type Op =
  | { readonly kind: 'advance'; readonly ms: number }
  | { readonly kind: 'take' }
  | { readonly kind: 'reserve'; readonly maxWait: number }
  | { readonly kind: 'wait' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('advance' as const),
      ms: fc.oneof(
        fc.integer({ min: 0, max: 5 }),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 5000 }),
      ),
    }),
  },
  { weight: 5, arbitrary: fc.constant({ kind: 'take' as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('reserve' as const),
      maxWait: fc.integer({ min: 0, max: 2000 }),
    }),
  },
  /** Advance exactly msUntilToken(): lands on the boundaries where rounding would show. */
  { weight: 2, arbitrary: fc.constant({ kind: 'wait' as const }) },
);

/**
 * Rates num/den with den a power of two: exactly representable as a double, so the bucket is given
 * exactly the rate the model uses (0.7 would reach it as 0.69999999999999995559...).
 */
const shapeArb = fc.record({
  num: fc.integer({ min: 1, max: 200 }),
  den: fc.constantFrom(1, 2, 4, 8),
  burst: fc.integer({ min: 1, max: 10 }),
});

describe('TokenBucket: model-based', () => {
  it('agrees with an exact model, stays within burst, and never grants more than burst + rate·t', () => {
    fc.assert(
      fc.property(
        shapeArb,
        fc.array(opArb, { minLength: 1, maxLength: 100, size: 'max' }),
        ({ num, den, burst }, ops) => {
          const rate = num / den;
          const clock = new ManualClock();
          const b = new TokenBucket(rate, burst, clock);
          const m = new ExactBucket(num, den, burst, clock);
          const start = clock.now();
          let takes = 0;
          /** When each granted token lets its request go: now for tryTake, now + wait for reserve. */
          const releases: number[] = [];

          for (const op of ops) {
            switch (op.kind) {
              case 'advance':
                clock.advance(op.ms);
                break;
              case 'wait':
                clock.advance(m.msUntilToken());
                break;
              case 'take': {
                const want = m.tryTake();
                expect(b.tryTake(), 'tryTake granted').toBe(want);
                if (want) {
                  takes++;
                  releases.push(clock.now());
                }
                break;
              }
              case 'reserve': {
                const want = m.reserve(op.maxWait);
                expect(b.reserve(op.maxWait), 'reserve wait').toBe(want);
                if (want !== undefined) releases.push(clock.now() + want);
                break;
              }
            }
            const tokens = b.tokens();
            expect(tokens).toBeLessThanOrEqual(burst);
            expect(Math.abs(tokens - m.units() / m.unit)).toBeLessThan(1e-9);
            expect(b.msUntilToken()).toBe(m.msUntilToken());
            // the contract, in exact arithmetic: takes <= burst + rate * elapsed seconds
            expect(takes * m.unit).toBeLessThanOrEqual(burst * m.unit + (clock.now() - start) * num);
          }
          // and for the shaper: by any time T, at most burst + rate * T requests were let go
          releases.sort((x, y) => x - y);
          releases.forEach((t, i) => {
            expect((i + 1) * m.unit).toBeLessThanOrEqual(burst * m.unit + (t - start) * num);
          });
        },
      ),
      { numRuns: 500 },
    );
  });
});
