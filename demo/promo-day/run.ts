/**
 * One promotion-day run: the scripted shop, breakwater on promo-day.yaml (one process, or several
 * sharing Redis), the shoppers following the profile, a sampler of breakwater's admin API for the
 * live view, and at the end the figures (figures.ts). Everything it starts it stops, also on error.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parse } from 'yaml';
import { deferredDepth, ensureBuilt, type Fleet, fetchState, PROMO_DAY, startFleet } from './breakwater.js';
import { computeFigures, type Figures } from './figures.js';
import { type Phase, type ProfileName, phaseAt, profile, timeline } from './profile.js';
import { type Action, type Sample, startTraffic, type Traffic } from './traffic.js';
import { PRODUCTS, SERVICES, type Shop, startShop, URL_ENV } from './upstreams.js';

/** What the live view shows, every half second. */
export interface LiveSnapshot {
  readonly t_s: number;
  readonly total_s: number;
  readonly phase: number;
  readonly phases: readonly Phase[];
  /** Requests started in the last second. */
  readonly rate: number;
  /** Of the requests answered in the last second: 2xx share, by fallback, 429, errors. */
  readonly ok_ratio: number | null;
  readonly fallbacks_per_s: number;
  readonly errors_per_s: number;
  readonly p99_ms: number | null;
  /** Requests the rate limiters refused in the last second, all replicas (from /metrics). */
  readonly shed_per_s: number;
  readonly breakers: Record<string, string>;
  readonly degraded: readonly string[];
  /** Items waiting in the deferred queues of all replicas (null: a replica did not answer). */
  readonly deferred_depth: number | null;
  readonly in_flight: number;
}

export interface RunOptions {
  readonly profile: ProfileName;
  readonly replicas?: number;
  /** Redis for --replicas (required when replicas > 1). */
  readonly redisUrl?: string | undefined;
  readonly onLive?: (s: LiveSnapshot) => void;
  readonly say?: (line: string) => void;
}

/** Parses "3s", "150ms", "2m" or a bare number of seconds into milliseconds. */
export function durationMs(value: unknown): number | undefined {
  if (typeof value === 'number') return value * 1000;
  if (typeof value !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(value.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000;
}

/** reset_timeout of every upstream's breaker in promo-day.yaml (its own, or resilience's default). */
export function resetTimeouts(file = PROMO_DAY): Record<string, number> {
  const doc = parse(readFileSync(file, 'utf8')) as {
    upstreams: Record<string, { circuit_breaker?: { reset_timeout?: unknown } }>;
    resilience?: { circuit_breaker?: { reset_timeout?: unknown } };
  };
  const fallback = durationMs(doc.resilience?.circuit_breaker?.reset_timeout) ?? 30_000;
  const out: Record<string, number> = {};
  for (const [name, u] of Object.entries(doc.upstreams))
    out[name] = durationMs(u.circuit_breaker?.reset_timeout) ?? fallback;
  return out;
}

/** Sums a counter of Prometheus text by one label (or all into ""). */
export function sumCounter(text: string, metric: string, label?: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${metric}{`) && !line.startsWith(`${metric} `)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (!Number.isFinite(value)) continue;
    const key = label ? (new RegExp(`${label}="([^"]*)"`).exec(line)?.[1] ?? '') : '';
    out[key] = (out[key] ?? 0) + value;
  }
  return out;
}

async function proxyCounters(
  fleet: Fleet,
): Promise<{ rateLimited: number; fallbacks: Record<string, number> }> {
  let rateLimited = 0;
  const fallbacks: Record<string, number> = {};
  for (const r of fleet.replicas) {
    try {
      const res = await fetch(`${r.adminUrl}/metrics`, { signal: AbortSignal.timeout(1000) });
      const text = await res.text();
      rateLimited += sumCounter(text, 'breakwater_rate_limited_total')[''] ?? 0;
      for (const [reason, n] of Object.entries(sumCounter(text, 'breakwater_fallbacks_total', 'reason')))
        fallbacks[reason] = (fallbacks[reason] ?? 0) + n;
    } catch {
      // a replica that does not answer in time is counted at the next sample
    }
  }
  return { rateLimited, fallbacks };
}

/**
 * Before the clock starts: a few reads through every route of every replica, so the first second
 * of the profile measures a running shop, not V8 compiling breakwater's request path. Reads only:
 * nothing is charged or ordered, and what the services record of them comes before every window the
 * figures look at.
 */
async function warmUp(urls: readonly string[]): Promise<void> {
  const paths = [
    ...PRODUCTS.map((p) => `/products/${p}`),
    ...PRODUCTS.map((p) => `/inventory/stock/${p}`),
    '/recommendations',
    '/reco-svc/recommend',
    '/search?q=p-1',
  ];
  for (let round = 0; round < 3; round++)
    for (const url of urls)
      await Promise.all(
        paths.map(async (path) => {
          try {
            const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(2000) });
            await res.arrayBuffer();
          } catch {
            // the run itself reports what does not answer
          }
        }),
      );
}

/** Waiting deferred items over every replica (null when one does not answer). */
async function fleetDepth(fleet: Fleet): Promise<number | null> {
  const depths = await Promise.all(
    fleet.replicas.map(async (r) => deferredDepth(await fetchState(r.adminUrl))),
  );
  let n = 0;
  for (const d of depths) {
    if (d === null) return null;
    n += d;
  }
  return n;
}

async function getJson(url: string): Promise<unknown> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return res.json();
}

type SagaSummary = { readonly id: string; readonly state: string };

/** The checkout sagas of one replica in one state (the log keeps them for its retention, 24 h). */
async function sagasIn(adminUrl: string, state: string): Promise<SagaSummary[]> {
  const body = (await getJson(`${adminUrl}/sagas?saga=checkout&state=${state}&limit=1000`)) as {
    sagas: SagaSummary[];
  };
  return body.sagas;
}

const UNSETTLED = ['running', 'compensating'] as const;

/**
 * After the traffic: waits (bounded) until no replica has a deferred item waiting and no saga
 * running or compensating, so that what the shop counted is final.
 */
async function settle(fleet: Fleet, boundMs: number): Promise<void> {
  const end = performance.now() + boundMs;
  while (performance.now() < end) {
    let busy = (await fleetDepth(fleet)) !== 0;
    if (!busy)
      for (const r of fleet.replicas)
        for (const state of UNSETTLED) if ((await sagasIn(r.adminUrl, state)).length > 0) busy = true;
    if (!busy) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Deferred delivery as the shop saw it: every order write answered 202 must have been created at
 * orders exactly once (by its x-order-id), and no order write created twice.
 */
export function deferredFigures(actions: readonly Action[], orders: ReadonlyMap<string, number>) {
  const writes = actions.filter((a) => a.kind === 'order');
  const accepted = writes.filter((a) => a.status === 202);
  return {
    accepted: accepted.length,
    delivered: accepted.filter((a) => (orders.get(a.id) ?? 0) >= 1).length,
    lost: accepted.filter((a) => (orders.get(a.id) ?? 0) === 0).length,
    duplicated: writes.filter((a) => (orders.get(a.id) ?? 0) > 1).length,
  };
}

/** Which count of the shop shows each step of the checkout saga undone. */
const UNDONE_AT = { order: 'cancellations', payment: 'refunds', reservation: 'releases' } as const;

/**
 * The checkout sagas of every replica: completed, compensated, and stuck (still running or
 * compensating after the wait, parked as failed_to_compensate, or compensated by breakwater's log
 * while the shop did not see one of its completed steps undone).
 */
async function sagaFigures(fleet: Fleet, shop: Shop) {
  let completed = 0;
  let compensated = 0;
  let stuck = 0;
  for (const r of fleet.replicas) {
    completed += (await sagasIn(r.adminUrl, 'completed')).length;
    for (const state of [...UNSETTLED, 'failed_to_compensate'])
      stuck += (await sagasIn(r.adminUrl, state)).length;
    for (const saga of await sagasIn(r.adminUrl, 'compensated')) {
      compensated++;
      const detail = (await getJson(`${r.adminUrl}/sagas/${saga.id}`)) as {
        steps: { name: keyof typeof UNDONE_AT; state: string }[];
      };
      const undone = detail.steps.every(
        (step) =>
          step.state !== 'compensated' ||
          (shop.saga[UNDONE_AT[step.name]].get(`${saga.id}:${step.name}`) ?? 0) >= 1,
      );
      if (!undone) stuck++;
    }
  }
  const sum = (m: ReadonlyMap<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
  const undone_at_shop = {
    cancelled: sum(shop.saga.cancellations),
    refunded: sum(shop.saga.refunds),
    released: sum(shop.saga.releases),
  };
  return { completed, compensated, stuck, undone_at_shop };
}

export async function runScenario(options: RunOptions): Promise<Figures> {
  const say = options.say ?? (() => {});
  const replicas = options.replicas ?? 1;
  if (replicas > 1 && !options.redisUrl)
    throw new Error('--replicas needs Redis (REDIS_URL or redis-server)');
  ensureBuilt(say);
  const phases = profile(options.profile);
  const { starts, totalMs } = timeline(phases);
  const dir = mkdtempSync(join(tmpdir(), 'bw-promo-day-'));
  let shop: Shop | undefined;
  let fleet: Fleet | undefined;
  let traffic: Traffic | undefined;
  const timers: NodeJS.Timeout[] = [];
  try {
    shop = await startShop();
    const env: Record<string, string> = {};
    for (const s of SERVICES) env[URL_ENV[s]] = shop.urls[s];
    say(
      `starting ${replicas} breakwater process${replicas > 1 ? 'es' : ''} on config/examples/promo-day.yaml ...`,
    );
    fleet = await startFleet(env, { replicas, redisUrl: options.redisUrl, dir });
    const first = fleet.replicas[0];
    if (!first) throw new Error('no breakwater replica');
    let initial = await fetchState(first.adminUrl);
    for (let i = 0; i < 5 && initial === null; i++) initial = await fetchState(first.adminUrl);
    if (initial === null) throw new Error(`breakwater's admin API (${first.adminUrl}/state) does not answer`);
    const limits: Record<string, { rate: number; burst: number }> = {};
    for (const [name, u] of Object.entries(initial?.upstreams ?? {}))
      if (u.rate_limiter)
        limits[name] = { rate: u.rate_limiter.rate_per_second, burst: u.rate_limiter.burst };

    await warmUp(fleet.replicas.map((r) => r.url));
    const loadAtStart = loadavg()[0] ?? 0;
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    const startedAt = new Date();
    const origin = performance.now();
    await shop.setFaults(
      phases[0]?.faults ?? {
        recommendationDown: false,
        inventoryDelayMs: 0,
        paymentBlip: false,
        ordersDown: false,
      },
    );
    const shoppers = startTraffic({
      urls: fleet.replicas.map((r) => r.url),
      phases,
      starts,
      totalMs,
      origin,
    });
    traffic = shoppers;
    phases.forEach((p, i) => {
      if (i === 0) return;
      timers.push(
        setTimeout(() => void shop?.setFaults(p.faults), (starts[i] ?? 0) - (performance.now() - origin)),
      );
    });

    // The live view's sampler: /state of the first replica, /metrics of all, twice a second.
    let lastShed = 0;
    let lastShedAt = performance.now();
    let shedPerS = 0;
    let sampling = false;
    let lastStarted = 0;
    let lastStartedAt = performance.now();
    /** Deferred queue depth over every replica, [t_s, items], for the chart. */
    const queueDepth: [number, number][] = [];
    const recordDepth = async (nowMs: number, firstState?: Awaited<ReturnType<typeof fetchState>>) => {
      if (!fleet) return null;
      const depth =
        fleet.replicas.length === 1 && firstState !== undefined
          ? deferredDepth(firstState)
          : await fleetDepth(fleet);
      if (depth !== null && nowMs <= totalMs) queueDepth.push([Math.round(nowMs / 100) / 10, depth]);
      return depth;
    };
    const sample = async () => {
      if (sampling || !fleet) return;
      sampling = true;
      try {
        const nowMs = performance.now() - origin;
        const state = await fetchState(first.adminUrl);
        const depth = await recordDepth(nowMs, state);
        // /metrics costs breakwater more than /state: read every 2 s.
        const dt = (performance.now() - lastShedAt) / 1000;
        if (dt >= 2) {
          const counters = await proxyCounters(fleet);
          shedPerS = Math.max(0, (counters.rateLimited - lastShed) / dt);
          lastShed = counters.rateLimited;
          lastShedAt = performance.now();
        }
        // Requests that finished in the last second (samples are recorded as they finish).
        const recent: Sample[] = [];
        for (let i = shoppers.samples.length - 1; i >= 0; i--) {
          const s = shoppers.samples[i];
          if (!s || s.t + s.ms < nowMs - 1000) break;
          recent.push(s);
        }
        const answered = recent
          .filter((s) => s.status !== 0)
          .map((s) => s.ms)
          .sort((a, b) => a - b);
        const breakers: Record<string, string> = {};
        const degraded: string[] = [];
        for (const [name, u] of Object.entries(state?.upstreams ?? {})) {
          breakers[name] = u.breaker?.state ?? 'none';
          if (u.degradation?.degraded) degraded.push(name);
        }
        const startedNow = shoppers.started();
        const live = {
          t_s: Math.min(nowMs, totalMs) / 1000,
          total_s: totalMs / 1000,
          phase: phaseAt(starts, nowMs),
          phases,
          rate: Math.round(
            (startedNow - lastStarted) / Math.max(0.001, (performance.now() - lastStartedAt) / 1000),
          ),
          ok_ratio: recent.length
            ? recent.filter((s) => s.status >= 200 && s.status < 300).length / recent.length
            : null,
          fallbacks_per_s: recent.filter((s) => s.fallback).length,
          errors_per_s: recent.filter((s) => s.status === 0 || s.status >= 500).length,
          p99_ms: answered.length ? (answered[Math.ceil(answered.length * 0.99) - 1] ?? null) : null,
          shed_per_s: Math.round(shedPerS),
          breakers,
          degraded,
          deferred_depth: depth,
          in_flight: shoppers.inFlight(),
        };
        lastStarted = startedNow;
        lastStartedAt = performance.now();
        options.onLive?.(live);
      } finally {
        sampling = false;
      }
    };
    // Headless (npm run scenario, the test), nothing watches: only the queue depth is read, once a
    // second, for the chart.
    let ticks = 0;
    const sampler = setInterval(() => {
      ticks++;
      if (options.onLive) void sample();
      else if (ticks % 2 === 0 && !sampling) {
        sampling = true;
        void recordDepth(performance.now() - origin).finally(() => {
          sampling = false;
        });
      }
    }, 500);
    timers.push(sampler);

    await new Promise((r) => setTimeout(r, totalMs));
    traffic.stop();
    clearInterval(sampler);
    await traffic.drain(16_000);
    loopDelay.disable();
    // Orders accepted with 202 are delivered on their schedule (1 s, then every 2 s) once orders is
    // back; compensations retry with backoff. Bounded: what is still waiting after 20 s is reported.
    say('waiting for deferred deliveries and compensations to finish ...');
    await settle(fleet, 20_000);
    const counters = await proxyCounters(fleet);
    await traffic.close();
    const deferred = deferredFigures(traffic.actions, shop.orders);
    const sagas = await sagaFigures(fleet, shop);

    return computeFigures({
      profile: options.profile,
      replicas,
      startedAt,
      phases,
      starts,
      totalMs,
      origin,
      samples: traffic.samples,
      actions: traffic.actions,
      skipped: traffic.skipped,
      arrivals: shop.arrivals,
      charges: shop.charges,
      orders: shop.orders,
      events: fleet.events,
      limits,
      resetTimeoutMs: resetTimeouts(),
      proxy: { rate_limited: counters.rateLimited, fallbacks: counters.fallbacks },
      deferred,
      sagas,
      queueDepth,
      machine: {
        cpus: availableParallelism(),
        load_1m_at_start: Math.round(loadAtStart * 100) / 100,
        load_1m_at_end: Math.round((loadavg()[0] ?? 0) * 100) / 100,
        client_loop_delay_p99_ms: Math.round(loopDelay.percentile(99) / 1e4) / 100,
      },
    });
  } finally {
    for (const t of timers) clearTimeout(t);
    traffic?.stop();
    await fleet?.stop();
    await shop?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
