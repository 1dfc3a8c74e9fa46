/**
 * The load-balancing strategies in isolation: randomness from a seeded PRNG (mulberry32), time from
 * a ManualClock, so every count below is reproducible. Examples per strategy, a small simulated
 * workload for p2c_ewma, then a property test over all strategies (pick returns a candidate, never
 * `avoid` when another is left).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Balanced, type BalancerKind, createBalancer, PeakEwma } from '../../src/upstream/balancer.js';
import { ManualClock } from '../kit/clock.js';

const KINDS: readonly BalancerKind[] = ['round_robin', 'least_conn', 'random', 'p2c_ewma'];

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Ep extends Balanced {
  readonly name: string;
  inflight: number;
}

/** Endpoints a, b, c, ... with the given weights, idle and not yet measured. */
function endpoints(weights: readonly number[], clock = new ManualClock()): Ep[] {
  return weights.map((weight, i) => ({
    name: String.fromCharCode(97 + i),
    weight,
    inflight: 0,
    latency: new PeakEwma(10_000, () => clock.now()),
  }));
}

function names(picks: readonly Ep[]): string {
  return picks.map((e) => e.name).join('');
}

/** How many times each endpoint was picked in `n` calls of `pick`. */
function tally(n: number, pick: () => Ep): Record<string, number> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const e = pick();
    counts[e.name] = (counts[e.name] ?? 0) + 1;
  }
  return counts;
}

function countChars(seq: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const c of seq) counts[c] = (counts[c] ?? 0) + 1;
  return counts;
}

function longestRun(seq: string, ch: string): number {
  let best = 0;
  let run = 0;
  for (const c of seq) {
    run = c === ch ? run + 1 : 0;
    best = Math.max(best, run);
  }
  return best;
}

describe('PeakEwma', () => {
  it('is 0 and unsampled before the first sample', () => {
    const clock = new ManualClock();
    const l = new PeakEwma(10_000, () => clock.now());
    expect(l.sampled).toBe(false);
    expect(l.value()).toBe(0);
    l.observe(40);
    expect(l.sampled).toBe(true);
    expect(l.value()).toBe(40);
  });

  it('jumps to a sample above the estimate at once (peak)', () => {
    const clock = new ManualClock();
    const l = new PeakEwma(10_000, () => clock.now());
    l.observe(10);
    clock.advance(1);
    l.observe(500);
    expect(l.value()).toBe(500);
  });

  it('moves toward a lower sample with weight 1 - exp(-elapsed/decay)', () => {
    const clock = new ManualClock();
    clock.advance(5_000);
    const l = new PeakEwma(10_000, () => clock.now());
    l.observe(100);
    clock.advance(10_000); // one decay period: the estimate has faded to 100/e
    const faded = 100 * Math.exp(-1);
    expect(l.value()).toBeCloseTo(faded, 9);
    l.observe(10);
    const w = Math.exp(-1);
    expect(l.value()).toBeCloseTo(faded * w + 10 * (1 - w), 9);
    // A sample right after the last one barely moves it (weight ~ 0 over no elapsed time).
    const before = l.value();
    l.observe(1);
    expect(l.value()).toBe(before);
  });

  it('fades toward 0 without samples, and reading it does not change it', () => {
    const clockA = new ManualClock();
    const clockB = new ManualClock();
    const a = new PeakEwma(1_000, () => clockA.now());
    const b = new PeakEwma(1_000, () => clockB.now());
    a.observe(300);
    b.observe(300);
    for (let i = 0; i < 50; i++) {
      clockA.advance(100);
      a.value(); // read often
    }
    clockB.advance(5_000); // read once
    expect(a.value()).toBeCloseTo(b.value(), 9);
    expect(b.value()).toBeCloseTo(300 * Math.exp(-5), 9);
    expect(b.sampled).toBe(true);
  });

  it('ignores negative and non-finite samples', () => {
    const clock = new ManualClock();
    const l = new PeakEwma(10_000, () => clock.now());
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) l.observe(bad);
    expect(l.sampled).toBe(false);
    l.observe(20);
    l.observe(Number.NaN);
    expect(l.value()).toBe(20);
  });
});

describe('round_robin', () => {
  it('with equal weights is plain rotation, exactly even over N*k picks', () => {
    const eps = endpoints([1, 1, 1, 1]);
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    const seq = names(Array.from({ length: 4 * 25 }, () => b.pick(eps)));
    expect(seq).toBe('abcd'.repeat(25));
  });

  it('with weights 3:1 picks exactly 3:1 over 4k picks, 3 of every 4', () => {
    const eps = endpoints([3, 1]);
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    const seq = names(Array.from({ length: 4 * 50 }, () => b.pick(eps)));
    expect(countChars(seq)).toEqual({ a: 150, b: 50 });
    for (let i = 0; i < seq.length; i += 4) expect(seq.slice(i, i + 4)).toBe('aaba');
  });

  it("follows nginx's smooth sequence: 5,1,1 gives a a b a c a a", () => {
    const eps = endpoints([5, 1, 1]);
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    expect(names(Array.from({ length: 14 }, () => b.pick(eps)))).toBe('aabacaa'.repeat(2));
  });

  it('interleaves 2:1:1 smoothly: exact shares, never three of the heavy one in a row', () => {
    const eps = endpoints([2, 1, 1]);
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    const seq = names(Array.from({ length: 400 }, () => b.pick(eps)));
    expect(countChars(seq)).toEqual({ a: 200, b: 100, c: 100 });
    expect(longestRun(seq, 'a')).toBeLessThanOrEqual(2);
  });

  it('stays exact when the candidate list is a new array in a new order on every call', () => {
    const eps = endpoints([3, 2, 1]);
    const rnd = mulberry32(7);
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    for (let cycle = 0; cycle < 50; cycle++) {
      const counts = tally(6, () => {
        const shuffled = [...eps].sort(() => rnd() - 0.5);
        return b.pick(shuffled);
      });
      expect(counts).toEqual({ a: 3, b: 2, c: 1 });
    }
  });

  it('carries on when an endpoint leaves and comes back', () => {
    const eps = endpoints([1, 1, 1]);
    const [a, , c] = eps as [Ep, Ep, Ep];
    const b = createBalancer<Ep>('round_robin', mulberry32(1));
    expect(names([b.pick(eps), b.pick(eps)])).toBe('ab');
    // b is out: c, owed its turn from the first round, catches up, then a and c alternate.
    expect(names(Array.from({ length: 6 }, () => b.pick([a, c])))).toBe('ccacac');
    const back = tally(300, () => b.pick(eps));
    for (const n of Object.values(back)) expect(Math.abs(n - 100)).toBeLessThanOrEqual(1);
  });

  it('keeps separate state per balancer', () => {
    const eps = endpoints([1, 1]);
    const b1 = createBalancer<Ep>('round_robin', mulberry32(1));
    const b2 = createBalancer<Ep>('round_robin', mulberry32(1));
    expect(names([b1.pick(eps), b2.pick(eps), b1.pick(eps), b2.pick(eps)])).toBe('aabb');
  });
});

describe('least_conn', () => {
  it('picks the candidate with the fewest in flight', () => {
    const eps = endpoints([1, 1, 1]);
    const [a, b, c] = eps as [Ep, Ep, Ep];
    a.inflight = 4;
    b.inflight = 1;
    c.inflight = 2;
    const lb = createBalancer<Ep>('least_conn', mulberry32(1));
    for (let i = 0; i < 20; i++) expect(lb.pick(eps)).toBe(b);
  });

  it('divides in-flight by weight', () => {
    const eps = endpoints([3, 1]);
    const [a, b] = eps as [Ep, Ep];
    a.inflight = 5; // 5/3 per unit of weight
    b.inflight = 2; // 2/1
    const lb = createBalancer<Ep>('least_conn', mulberry32(1));
    expect(lb.pick(eps)).toBe(a);
    a.inflight = 7; // 7/3 > 2
    expect(lb.pick(eps)).toBe(b);
  });

  it('splits ties across the tied endpoints at random, never picking a busier one', () => {
    const eps = endpoints([1, 1, 1]);
    (eps[2] as Ep).inflight = 1;
    const lb = createBalancer<Ep>('least_conn', mulberry32(2));
    const counts = tally(2_000, () => lb.pick(eps));
    expect(counts.c).toBeUndefined();
    expect(counts.a).toBeGreaterThan(900);
    expect(counts.b).toBeGreaterThan(900);
  });

  it('breaks ties in proportion to weight (idle 3:1 -> 75% +/- 3%)', () => {
    const eps = endpoints([3, 1]);
    const lb = createBalancer<Ep>('least_conn', mulberry32(3));
    const counts = tally(4_000, () => lb.pick(eps));
    expect(Math.abs((counts.a ?? 0) / 4_000 - 0.75)).toBeLessThan(0.03);
  });
});

describe('random', () => {
  it('honours weights: 1:3 over 10,000 picks is 25% +/- 2%', () => {
    const eps = endpoints([1, 3]);
    const lb = createBalancer<Ep>('random', mulberry32(4));
    const counts = tally(10_000, () => lb.pick(eps));
    expect(Math.abs((counts.a ?? 0) / 10_000 - 0.25)).toBeLessThan(0.02);
  });

  it('spreads equal weights evenly (4 x 25% +/- 2% over 10,000 picks)', () => {
    const eps = endpoints([1, 1, 1, 1]);
    const lb = createBalancer<Ep>('random', mulberry32(5));
    const counts = tally(10_000, () => lb.pick(eps));
    for (const e of eps) expect(Math.abs((counts[e.name] ?? 0) / 10_000 - 0.25)).toBeLessThan(0.02);
  });

  it('copes with a random() at the very top of its range', () => {
    const eps = endpoints([0.1, 0.2, 0.3]);
    const lb = createBalancer<Ep>('random', () => 1 - Number.EPSILON / 2);
    expect(lb.pick(eps).name).toBe('c');
  });
});

describe('p2c_ewma', () => {
  it('never picks the slowest once latencies are observed, and spreads over the rest', () => {
    const clock = new ManualClock();
    const eps = endpoints([1, 1, 1], clock);
    const [a, b, c] = eps as [Ep, Ep, Ep];
    a.latency.observe(20);
    b.latency.observe(25);
    c.latency.observe(400);
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(6));
    const counts = tally(3_000, () => lb.pick(eps));
    expect(counts.c).toBeUndefined(); // the costliest of a pair never wins
    // a wins (a,b) and (a,c); b wins only (b,c): about 2/3 and 1/3.
    expect(Math.abs((counts.a ?? 0) / 3_000 - 2 / 3)).toBeLessThan(0.03);
  });

  it('never picks a loaded endpoint when latencies are equal', () => {
    const clock = new ManualClock();
    const eps = endpoints([1, 1, 1], clock);
    for (const e of eps) e.latency.observe(50);
    (eps[0] as Ep).inflight = 10;
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(7));
    const counts = tally(3_000, () => lb.pick(eps));
    expect(counts.a).toBeUndefined();
    expect(counts.b).toBeGreaterThan(1_300);
    expect(counts.c).toBeGreaterThan(1_300);
  });

  it('under a simulated load, sends most requests away from a slow endpoint', () => {
    const clock = new ManualClock();
    const eps = endpoints([1, 1, 1], clock);
    const latencyOf: Record<string, number> = { a: 20, b: 20, c: 400 };
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(8));
    const counts = tally(2_000, () => {
      const e = lb.pick(eps);
      const ms = latencyOf[e.name] as number;
      e.inflight++;
      clock.setTimeout(() => {
        e.inflight--;
        e.latency.observe(ms);
      }, ms);
      clock.advance(5); // 200 requests per second
      return e;
    });
    // Round robin would send c a third (667); p2c_ewma sends it only its first probes (2 here).
    expect(counts.c ?? 0).toBeLessThan(40);
    expect(counts.c ?? 0).toBeGreaterThan(0);
  });

  it('tries a new (unmeasured) endpoint while it is idle, but not again until it is measured', () => {
    const clock = new ManualClock();
    const eps = endpoints([1, 1, 1], clock);
    const [a, b, c] = eps as [Ep, Ep, Ep];
    a.latency.observe(50);
    b.latency.observe(50);
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(9));
    // c is in 2 of the 3 pairs and wins both while idle.
    const idle = tally(3_000, () => lb.pick(eps));
    expect(Math.abs((idle.c ?? 0) / 3_000 - 2 / 3)).toBeLessThan(0.03);
    c.inflight = 1; // its first attempt is out, no answer yet
    const busy = tally(3_000, () => lb.pick(eps));
    expect(busy.c).toBeUndefined();
    c.inflight = 0;
    c.latency.observe(500); // measured: slow
    expect(tally(3_000, () => lb.pick(eps)).c).toBeUndefined();
  });

  it('tries a slow endpoint again once its estimate has faded', () => {
    const clock = new ManualClock();
    const eps = endpoints([1, 1], clock);
    const [a, b] = eps as [Ep, Ep];
    a.latency.observe(10);
    b.latency.observe(1_000);
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(10));
    let seconds = 0;
    while (lb.pick(eps) === a && seconds < 600) {
      clock.advance(1_000);
      a.latency.observe(10); // a keeps being used and measured
      seconds++;
    }
    // 1000 * exp(-t/10s) < 10 once t > 10s * ln(100), about 46 s.
    expect(seconds).toBe(47);
    expect(b.latency.value()).toBeLessThan(10);
  });

  it('spreads evenly while nothing is measured or loaded', () => {
    const eps = endpoints([1, 1, 1]);
    const lb = createBalancer<Ep>('p2c_ewma', mulberry32(11));
    const counts = tally(3_000, () => lb.pick(eps));
    for (const e of eps) expect(Math.abs((counts[e.name] ?? 0) / 3_000 - 1 / 3)).toBeLessThan(0.03);
  });
});

describe('every strategy', () => {
  for (const kind of KINDS) {
    it(`${kind}: returns a single candidate, and avoids the tried one when there is another`, () => {
      const eps = endpoints([1, 2, 3]);
      const rnd = mulberry32(12);
      const lb = createBalancer<Ep>(kind, mulberry32(13));
      const only = eps[0] as Ep;
      expect(lb.pick([only])).toBe(only);
      expect(lb.pick([only], only)).toBe(only); // nothing else to take
      for (let i = 0; i < 300; i++) {
        const avoid = eps[Math.floor(rnd() * eps.length)] as Ep;
        expect(lb.pick(eps, avoid)).not.toBe(avoid);
        const pair = eps.filter((e) => e !== avoid).slice(0, 1);
        expect(lb.pick([avoid, ...pair], avoid)).toBe(pair[0]);
      }
      const stranger = endpoints([1])[0] as Ep; // an avoid that is not a candidate changes nothing
      expect(eps).toContain(lb.pick(eps, stranger));
    });
  }

  it('property: pick returns a member of the list, never `avoid` if another member exists', () => {
    const endpointArb = fc.record({
      weight: fc.oneof(fc.integer({ min: 1, max: 10 }), fc.double({ min: 0.001, max: 1000, noNaN: true })),
      inflight: fc.nat(20),
      sample: fc.option(fc.double({ min: 0, max: 10_000, noNaN: true }), { nil: undefined }),
    });
    fc.assert(
      fc.property(
        fc.constantFrom(...KINDS),
        fc.array(endpointArb, { minLength: 1, maxLength: 8 }),
        // random() values, edge values included; cycled.
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), {
          minLength: 1,
          maxLength: 16,
        }),
        // which candidate to avoid: an index, one past the end (a stranger), or none.
        fc.option(fc.nat(8), { nil: undefined }),
        fc.array(fc.nat(20_000), { minLength: 1, maxLength: 6 }), // clock steps between picks
        (kind, specs, randoms, avoidIndex, steps) => {
          const clock = new ManualClock();
          const eps = endpoints(
            specs.map((s) => s.weight),
            clock,
          );
          specs.forEach((s, i) => {
            const e = eps[i] as Ep;
            e.inflight = s.inflight;
            if (s.sample !== undefined) e.latency.observe(s.sample);
          });
          let r = 0;
          const lb = createBalancer<Ep>(kind, () => randoms[r++ % randoms.length] as number);
          const avoid =
            avoidIndex === undefined ? undefined : (eps[avoidIndex] ?? (endpoints([1], clock)[0] as Ep));
          for (const step of steps) {
            clock.advance(step);
            const picked = lb.pick(eps, avoid);
            expect(eps).toContain(picked);
            if (eps.some((e) => e !== avoid)) expect(picked).not.toBe(avoid);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});
