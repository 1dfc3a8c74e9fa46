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
import { ensureBuilt, type Fleet, fetchState, PROMO_DAY, startFleet } from './breakwater.js';
import { computeFigures, type Figures } from './figures.js';
import { type Phase, type ProfileName, phaseAt, profile, timeline } from './profile.js';
import { type Sample, startTraffic, type Traffic } from './traffic.js';
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
  /** Deferred queue depth: null until deferred delivery exists. */
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
    const sample = async () => {
      if (sampling || !fleet) return;
      sampling = true;
      try {
        const nowMs = performance.now() - origin;
        const state = await fetchState(first.adminUrl);
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
          deferred_depth: null,
          in_flight: shoppers.inFlight(),
        };
        lastStarted = startedNow;
        lastStartedAt = performance.now();
        options.onLive?.(live);
      } finally {
        sampling = false;
      }
    };
    // Headless (npm run scenario, the test), nothing watches: breakwater is not polled at all.
    const sampler = setInterval(() => {
      if (options.onLive) void sample();
    }, 500);
    timers.push(sampler);

    await new Promise((r) => setTimeout(r, totalMs));
    traffic.stop();
    clearInterval(sampler);
    await traffic.drain(16_000);
    loopDelay.disable();
    const counters = await proxyCounters(fleet);
    await traffic.close();

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
      // Deferred delivery and sagas plug in here (docs/demo.md, "What comes next").
      deferred: null,
      sagas: null,
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
