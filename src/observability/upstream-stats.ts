/**
 * Live traffic figures per upstream for `GET /state` and the status page: requests and errors
 * (cumulative, so a reader computes rates from two readings) and latency quantiles over the last
 * 30 s. Prometheus has the same from the metrics; this is for a human looking at one sidecar.
 */
const WINDOW_MS = 30_000;
const SIZE = 2048;

export class UpstreamStats {
  requests = 0;
  errors = 0;
  fallbacks = 0;
  private readonly at = new Float64Array(SIZE);
  private readonly ms = new Float64Array(SIZE);
  private next = 0;
  private filled = 0;

  record(now: number, latencyMs: number, status: number): void {
    this.requests++;
    if (status >= 500) this.errors++;
    this.at[this.next] = now;
    this.ms[this.next] = latencyMs;
    this.next = (this.next + 1) % SIZE;
    if (this.filled < SIZE) this.filled++;
  }

  snapshot(now: number): {
    requests: number;
    errors: number;
    fallbacks: number;
    p50_ms: number | null;
    p99_ms: number | null;
  } {
    const recent: number[] = [];
    for (let i = 0; i < this.filled; i++)
      if ((this.at[i] as number) > now - WINDOW_MS) recent.push(this.ms[i] as number);
    recent.sort((a, b) => a - b);
    const q = (p: number) =>
      recent.length
        ? Math.round((recent[Math.min(recent.length - 1, Math.ceil(p * recent.length) - 1)] as number) * 10) /
          10
        : null;
    return {
      requests: this.requests,
      errors: this.errors,
      fallbacks: this.fallbacks,
      p50_ms: q(0.5),
      p99_ms: q(0.99),
    };
  }
}
