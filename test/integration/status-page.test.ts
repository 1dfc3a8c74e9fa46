/**
 * The status page in a real browser: headless Chromium (Debian's package, driven by playwright-core)
 * loads it, watches a breaker open after the upstream fails, and leaves a screenshot in
 * test-artifacts/ for a person to look at.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort } from '../kit/process.js';
import { requireTool } from '../kit/tools.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const chromiumTool = requireTool('chromium', 'chromium', { override: process.env.CHROMIUM_PATH });

const ARTIFACTS = join(import.meta.dirname, '../../test-artifacts');

describe.skipIf(!chromiumTool.available)('status page', () => {
  let browser: Browser;
  let up: TestUpstream;
  let ok: TestUpstream;
  let bw: Running;
  let failing = false;

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: chromiumTool.path,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    up = await startUpstream((_req, res) => {
      res.statusCode = failing ? 500 : 200;
      res.end(failing ? 'boom' : 'fine');
    });
    ok = await startUpstream((_req, res) => res.end('ok'));
    bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - { match: { path_prefix: /search }, upstream: search }
      - { upstream: payments }
admin: { port: 0 }
upstreams:
  payments:
    endpoints: ["${up.url}"]
    retry: { enabled: false }
    circuit_breaker: { failure_threshold: 3, reset_timeout: 60s }
    bulkhead: { max_concurrent: 50 }
    rate_limiter: { max_requests_per_second: 100, burst_limit: 200 }
    fallback: payments_busy
  search: { endpoints: ["${ok.url}"] }
fallbacks:
  payments_busy: { type: static_response, status: 503, body: 'busy' }
`);
  }, 30_000);

  afterAll(async () => {
    await browser?.close();
    await bw?.stop();
    await up?.close();
    await ok?.close();
  });

  it('shows every upstream, then the payments breaker opening after failures', async () => {
    const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
    for (let i = 0; i < 10; i++) await (await request(`${bw.url()}/search?q=${i}`)).body.dump();
    await page.goto(`${bw.adminUrl}/`);
    await page.waitForSelector('[data-upstream="payments"] [data-breaker-state="closed"]', {
      timeout: 10_000,
    });
    expect(await page.locator('[data-upstream]').count()).toBe(2);
    expect(await page.locator('[data-upstream="search"] .badge').textContent()).toBe('no breaker');

    failing = true;
    // Two failures: still closed, and the card counts them (the /state key is consecutive_failures).
    for (let i = 0; i < 2; i++)
      await (await request(`${bw.url()}/pay`, { method: 'POST', body: 'x' })).body.dump();
    await page
      .locator('[data-upstream="payments"]', { hasText: 'closed, 2 consecutive failures' })
      .waitFor({ timeout: 10_000 });
    for (let i = 0; i < 3; i++)
      await (await request(`${bw.url()}/pay`, { method: 'POST', body: 'x' })).body.dump();
    await page.waitForSelector('[data-upstream="payments"] [data-breaker-state="open"]', { timeout: 10_000 });
    const card = page.locator('[data-upstream="payments"]');
    expect(await card.locator('.badge').textContent()).toBe('open');
    expect(await card.textContent()).toContain('closed → open: 3 consecutive failures');
    expect(await card.textContent()).toContain('payments_busy, 5 served');
    expect(await page.locator('#meta').textContent()).toMatch(/^serving · config [0-9a-f]{16}/);

    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = await page.screenshot({ path: join(ARTIFACTS, 'status-page.png'), fullPage: true });
    expect(shot.length).toBeGreaterThan(10_000);
  }, 30_000);

  it("shows the Redis store's health and a global limit's fallback while Redis cannot be reached", async () => {
    // Fleet mode with nothing listening where Redis should be (no redis-server needed).
    const nowhere = await freePort();
    const fleet = await startBreakwater(`
listeners: [{ name: main, port: 0, routes: [{ upstream: orders }] }]
admin: { port: 0 }
stores:
  redis: { url: "redis://127.0.0.1:${nowhere}", connect_timeout: 100ms }
upstreams:
  orders:
    endpoints: ["${ok.url}"]
    rate_limiter: { max_requests_per_second: 10, scope: global, replicas: 2 }
`);
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
      await page.goto(`${fleet.adminUrl}/`);
      const card = page.locator('[data-upstream="orders"]', { hasText: 'Redis DOWN' });
      await card.waitFor({ timeout: 10_000 });
      expect(await card.textContent()).toContain(
        'global 10/s (burst 10), – left; Redis DOWN: local share 5.0/s',
      );
      const meta = page.locator('#meta');
      expect(await meta.textContent()).toContain(`· redis redis://127.0.0.1:${nowhere}/0 DOWN (`);
      expect(await meta.getAttribute('class')).toBe('meta stale');
    } finally {
      await fleet.stop();
    }
  }, 30_000);

  it("shows each upstream's deferred queue", async () => {
    const down = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), 'bw-status-deferred-'));
    const q = await startBreakwater(`
listeners: [{ name: main, port: 0, routes: [{ upstream: orders, deferred: { schedule: [10m] } }] }]
admin: { port: 0 }
upstreams:
  orders: { endpoints: ["http://127.0.0.1:${down}"] }
data_dir: ${dataDir}
`);
    try {
      for (let i = 0; i < 3; i++) {
        const r = await request(`${q.url()}/orders`, {
          method: 'POST',
          headers: { 'idempotency-key': `sp-${i}` },
          body: 'x',
        });
        expect(r.statusCode).toBe(202);
        await r.body.dump();
      }
      const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
      await page.goto(`${q.adminUrl}/`);
      const card = page.locator('[data-upstream="orders"]', { hasText: 'deferred queue' });
      await card.waitFor({ timeout: 10_000 });
      expect(await card.textContent()).toMatch(/deferred queue3 pending, 0 delivering, oldest \d+ s/);
    } finally {
      await q.stop();
    }
  }, 30_000);
});
