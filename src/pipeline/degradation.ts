/**
 * Graceful degradation, per upstream.
 *
 * The monitor keeps the outcomes of the last `window` (latency to response headers, and whether
 * the request failed) and judges the conditions over them once at least `minimum_requests` are in
 * the window (fewer count as clear, as the breaker's `minimum_calls`):
 *   latency       the `quantile` (default p99) latency is above `threshold`
 *   error_rate    failed / all is above `threshold`
 *   availability  succeeded / all is below `threshold`
 * While any condition holds the upstream is degraded: the fallback answers, except a `probe_ratio`
 * share of requests (and at least one a second) that still go upstream to measure recovery. It
 * returns to normal only after every condition stayed clear for `recovery` (hysteresis). While
 * degraded only probes are measured, so a smaller sample is judged (min(minimum_requests, 5));
 * with fewer probes than that in the window the upstream stays degraded.
 */

import type { Clock } from '../clock.js';
import type { DegradationCondition } from '../config/resolve.js';

export interface DegradationChange {
  readonly degraded: boolean;
  /** The condition that holds (when degrading) or 'recovered'. */
  readonly condition: string;
  readonly value: number;
  readonly threshold: number;
  readonly requests: number;
}

export interface DegradationSettings {
  readonly window: number;
  readonly minimumRequests: number;
  readonly recovery: number;
  readonly probeRatio: number;
}

const MAX_SAMPLES = 4096;

export class DegradationMonitor {
  private readonly at = new Float64Array(MAX_SAMPLES);
  private readonly latency = new Float64Array(MAX_SAMPLES);
  private readonly failed = new Uint8Array(MAX_SAMPLES);
  private head = 0;
  private length = 0;
  private failures = 0;
  private degradedValue = false;
  private clearSince: number | undefined;
  private lastProbe = Number.NEGATIVE_INFINITY;
  private lastJudged = Number.NEGATIVE_INFINITY;
  private cachedQuantile: number | undefined;
  private quantileAt = Number.NEGATIVE_INFINITY;
  private readonly listeners: ((c: DegradationChange) => void)[] = [];
  /** The last judgement, for /state and logs. */
  last: DegradationChange | undefined;

  constructor(
    readonly conditions: readonly DegradationCondition[],
    readonly settings: DegradationSettings,
    private readonly clock: Clock,
    private readonly random: () => number,
  ) {}

  get degraded(): boolean {
    return this.degradedValue;
  }

  onChange(fn: (c: DegradationChange) => void): void {
    this.listeners.push(fn);
  }

  /** While degraded: whether this request should still go upstream as a probe. */
  shouldProbe(): boolean {
    const now = this.clock.now();
    if (now - this.lastProbe >= 1000 || this.random() < this.settings.probeRatio) {
      this.lastProbe = now;
      return true;
    }
    return false;
  }

  /** Records one request's outcome and re-judges the conditions. */
  record(latencyMs: number, failed: boolean): void {
    const now = this.clock.now();
    if (this.length === MAX_SAMPLES) this.dropOldest();
    const i = (this.head + this.length) % MAX_SAMPLES;
    this.at[i] = now;
    this.latency[i] = latencyMs;
    this.failed[i] = failed ? 1 : 0;
    this.length++;
    if (failed) this.failures++;
    this.judge(now);
  }

  /** Re-judges if the last judgement is older than 100 ms (lets a degraded, idle upstream recover). */
  maybeJudge(): void {
    const now = this.clock.now();
    if (now - this.lastJudged >= 100) this.judge(now);
  }

  /** Re-judges now. */
  judge(now = this.clock.now()): void {
    this.lastJudged = now;
    this.expire(now);
    const holding = this.holdingCondition();
    if (holding === 'unknown') return;
    if (holding) {
      this.clearSince = undefined;
      this.last = holding;
      if (!this.degradedValue) {
        this.degradedValue = true;
        this.lastProbe = now; // the first probe comes a second (or a probe_ratio draw) later
        for (const fn of this.listeners) fn(holding);
      }
      return;
    }
    if (!this.degradedValue) return;
    this.clearSince ??= now;
    if (now - this.clearSince >= this.settings.recovery) {
      this.degradedValue = false;
      this.clearSince = undefined;
      const change: DegradationChange = {
        degraded: false,
        condition: 'recovered',
        value: 0,
        threshold: 0,
        requests: this.length,
      };
      this.last = change;
      for (const fn of this.listeners) fn(change);
    }
  }

  /**
   * The condition that holds now, 'unknown' when there are too few requests to judge, or undefined.
   * Normally fewer than `minimum_requests` count as clear; while degraded only probes arrive, so
   * a smaller sample (up to 5) is judged, and with less than that the state stays as it is.
   */
  private holdingCondition(): DegradationChange | 'unknown' | undefined {
    const n = this.length;
    const minimum = this.degradedValue
      ? Math.min(this.settings.minimumRequests, 5)
      : this.settings.minimumRequests;
    if (n < minimum) return this.degradedValue ? 'unknown' : undefined;
    for (const c of this.conditions) {
      if (c.type === 'latency') {
        const q = this.quantile(c.quantile);
        if (q > c.threshold)
          return {
            degraded: true,
            condition: `latency p${Math.round(c.quantile * 100)}`,
            value: q,
            threshold: c.threshold,
            requests: n,
          };
      } else if (c.type === 'error_rate') {
        const rate = this.failures / n;
        if (rate > c.threshold)
          return {
            degraded: true,
            condition: 'error_rate',
            value: rate,
            threshold: c.threshold,
            requests: n,
          };
      } else {
        const availability = 1 - this.failures / n;
        if (availability < c.threshold)
          return {
            degraded: true,
            condition: 'availability',
            value: availability,
            threshold: c.threshold,
            requests: n,
          };
      }
    }
    return undefined;
  }

  /** The latency quantile; re-sorted at most every 100 ms once the window is large. */
  private quantile(q: number): number {
    const now = this.clock.now();
    if (this.length > 256 && this.cachedQuantile !== undefined && now - this.quantileAt < 100)
      return this.cachedQuantile;
    this.quantileAt = now;
    this.cachedQuantile = this.computeQuantile(q);
    return this.cachedQuantile;
  }

  private computeQuantile(q: number): number {
    const values = new Float64Array(this.length);
    for (let k = 0; k < this.length; k++) values[k] = this.latency[(this.head + k) % MAX_SAMPLES] as number;
    values.sort();
    return values[Math.min(values.length - 1, Math.ceil(q * values.length) - 1)] as number;
  }

  private expire(now: number): void {
    while (this.length > 0 && (this.at[this.head] as number) <= now - this.settings.window) this.dropOldest();
  }

  private dropOldest(): void {
    if (this.failed[this.head]) this.failures--;
    this.head = (this.head + 1) % MAX_SAMPLES;
    this.length--;
  }
}
