/**
 * From what was recorded (client samples, upstream arrivals and charges, breakwater's breaker and
 * degradation log lines) to the figures of the report and the targets they are held to. Pure
 * functions of the recording: the same run always gives the same verdict.
 */
import type { PolicyEvent } from './breakwater.js';
import { type Faults, type Phase, SURGE_RATE } from './profile.js';
import type { Action, Sample } from './traffic.js';
import type { Service } from './upstreams.js';

/** The design document's targets, as this scenario checks them. */
export const TARGETS = {
  availability: 0.999,
  p99Ms: 200,
  duplicateCharges: 0,
  /**
   * Time for "one probe" after reset_timeout: the next request to that upstream through that
   * replica, and its answer. Per replica: with N replicas each sees 1/N of the requests, so the
   * wait for the next one is N times as long.
   */
  probeAllowanceMs: 1500,
  /**
   * The limiter admits at breakwater, the count is taken at the upstream: requests admitted over
   * 1 s can arrive within a slightly shorter span. A window of 1 s at the upstream is held to
   * rate x (1 s + this) + burst.
   */
  transitJitterMs: 50,
} as const;

export interface PhaseFigures {
  readonly name: string;
  readonly story: string;
  readonly seconds: number;
  readonly rate: number;
  readonly sent: number;
  readonly ok_2xx: number;
  readonly by_fallback: number;
  readonly accepted_202: number;
  readonly shed_429: number;
  readonly conflict_409: number;
  readonly errors: number;
  readonly p50_ms: number | null;
  readonly p99_ms: number | null;
  readonly actions: number;
  readonly actions_ok: number;
}

export interface Recovery {
  readonly upstream: string;
  readonly replica: number;
  /**
   * Seconds from the start when the upstream's fault ended. null: none was scripted, and
   * closed_after_ms counts from the breaker's last opening.
   */
  readonly fault_ended_s: number | null;
  /** Milliseconds from the end of the fault to the breaker's close (null: still not closed). */
  readonly closed_after_ms: number | null;
  readonly bound_ms: number;
  readonly ok: boolean;
}

export interface Target {
  readonly name: string;
  readonly value: number | string;
  readonly bound: string;
  readonly ok: boolean;
}

export interface SecondBucket {
  readonly t: number;
  readonly sent: number;
  readonly upstream_2xx: number;
  readonly fallback_2xx: number;
  readonly shed_429: number;
  readonly errors: number;
  readonly p50_ms: number | null;
  readonly p99_ms: number | null;
}

export interface Figures {
  readonly scenario: 'promo-day';
  readonly profile: string;
  readonly replicas: number;
  readonly started_at: string;
  readonly duration_s: number;
  readonly phases: readonly PhaseFigures[];
  readonly totals: Omit<PhaseFigures, 'name' | 'story' | 'seconds' | 'rate'>;
  /**
   * Answered requests per kind: how many, p50 and p99 (ms). A saga checkout chains three calls
   * (and writes its log to disk at each step), so it is the slowest kind by design.
   */
  readonly latency_by_kind: Record<
    string,
    { readonly answered: number; readonly p50_ms: number | null; readonly p99_ms: number | null }
  >;
  readonly availability: {
    readonly actions: number;
    readonly ok: number;
    readonly ratio: number;
    readonly excluded: { readonly count: number; readonly why: string } | null;
    /** Failed actions counted, by kind and final status (0: no answer). */
    readonly failed: Record<string, number>;
    /** ok / actions that got an answer (the client gives up after 5 s, a checkout after 15 s). */
    readonly answered_ratio: number;
  };
  readonly surge: Record<
    string,
    {
      readonly limit_per_s: number;
      readonly burst: number;
      readonly max_in_any_1s: number;
      /** rate x (1 s + transit jitter) + burst. */
      readonly bound: number;
      readonly ok: boolean;
    }
  >;
  readonly breakers: {
    readonly transitions: readonly {
      readonly t_s: number;
      readonly replica: number;
      readonly upstream: string;
      readonly from: string;
      readonly to: string;
      readonly reason: string;
    }[];
    readonly recoveries: readonly Recovery[];
  };
  readonly degradation: readonly { readonly t_s: number; readonly upstream: string; readonly to: string }[];
  readonly payment: {
    readonly checkouts: number;
    readonly checkouts_ok: number;
    readonly requests: number;
    readonly keys_charged: number;
    readonly charges: number;
    /** Charges by the checkout saga's payment step (refunded when the saga compensated). */
    readonly saga_charges: number;
    /** Over every charge, the saga's included. */
    readonly duplicate_charges: number;
  };
  readonly orders: { readonly writes: number; readonly created: number; readonly refused: number };
  /** Proxy-side counters summed over replicas (from /metrics at the end). */
  readonly proxy: { readonly rate_limited: number; readonly fallbacks: Record<string, number> };
  /**
   * Deferred delivery of order writes: answered 202, then created at orders (by x-order-id) once,
   * never, or more than once (any order write). null: not measured.
   */
  readonly deferred: null | {
    readonly accepted: number;
    readonly delivered: number;
    readonly lost: number;
    readonly duplicated: number;
  };
  /**
   * The checkout saga (POST /checkout): completed, compensated, and stuck (not settled, parked, or
   * compensated without each completed step undone at the shop). null: not measured.
   */
  readonly sagas: null | {
    readonly completed: number;
    readonly compensated: number;
    readonly stuck: number;
    /** Compensations the shop counted: orders cancelled, payments refunded, reservations released. */
    readonly undone_at_shop: {
      readonly cancelled: number;
      readonly refunded: number;
      readonly released: number;
    };
  };
  readonly series: {
    readonly seconds: readonly SecondBucket[];
    /** Breaker state of each upstream over time (replica 0): [t_s, state] steps from "closed". */
    readonly breakers: Record<string, readonly [number, string][]>;
    /** Deferred queue depth over time, [t_s, items] (null: not sampled). */
    readonly queue_depth: readonly [number, number][] | null;
    readonly phase_starts_s: readonly number[];
  };
  readonly skipped_by_client: number;
  /**
   * How busy the machine was: a load above the CPU count means breakwater, the shop and the
   * shoppers waited for a CPU, and the latency figures include that wait.
   */
  readonly machine: {
    readonly cpus: number;
    readonly load_1m_at_start: number;
    readonly load_1m_at_end: number;
    /** p99 of the event-loop delay of the process running the shop and the shoppers. */
    readonly client_loop_delay_p99_ms: number;
  };
  readonly targets: readonly Target[];
  readonly ok: boolean;
}

/** Which fault makes which upstream's breaker open (an upstream not listed has none). */
const FAULT_OF: Record<string, keyof Faults> = {
  recommendation: 'recommendationDown',
  'recommendation-service': 'recommendationDown',
  inventory: 'inventoryDelayMs',
  payment: 'paymentBlip',
  orders: 'ordersDown',
};

export function percentile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return round(sorted[i] ?? 0);
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const is2xx = (s: number) => s >= 200 && s < 300;

function summarize(samples: readonly Sample[], actions: readonly Action[]) {
  const answered = samples
    .filter((s) => s.status !== 0)
    .map((s) => s.ms)
    .sort((a, b) => a - b);
  const count = (f: (s: Sample) => boolean) => samples.reduce((n, s) => n + (f(s) ? 1 : 0), 0);
  return {
    sent: samples.length,
    ok_2xx: count((s) => is2xx(s.status)),
    by_fallback: count((s) => is2xx(s.status) && s.fallback),
    accepted_202: count((s) => s.status === 202),
    shed_429: count((s) => s.status === 429),
    conflict_409: count((s) => s.status === 409),
    errors: count((s) => s.status === 0 || s.status >= 500),
    p50_ms: percentile(answered, 0.5),
    p99_ms: percentile(answered, 0.99),
    actions: actions.length,
    actions_ok: actions.filter((a) => a.ok).length,
  };
}

/** The largest number of arrivals in any window of `windowMs` (arrivals sorted). */
export function maxInWindow(times: readonly number[], windowMs: number): number {
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < times.length; hi++) {
    while ((times[hi] ?? 0) - (times[lo] ?? 0) >= windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

export interface Recording {
  readonly profile: string;
  readonly replicas: number;
  readonly startedAt: Date;
  readonly phases: readonly Phase[];
  /** Phase start offsets, ms. */
  readonly starts: readonly number[];
  readonly totalMs: number;
  /** performance.now() of the start. */
  readonly origin: number;
  readonly samples: readonly Sample[];
  readonly actions: readonly Action[];
  readonly skipped: number;
  readonly arrivals: Record<Service, readonly number[]>;
  readonly charges: ReadonlyMap<string, number>;
  readonly orders: ReadonlyMap<string, number>;
  readonly events: readonly PolicyEvent[];
  /** Rate limits per upstream, from /state: requests per second and burst. */
  readonly limits: Record<string, { readonly rate: number; readonly burst: number }>;
  /** reset_timeout of each upstream's breaker, ms (from the config file). */
  readonly resetTimeoutMs: Record<string, number>;
  readonly proxy: Figures['proxy'];
  readonly deferred: Figures['deferred'];
  readonly sagas: Figures['sagas'];
  /** Deferred queue depth over time, [t_s, items] (null: not sampled). */
  readonly queueDepth?: readonly [number, number][] | null;
  readonly machine: Figures['machine'];
}

/** Upstream name in breakwater -> the scripted service behind it. */
const SERVICE_OF: Record<string, Service> = {
  catalog: 'catalog',
  recommendation: 'recommendation',
  'recommendation-service': 'recommendation',
  inventory: 'inventory',
  'search-service': 'search',
  payment: 'payment',
  orders: 'orders',
};

export function computeFigures(r: Recording): Figures {
  const phaseEndMs = (i: number) => (r.starts[i] ?? 0) + (r.phases[i]?.seconds ?? 0) * 1000;
  const toS = (perfMs: number) => round((perfMs - r.origin) / 1000, 3);

  const phases: PhaseFigures[] = r.phases.map((p, i) => ({
    name: p.name,
    story: p.story,
    seconds: p.seconds,
    rate: p.rate,
    ...summarize(
      r.samples.filter((s) => s.phase === i),
      r.actions.filter((a) => a.phase === i),
    ),
  }));
  const totals = summarize(r.samples, r.actions);
  const byKind = new Map<string, number[]>();
  for (const s of r.samples)
    if (s.status !== 0) {
      const list = byKind.get(s.kind) ?? [];
      list.push(s.ms);
      byKind.set(s.kind, list);
    }
  const latencyByKind: Figures['latency_by_kind'] = {};
  for (const [kind, list] of byKind) {
    list.sort((a, b) => a - b);
    latencyByKind[kind] = {
      answered: list.length,
      p50_ms: percentile(list, 0.5),
      p99_ms: percentile(list, 0.99),
    };
  }

  // Breakers: transitions, and for each upstream with a fault, how long after the fault ended it closed.
  const breakerEvents = r.events.filter((e) => e.kind === 'breaker').sort((a, b) => a.at - b.at);
  const recoveries: Recovery[] = [];
  const pairs = new Set(breakerEvents.map((e) => `${e.replica}\u0000${e.upstream}`));
  for (const pair of pairs) {
    const [replicaText, upstream = ''] = pair.split('\u0000');
    const replica = Number(replicaText);
    const evs = breakerEvents.filter((e) => e.replica === replica && e.upstream === upstream);
    const fault = FAULT_OF[upstream];
    const bound = (r.resetTimeoutMs[upstream] ?? 60_000) + TARGETS.probeAllowanceMs * r.replicas;
    let lastFaulty = -1;
    if (fault) lastFaulty = r.phases.findLastIndex((p) => Boolean(p.faults[fault]));
    if (lastFaulty < 0) {
      // No fault scripted for this upstream, yet its breaker opened: calls timed out on an
      // overloaded machine. It must still close within the bound of its last opening.
      const lastOpen = evs.filter((e) => e.to === 'open').at(-1);
      if (!lastOpen) continue;
      const closed = evs.find((e) => e.at > lastOpen.at && e.to === 'closed');
      const after = closed ? Math.round(closed.at - lastOpen.at) : null;
      recoveries.push({
        upstream,
        replica,
        fault_ended_s: null,
        closed_after_ms: after,
        bound_ms: bound,
        ok: after !== null && after <= bound,
      });
      continue;
    }
    const endedAt = r.origin + phaseEndMs(lastFaulty);
    const before = evs.filter((e) => e.at <= endedAt).at(-1);
    if (!before || before.to === 'closed') continue; // closed when the fault ended: nothing to recover
    const closed = evs.find((e) => e.at > endedAt && e.to === 'closed');
    const after = closed ? Math.round(closed.at - endedAt) : null;
    recoveries.push({
      upstream,
      replica,
      fault_ended_s: round(phaseEndMs(lastFaulty) / 1000, 3),
      closed_after_ms: after,
      bound_ms: bound,
      ok: after !== null && after <= bound,
    });
  }

  // The surge: what reached each upstream in any one second, against its limit plus burst.
  const surgePhases = r.phases.map((p, i) => (p.rate === SURGE_RATE ? i : -1)).filter((i) => i >= 0);
  const surgeFrom = r.origin + (r.starts[surgePhases[0] ?? 0] ?? 0);
  const surgeTo = r.origin + phaseEndMs(surgePhases.at(-1) ?? 0);
  const surge: Figures['surge'] = {};
  for (const [upstream, limit] of Object.entries(r.limits)) {
    const service = SERVICE_OF[upstream];
    if (!service) continue;
    const times = (r.arrivals[service] ?? []).filter((t) => t >= surgeFrom && t < surgeTo);
    // Two upstreams (recommendation, recommendation-service) share one service: each limit is
    // checked against everything that service saw, which can only overstate.
    const max = maxInWindow(times, 1000);
    const bound = Math.floor(limit.rate * (1 + TARGETS.transitJitterMs / 1000) + limit.burst);
    surge[upstream] = {
      limit_per_s: limit.rate,
      burst: limit.burst,
      max_in_any_1s: max,
      bound,
      ok: max <= bound,
    };
  }

  // Availability of user actions (a checkout counts once, after the client's retries).
  const ordersPhase = r.phases.findIndex((p) => p.faults.ordersDown);
  let excluded: Figures['availability']['excluded'] = null;
  let counted = r.actions;
  if (r.deferred === null && ordersPhase >= 0) {
    // Without deferred delivery an order write cannot succeed while orders is down (or while its
    // breaker waits to probe after it is back): those are reported, not counted.
    const from = r.starts[ordersPhase] ?? 0;
    // Until the last replica's orders breaker closed (each replica probes on its own).
    const waits = recoveries
      .filter((x) => x.upstream === 'orders' && x.fault_ended_s !== null)
      .map((x) => x.closed_after_ms ?? r.totalMs);
    const until = phaseEndMs(ordersPhase) + Math.max(0, ...waits);
    const out = r.actions.filter((a) => a.kind === 'order' && !a.ok && a.t >= from && a.t <= until);
    counted = r.actions.filter((a) => !out.includes(a));
    excluded = {
      count: out.length,
      why: 'order writes refused while orders was down or its breaker had not yet probed; deferred delivery (202 now, delivered later) is not in this build',
    };
  }
  const okActions = counted.filter((a) => a.ok).length;
  const answeredActions = counted.filter((a) => a.status !== 0).length;
  const failed: Record<string, number> = {};
  for (const a of counted)
    if (!a.ok) failed[`${a.kind} ${a.status}`] = (failed[`${a.kind} ${a.status}`] ?? 0) + 1;
  const availability = {
    actions: counted.length,
    ok: okActions,
    ratio: counted.length === 0 ? 1 : okActions / counted.length,
    excluded,
    failed,
    answered_ratio: answeredActions === 0 ? 1 : okActions / answeredActions,
  };

  // Every charge counts for duplicates; the checkout figures are the /payments checkouts' own (a
  // saga's payment step is charged with the key <saga id>:payment).
  let charges = 0;
  let keysCharged = 0;
  let duplicates = 0;
  let sagaCharges = 0;
  for (const [key, n] of r.charges) {
    duplicates += Math.max(0, n - 1);
    if (key.endsWith(':payment')) sagaCharges += n;
    else {
      charges += n;
      keysCharged++;
    }
  }
  const checkouts = r.actions.filter((a) => a.kind === 'checkout');
  const orderActions = r.actions.filter((a) => a.kind === 'order');

  // Time series for the charts.
  const seconds: SecondBucket[] = [];
  const total = Math.ceil(r.totalMs / 1000);
  const bySecond: Sample[][] = Array.from({ length: total + 1 }, () => []);
  for (const s of r.samples) bySecond[Math.min(total, Math.floor(s.t / 1000))]?.push(s);
  bySecond.forEach((list, t) => {
    const lat = list
      .filter((s) => s.status !== 0)
      .map((s) => s.ms)
      .sort((a, b) => a - b);
    seconds.push({
      t,
      sent: list.length,
      upstream_2xx: list.filter((s) => is2xx(s.status) && !s.fallback).length,
      fallback_2xx: list.filter((s) => is2xx(s.status) && s.fallback).length,
      shed_429: list.filter((s) => s.status === 429).length,
      errors: list.filter((s) => !is2xx(s.status) && s.status !== 429).length,
      p50_ms: percentile(lat, 0.5),
      p99_ms: percentile(lat, 0.99),
    });
  });
  const breakerSeries: Record<string, [number, string][]> = {};
  for (const upstream of Object.keys(r.limits)) breakerSeries[upstream] = [[0, 'closed']];
  for (const e of breakerEvents)
    if (e.replica === 0) {
      const steps = breakerSeries[e.upstream] ?? [[0, 'closed']];
      steps.push([toS(e.at), e.to]);
      breakerSeries[e.upstream] = steps;
    }

  const targets: Target[] = [];
  for (const [upstream, s] of Object.entries(surge))
    targets.push({
      name: `surge: requests reaching ${upstream} in any 1 s`,
      value: s.max_in_any_1s,
      bound: `<= ${s.bound} (${s.limit_per_s}/s x 1.05 s + burst ${s.burst})`,
      ok: s.ok,
    });
  targets.push({
    name: 'availability of user actions',
    value: `${round(availability.ratio * 100, 3)} %`,
    bound: `>= ${TARGETS.availability * 100} %`,
    ok: availability.ratio >= TARGETS.availability,
  });
  targets.push({
    name: 'p99 of answered requests',
    value: `${totals.p99_ms ?? 'n/a'} ms`,
    bound: `< ${TARGETS.p99Ms} ms`,
    ok: totals.p99_ms !== null && totals.p99_ms < TARGETS.p99Ms,
  });
  targets.push({
    name: 'duplicate charges at payment',
    value: duplicates,
    bound: '= 0',
    ok: duplicates === TARGETS.duplicateCharges,
  });
  for (const rec of recoveries)
    targets.push({
      name: `breaker ${rec.upstream}${r.replicas > 1 ? ` (replica ${rec.replica})` : ''} closed after recovery`,
      value:
        rec.closed_after_ms === null
          ? 'still open'
          : `${rec.closed_after_ms} ms${rec.fault_ended_s === null ? ' (opened with no fault scripted: overload)' : ''}`,
      bound: `<= ${rec.bound_ms} ms (reset_timeout + one probe)`,
      ok: rec.ok,
    });
  if (r.deferred)
    targets.push({
      name: 'lost or doubled orders (every 202 delivered exactly once)',
      value: r.deferred.lost + r.deferred.duplicated,
      bound: '= 0',
      ok: r.deferred.lost + r.deferred.duplicated === 0,
    });
  if (r.sagas)
    targets.push({
      name: 'failed checkouts not fully compensated (sagas)',
      value: r.sagas.stuck,
      bound: '= 0',
      ok: r.sagas.stuck === 0,
    });

  return {
    scenario: 'promo-day',
    profile: r.profile,
    replicas: r.replicas,
    started_at: r.startedAt.toISOString(),
    duration_s: round(r.totalMs / 1000),
    phases,
    totals,
    latency_by_kind: latencyByKind,
    availability,
    surge,
    breakers: {
      transitions: breakerEvents.map((e) => ({
        t_s: toS(e.at),
        replica: e.replica,
        upstream: e.upstream,
        from: e.from,
        to: e.to,
        reason: e.reason,
      })),
      recoveries,
    },
    degradation: r.events
      .filter((e) => e.kind === 'degradation')
      .map((e) => ({ t_s: toS(e.at), upstream: e.upstream, to: e.to })),
    payment: {
      checkouts: checkouts.length,
      checkouts_ok: checkouts.filter((a) => a.ok).length,
      requests: r.samples.filter((s) => s.kind === 'checkout').length,
      keys_charged: keysCharged,
      charges,
      saga_charges: sagaCharges,
      duplicate_charges: duplicates,
    },
    orders: {
      writes: orderActions.length,
      created: orderActions.filter((a) => (r.orders.get(a.id) ?? 0) > 0).length,
      refused: orderActions.filter((a) => !a.ok).length,
    },
    proxy: r.proxy,
    deferred: r.deferred,
    sagas: r.sagas,
    series: {
      seconds,
      breakers: breakerSeries,
      queue_depth: r.queueDepth ?? null,
      phase_starts_s: r.starts.map((s) => s / 1000),
    },
    skipped_by_client: r.skipped,
    machine: r.machine,
    targets,
    ok: targets.every((t) => t.ok),
  };
}
