/**
 * The promotion-day traffic profile: phases, each with a request rate, what the scripted services
 * do during it, and the request mix. One table, read by the traffic generator, the scripted
 * upstreams and the report, so the three can never disagree about what happened when.
 */

/** What the scripted services do during a phase. */
export interface Faults {
  /** recommendation answers 500 to everything. */
  readonly recommendationDown: boolean;
  /** inventory waits this long before answering (0: at once). */
  readonly inventoryDelayMs: number;
  /** payment answers every other request with 503 (charging nothing) and is slow on the others. */
  readonly paymentBlip: boolean;
  /** orders is not listening: connections are refused. */
  readonly ordersDown: boolean;
}

export interface Phase {
  readonly name: string;
  /** What a person watching should notice. */
  readonly story: string;
  readonly seconds: number;
  /** Requests per second the clients start (open loop: they do not wait for answers). */
  readonly rate: number;
  readonly faults: Faults;
  /** Share of user actions that are checkouts in this phase, half of them sagas (the rest follows MIX). */
  readonly checkoutShare: number;
}

const HEALTHY: Faults = {
  recommendationDown: false,
  inventoryDelayMs: 0,
  paymentBlip: false,
  ordersDown: false,
};

/** The request mix of a user action, by weight (checkouts come from Phase.checkoutShare). */
export const MIX = [
  { kind: 'product', weight: 45 },
  { kind: 'recommendations', weight: 15 },
  { kind: 'reco-svc', weight: 5 },
  { kind: 'stock', weight: 15 },
  { kind: 'search', weight: 5 },
  { kind: 'order', weight: 8 },
] as const;

/**
 * `checkout`: a charge at /payments with an Idempotency-Key (double clicks, retries);
 * `saga-checkout`: POST /checkout, the checkout saga (order -> payment -> reservation). Every other
 * checkout of Phase.checkoutShare is one of each.
 */
export type Kind = (typeof MIX)[number]['kind'] | 'checkout' | 'saga-checkout';

export const KINDS: readonly Kind[] = [...MIX.map((m) => m.kind), 'checkout', 'saga-checkout'];

/** Steady and surge rates (requests per second): the 10x surge of the design document. */
export const STEADY_RATE = 20;
export const SURGE_RATE = 200;

export type ProfileName = 'full' | 'quick' | 'test';

/** Phase lengths in seconds for each profile: full ~90 s, quick ~20 s, test (npm test) ~17 s. */
const LENGTHS: Record<ProfileName, readonly number[]> = {
  full: [10, 15, 12, 12, 10, 12, 15],
  quick: [2, 3, 3, 3, 2.5, 3, 5],
  test: [2, 2.5, 2.5, 2.5, 2, 2.5, 5],
};

export function profile(name: ProfileName): readonly Phase[] {
  const [steady, surge, reco, inventory, payment, orders, recovery] = LENGTHS[name] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return [
    {
      name: 'steady',
      story: 'normal traffic; caches fill',
      seconds: steady,
      rate: STEADY_RATE,
      faults: HEALTHY,
      checkoutShare: 0.07,
    },
    {
      name: 'surge',
      story: '10x traffic: the catalog limit sheds the excess to cached pages',
      seconds: surge,
      rate: SURGE_RATE,
      faults: HEALTHY,
      checkoutShare: 0.07,
    },
    {
      name: 'recommendation-fails',
      story: 'recommendation answers 500: top items instead, breaker opens',
      seconds: reco,
      rate: SURGE_RATE,
      faults: { ...HEALTHY, recommendationDown: true },
      checkoutShare: 0.07,
    },
    {
      name: 'inventory-slow',
      story: 'inventory takes 600 ms: cached stock after 150 ms, breaker opens',
      seconds: inventory,
      rate: SURGE_RATE,
      faults: { ...HEALTHY, inventoryDelayMs: 600 },
      checkoutShare: 0.07,
    },
    {
      name: 'payment-blips',
      story: 'payment fails every other call; clients retry with the same Idempotency-Key',
      seconds: payment,
      rate: STEADY_RATE * 2,
      faults: { ...HEALTHY, paymentBlip: true },
      checkoutShare: 0.3,
    },
    {
      name: 'orders-down',
      story: 'orders refuses connections',
      seconds: orders,
      rate: STEADY_RATE * 2,
      faults: { ...HEALTHY, ordersDown: true },
      checkoutShare: 0.07,
    },
    {
      name: 'recovery',
      story: 'everything is back: breakers probe and close',
      seconds: recovery,
      rate: STEADY_RATE,
      faults: HEALTHY,
      checkoutShare: 0.07,
    },
  ];
}

/** Start offsets (ms from the start of the run) of each phase, and the total length. */
export function timeline(phases: readonly Phase[]): { starts: number[]; totalMs: number } {
  const starts: number[] = [];
  let t = 0;
  for (const p of phases) {
    starts.push(t);
    t += p.seconds * 1000;
  }
  return { starts, totalMs: t };
}

/** The phase index at `ms` from the start (the last phase after the end). */
export function phaseAt(starts: readonly number[], ms: number): number {
  let i = 0;
  while (i + 1 < starts.length && (starts[i + 1] ?? Number.POSITIVE_INFINITY) <= ms) i++;
  return i;
}
