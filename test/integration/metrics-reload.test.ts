/**
 * A reload that removes an upstream removes its metric series too (gauges and counters with that
 * upstream label), so a dashboard does not show an upstream that no longer exists frozen at its
 * last values.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { startUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** The series of a scrape that carry `label="value"`. */
function seriesWith(scrape: string, label: string, value: string): string[] {
  return scrape.split('\n').filter((l) => !l.startsWith('#') && l.includes(`${label}="${value}"`));
}

describe('metrics across a reload', () => {
  it("removes a removed upstream's series; the others stay", async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    const failing = await startUpstream((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    cleanup.push(
      () => up.close(),
      () => failing.close(),
    );
    const yaml = (withGone: boolean) => `
listeners:
  - name: main
    port: 0
    routes:
${withGone ? '      - { match: { path_prefix: /gone }, upstream: gone }\n' : ''}      - { upstream: app }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], bulkhead: { max_concurrent: 10 } }
${
  withGone
    ? `  gone:
    endpoints: ["${failing.url}", "${up.url}"]
    retry: { max_attempts: 2, initial_wait: 1ms }
    circuit_breaker: { failure_threshold: 50 }
    rate_limiter: { max_requests_per_second: 1000 }
    bulkhead: { max_concurrent: 10 }
    fallback: busy
    outlier_detection: { consecutive_failures: 1 }
fallbacks:
  busy: { type: static_response, status: 503, body: busy }
`
    : ''
}`;
    const file = join(mkdtempSync(join(tmpdir(), 'bw-metrics-reload-')), 'breakwater.yaml');
    writeFileSync(file, yaml(true));
    const bw = await startBreakwater(yaml(true), { file });
    cleanup.push(() => bw.stop());
    for (let i = 0; i < 6; i++) {
      await (await request(`${bw.url()}/gone/${i}`)).body.dump();
      await (await request(`${bw.url()}/app/${i}`)).body.dump();
    }
    const scrape = async () => (await request(`${bw.adminUrl}/metrics`)).body.text();
    const before = await scrape();
    const names = (lines: string[]) => new Set(lines.map((l) => l.split('{')[0]));
    const goneBefore = names(seriesWith(before, 'upstream', 'gone'));
    // Gauges and counters alike were exported for it.
    for (const metric of [
      'breakwater_requests_total',
      'breakwater_request_duration_seconds_bucket',
      'breakwater_upstream_attempts_total',
      'breakwater_retries_total',
      'breakwater_circuit_breaker_state',
      'breakwater_bulkhead_in_flight',
      'breakwater_rate_limiter_queued',
      'breakwater_endpoint_healthy',
      'breakwater_endpoint_ejections_total',
    ])
      expect(goneBefore, metric).toContain(metric);
    const appBefore = seriesWith(before, 'upstream', 'app');

    writeFileSync(file, yaml(false));
    expect((await bw.bw.reload('test')).ok).toBe(true);
    const after = await scrape();
    expect(seriesWith(after, 'upstream', 'gone')).toEqual([]);
    // The upstream that stayed keeps every series it had, counts unchanged.
    const counters = (lines: string[]) => lines.filter((l) => l.startsWith('breakwater_requests_total'));
    expect(counters(seriesWith(after, 'upstream', 'app'))).toEqual(counters(appBefore));
    expect(names(seriesWith(after, 'upstream', 'app'))).toEqual(names(appBefore));
  });
});
