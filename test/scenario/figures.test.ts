/**
 * The scenario's judge, on recordings made up for the purpose: a run that breaks a target must be
 * reported as broken, naming the figure. (The real run is test/scenario/promo-day.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { computeFigures, maxInWindow, percentile, type Recording } from '../../demo/promo-day/figures.js';
import { profile, timeline } from '../../demo/promo-day/profile.js';
import { failure } from '../../demo/promo-day/report.js';
import { durationMs, resetTimeouts, sumCounter } from '../../demo/promo-day/run.js';
import type { Action, Sample } from '../../demo/promo-day/traffic.js';

const phases = profile('test');
const { starts, totalMs } = timeline(phases);
const ORIGIN = 1_000_000;

/** A healthy recording: one fast 200 per action, every 10 ms, nothing charged twice. */
function recording(over: Partial<Recording> = {}): Recording {
  const samples: Sample[] = [];
  const actions: Action[] = [];
  for (let t = 0; t < totalMs; t += 10) {
    const phase = starts.filter((s) => s <= t).length - 1;
    samples.push({ t, phase, kind: 'product', status: 200, ms: 5, fallback: false });
    actions.push({ t, phase, kind: 'product', ok: true, status: 200, id: '' });
  }
  return {
    profile: 'test',
    replicas: 1,
    startedAt: new Date(0),
    phases,
    starts,
    totalMs,
    origin: ORIGIN,
    samples,
    actions,
    skipped: 0,
    arrivals: { catalog: [], recommendation: [], inventory: [], orders: [], payment: [], search: [] },
    charges: new Map([['k1', 1]]),
    orders: new Map(),
    events: [],
    limits: { catalog: { rate: 60, burst: 30 } },
    resetTimeoutMs: { catalog: 3000, orders: 3000 },
    proxy: { rate_limited: 0, fallbacks: {} },
    deferred: null,
    sagas: null,
    machine: { cpus: 2, load_1m_at_start: 0.5, load_1m_at_end: 0.5, client_loop_delay_p99_ms: 1 },
    ...over,
  };
}

describe('promo-day figures', () => {
  it('a healthy recording holds every target', () => {
    const f = computeFigures(recording());
    expect(f.ok).toBe(true);
    expect(failure(f)).toBeNull();
    expect(f.availability.ratio).toBe(1);
    expect(f.totals.p99_ms).toBe(5);
  });

  it('a key charged twice fails the duplicate-charge target', () => {
    const f = computeFigures(recording({ charges: new Map([['k1', 2]]) }));
    expect(f.payment.duplicate_charges).toBe(1);
    expect(failure(f)).toBe('target missed: duplicate charges at payment = 1, wanted = 0');
  });

  it('more arrivals in one second than rate x 1.05 s + burst fails the surge target', () => {
    const surgeStart = ORIGIN + (starts[1] ?? 0);
    const arrivals = Array.from({ length: 94 }, (_, i) => surgeStart + 100 + i * 5);
    const f = computeFigures(
      recording({
        arrivals: {
          catalog: arrivals,
          recommendation: [],
          inventory: [],
          orders: [],
          payment: [],
          search: [],
        },
      }),
    );
    expect(f.surge.catalog).toMatchObject({ max_in_any_1s: 94, bound: 93, ok: false });
    expect(failure(f)).toContain('surge: requests reaching catalog in any 1 s = 94');
  });

  it('a breaker that closes later than reset_timeout + one probe after its fault fails; in time passes', () => {
    const ordersPhase = phases.findIndex((p) => p.faults.ordersDown);
    const faultEnd = ORIGIN + (starts[ordersPhase] ?? 0) + (phases[ordersPhase]?.seconds ?? 0) * 1000;
    const events = (closedAfter: number) => [
      {
        at: faultEnd - 2000,
        replica: 0,
        upstream: 'orders',
        kind: 'breaker' as const,
        from: 'closed',
        to: 'open',
        reason: 'x',
      },
      {
        at: faultEnd + closedAfter,
        replica: 0,
        upstream: 'orders',
        kind: 'breaker' as const,
        from: 'half_open',
        to: 'closed',
        reason: 'y',
      },
    ];
    const late = computeFigures(recording({ events: events(4600) }));
    expect(late.breakers.recoveries).toEqual([
      expect.objectContaining({ upstream: 'orders', closed_after_ms: 4600, bound_ms: 4500, ok: false }),
    ]);
    expect(failure(late)).toContain('breaker orders closed after recovery = 4600 ms');
    expect(computeFigures(recording({ events: events(4400) })).ok).toBe(true);
  });

  it('counts a checkout once after its retries, and excludes order writes refused while orders was down', () => {
    const ordersPhase = phases.findIndex((p) => p.faults.ordersDown);
    const base = recording();
    const t = (starts[ordersPhase] ?? 0) + 100;
    const actions: Action[] = [
      ...base.actions,
      { t, phase: ordersPhase, kind: 'order', ok: false, status: 502, id: 'o1' },
      { t: 50, phase: 0, kind: 'product', ok: false, status: 0, id: '' },
    ];
    const f = computeFigures({ ...base, actions });
    expect(f.availability.excluded?.count).toBe(1);
    expect(f.availability.actions).toBe(base.actions.length + 1);
    expect(f.availability.failed).toEqual({ 'product 0': 1 });
    expect(f.availability.answered_ratio).toBe(1);
  });

  it('percentiles, windows, durations and counters', () => {
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5)).toBe(5);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99)).toBe(10);
    expect(percentile([], 0.99)).toBeNull();
    expect(maxInWindow([0, 100, 999, 1000, 1500, 1999], 1000)).toBe(3);
    expect(durationMs('3s')).toBe(3000);
    expect(durationMs('150ms')).toBe(150);
    expect(durationMs(60)).toBe(60_000);
    expect(
      sumCounter(
        'breakwater_fallbacks_total{upstream="a",fallback="f",reason="timeout"} 2\nbreakwater_fallbacks_total{upstream="b",fallback="g",reason="timeout"} 3\n',
        'breakwater_fallbacks_total',
        'reason',
      ),
    ).toEqual({ timeout: 5 });
    // promo-day.yaml: every upstream waits 3 s before a probe (the design document's 60 s default is overridden).
    expect(new Set(Object.values(resetTimeouts()))).toEqual(new Set([3000]));
  });
});
