/**
 * Load-balancing strategies: which of an upstream's candidate endpoints gets the next attempt. Pure
 * logic: randomness and the clock are injected, there is no I/O and no state outside a balancer
 * instance. The caller has already narrowed the candidates to the routable ones (health, ejection,
 * priority, group); a balancer only chooses among them. Weights are > 0.
 *
 * round_robin: smooth weighted round robin, nginx's algorithm. Each pick adds every candidate's
 *   weight to its running `current`, picks the largest (the first one listed on a tie) and takes the
 *   sum of the candidates' weights off the winner. With a fixed set of candidates each endpoint gets
 *   exactly `weight` of every `sum of weights` picks, spread out (5,1,1 gives a a b a c a a, not
 *   a a a a a b c); equal weights give plain rotation. `current` is kept per endpoint object (a
 *   WeakMap), so the rotation carries on when the candidate list changes between calls (another
 *   order, an endpoint ejected and readmitted), and a dropped endpoint leaves nothing behind.
 *
 * least_conn: the candidate with the fewest attempts in flight per unit of weight (inflight /
 *   weight, compared exactly by cross-multiplying, as nginx does). Ties are broken at random in
 *   proportion to weight, so an idle upstream still spreads by weight.
 *
 * random: weighted random; each candidate with probability weight / sum of weights.
 *
 * p2c_ewma: power of two choices over peak-EWMA latency (Finagle's and Linkerd's): two distinct
 *   candidates drawn at random by weight, and the cheaper of the two wins, where cost = latency
 *   estimate * (inflight + 1) / weight (a tie goes to the less loaded, then to the first drawn). An
 *   endpoint with no latency sample yet costs 0 while it is idle, so a new endpoint is tried and
 *   measured; while its first attempt is still in flight it costs a large penalty (plus its load),
 *   so it is not flooded before its speed is known (Finagle's rule). Drawing two at random rather
 *   than taking the global minimum keeps many proxies that share stale estimates from all piling
 *   onto the same endpoint.
 *
 * PeakEwma: an endpoint's latency estimate in ms. A sample above the current estimate replaces it at
 *   once (peak: a slowdown shows up with the first slow response); a sample below it pulls the
 *   estimate toward the sample with weight 1 - exp(-elapsed / decay), elapsed being the time since
 *   the previous sample, so the estimate forgets over `decay` ms of time rather than a number of
 *   samples. Between samples the estimate fades toward 0 by exp(-elapsed / decay), as in Finagle and
 *   Linkerd: an endpoint that was slow once and then got no traffic looks cheap again after a while,
 *   is tried, and is measured anew instead of being starved forever. Reading it changes nothing.
 *
 * Every strategy: one candidate is returned as is; `avoid` (the endpoint the previous attempt of a
 * retry used) is left out whenever another candidate remains, and round robin does not advance its
 * `current` for it (nginx skips the peers a request already tried the same way).
 */

/** What a balancer needs to know about an endpoint. */
export interface Balanced {
  /** > 0, default 1. */
  readonly weight: number;
  /** Requests in flight to it now. */
  readonly inflight: number;
  /** Its latency estimate. */
  readonly latency: PeakEwma;
}

export type BalancerKind = 'round_robin' | 'least_conn' | 'random' | 'p2c_ewma';

export interface Balancer<E extends Balanced> {
  /**
   * Picks one of `candidates` (never empty; already filtered to healthy, non-ejected ones).
   * `avoid` (the endpoint a retry already tried) is not picked when another candidate exists.
   */
  pick(candidates: readonly E[], avoid?: E): E;
}

/** Peak-EWMA latency estimate (see the header). */
export class PeakEwma {
  private estimate = 0;
  private at = 0;
  private seen = false;

  constructor(
    readonly decayMs = 10_000,
    private readonly now: () => number,
  ) {}

  /** Whether any sample has been observed yet. */
  get sampled(): boolean {
    return this.seen;
  }

  /** Records one latency sample in ms; negative or non-finite samples are ignored. */
  observe(latencyMs: number): void {
    if (!Number.isFinite(latencyMs) || latencyMs < 0) return;
    const t = this.now();
    const current = this.valueAt(t);
    if (!this.seen || latencyMs >= current) {
      this.estimate = latencyMs;
    } else {
      const w = Math.exp(-Math.max(0, t - this.at) / this.decayMs);
      this.estimate = current * w + latencyMs * (1 - w);
    }
    this.at = t;
    this.seen = true;
  }

  /** The estimate in ms, faded to now; 0 before the first sample. */
  value(): number {
    return this.valueAt(this.now());
  }

  private valueAt(t: number): number {
    if (!this.seen) return 0;
    return this.estimate * Math.exp(-Math.max(0, t - this.at) / this.decayMs);
  }
}

export function createBalancer<E extends Balanced>(kind: BalancerKind, random: () => number): Balancer<E> {
  switch (kind) {
    case 'round_robin':
      return roundRobin<E>();
    case 'least_conn':
      return leastConn<E>(random);
    case 'random':
      return weightedRandom<E>(random);
    case 'p2c_ewma':
      return p2cEwma<E>(random);
    default:
      throw new Error(`unknown load balancing strategy: ${String(kind satisfies never)}`);
  }
}

/** `candidates` without `avoid`, unless nothing else would remain. */
function eligible<E>(candidates: readonly E[], avoid: E | undefined): readonly E[] {
  if (avoid === undefined || candidates.length < 2 || !candidates.includes(avoid)) return candidates;
  const rest = candidates.filter((e) => e !== avoid);
  return rest.length > 0 ? rest : candidates;
}

/** One of `list` at random in proportion to weight, skipping `skip`; the last one if floats fall short. */
function drawWeighted<E extends Balanced>(list: readonly E[], random: () => number, skip?: E): E {
  let total = 0;
  for (const e of list) if (e !== skip) total += e.weight;
  let r = random() * total;
  let last: E | undefined;
  for (const e of list) {
    if (e === skip) continue;
    last = e;
    r -= e.weight;
    if (r < 0) return e;
  }
  return last ?? (list[0] as E);
}

function roundRobin<E extends Balanced>(): Balancer<E> {
  const current = new WeakMap<E, number>();
  return {
    pick(candidates, avoid) {
      const list = eligible(candidates, avoid);
      if (list.length === 1) return list[0] as E;
      let total = 0;
      let best: E | undefined;
      let bestCurrent = Number.NEGATIVE_INFINITY;
      for (const e of list) {
        const c = (current.get(e) ?? 0) + e.weight;
        current.set(e, c);
        total += e.weight;
        if (c > bestCurrent) {
          best = e;
          bestCurrent = c;
        }
      }
      const chosen = best as E;
      current.set(chosen, bestCurrent - total);
      return chosen;
    },
  };
}

function leastConn<E extends Balanced>(random: () => number): Balancer<E> {
  return {
    pick(candidates, avoid) {
      const list = eligible(candidates, avoid);
      if (list.length === 1) return list[0] as E;
      let ties: E[] = [];
      for (const e of list) {
        const best = ties[0];
        // e.inflight / e.weight vs best.inflight / best.weight, without dividing.
        const d = best === undefined ? -1 : e.inflight * best.weight - best.inflight * e.weight;
        if (d < 0) ties = [e];
        else if (d === 0) ties.push(e);
      }
      return ties.length === 1 ? (ties[0] as E) : drawWeighted(ties, random);
    },
  };
}

function weightedRandom<E extends Balanced>(random: () => number): Balancer<E> {
  return {
    pick(candidates, avoid) {
      const list = eligible(candidates, avoid);
      return list.length === 1 ? (list[0] as E) : drawWeighted(list, random);
    },
  };
}

/** Cost of an endpoint that has an attempt in flight but no latency sample yet (in ms-equivalents). */
const UNMEASURED_PENALTY = 1e12;

function cost(e: Balanced): number {
  const inflight = Math.max(0, e.inflight);
  if (!e.latency.sampled) return inflight === 0 ? 0 : UNMEASURED_PENALTY + inflight / e.weight;
  return (e.latency.value() * (inflight + 1)) / e.weight;
}

function p2cEwma<E extends Balanced>(random: () => number): Balancer<E> {
  return {
    pick(candidates, avoid) {
      const list = eligible(candidates, avoid);
      if (list.length === 1) return list[0] as E;
      const a = drawWeighted(list, random);
      const b = drawWeighted(list, random, a);
      const ca = cost(a);
      const cb = cost(b);
      if (ca !== cb) return ca < cb ? a : b;
      return (b.inflight + 1) / b.weight < (a.inflight + 1) / a.weight ? b : a;
    },
  };
}
