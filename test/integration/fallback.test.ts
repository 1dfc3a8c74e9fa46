import type http from 'node:http';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { startUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

type Mode = { status: number; delayMs?: number; body?: string; headers?: Record<string, string> };

/** An upstream whose behaviour the test switches while it runs. */
async function switchable(initial: Mode) {
  const state = { mode: initial };
  const up = await startUpstream((_req: http.IncomingMessage, res: http.ServerResponse) => {
    const m = state.mode;
    const send = () => {
      res.writeHead(m.status, { 'content-type': 'text/plain', ...(m.headers ?? {}) });
      res.end(m.body ?? `status ${m.status}`);
    };
    if (m.delayMs) setTimeout(send, m.delayMs);
    else send();
  });
  cleanup.push(() => up.close());
  return {
    up,
    set: (m: Mode) => {
      state.mode = m;
    },
  };
}

async function proxy(yaml: string): Promise<Running> {
  const bw = await startBreakwater(yaml);
  cleanup.push(() => bw.stop());
  return bw;
}

async function get(bw: Running, path: string, method = 'GET') {
  const res = await request(`${bw.url()}${path}`, { method });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('fallbacks', () => {
  it('breaker opens -> the static fallback is served; the upstream heals -> probes succeed, normal traffic resumes', async () => {
    const { up, set } = await switchable({ status: 500 });
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: reco }] }]
admin: { port: 0 }
upstreams:
  reco:
    endpoints: ["${up.url}"]
    retry: { enabled: false }
    circuit_breaker: { failure_threshold: 3, reset_timeout: 300ms }
    fallback: top_items
fallbacks:
  top_items:
    type: static_response
    status: 200
    headers: { content-type: application/json, cache-control: max-age=5 }
    body: '["bestseller-1","bestseller-2"]'
`);
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push(await get(bw, '/recommendations'));
    expect(answers.every((a) => a.status === 200 && a.body === '["bestseller-1","bestseller-2"]')).toBe(true);
    expect(answers.every((a) => a.headers['x-breakwater-fallback'] === 'top_items')).toBe(true);
    expect(answers[0]?.headers['content-type']).toBe('application/json');
    expect(up.received).toHaveLength(3); // the breaker opened after 3: the rest never reached it
    set({ status: 200, body: 'live recommendations' });
    await sleep(350);
    const probe = await get(bw, '/recommendations');
    expect(probe).toMatchObject({ status: 200, body: 'live recommendations' });
    expect(probe.headers['x-breakwater-fallback']).toBeUndefined();
    const after = await get(bw, '/recommendations');
    expect(after.body).toBe('live recommendations');
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toMatch(
      /breakwater_fallbacks_total\{upstream="reco",fallback="top_items",reason="error"\} 3/,
    );
    expect(text).toMatch(
      /breakwater_fallbacks_total\{upstream="reco",fallback="top_items",reason="breaker_open"\} 3/,
    );
  });

  it('the cache fallback serves the last good body with Age; a cache miss falls through to the static one', async () => {
    const { up, set } = await switchable({ status: 200, body: 'stock: 42' });
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: inventory }] }]
admin: { port: 0 }
upstreams:
  inventory: { endpoints: ["${up.url}"], retry: { enabled: false }, fallback: last_stock }
fallbacks:
  last_stock: { type: cache, max_stale: 5m, then: estimated_stock }
  estimated_stock: { type: static_response, body: 'stock: unknown (estimated)' }
`);
    expect((await get(bw, '/items/1')).body).toBe('stock: 42');
    set({ status: 503 });
    const cached = await get(bw, '/items/1');
    expect(cached).toMatchObject({ status: 200, body: 'stock: 42' });
    expect(cached.headers['x-breakwater-fallback']).toBe('last_stock');
    expect(cached.headers.age).toBe('0');
    const head = await request(`${bw.url()}/items/1`, { method: 'HEAD' });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe('9');
    await head.body.dump();
    const miss = await get(bw, '/items/2');
    expect(miss).toMatchObject({ status: 200, body: 'stock: unknown (estimated)' });
    expect(miss.headers['x-breakwater-fallback']).toBe('estimated_stock');
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toMatch(/breakwater_cache_lookups_total\{upstream="inventory",result="hit"\} 2/);
    expect(text).toMatch(/breakwater_cache_lookups_total\{upstream="inventory",result="miss"\} 1/);
    expect(text).toMatch(/breakwater_cache_entries 1/);
    expect(text).toMatch(/breakwater_cache_bytes [1-9]/);
  });

  it('never caches Cache-Control: no-store or private responses, Set-Cookie, nor bodies over max_entry_bytes', async () => {
    let failing = false;
    const up = await startUpstream((req, res) => {
      if (failing) {
        res.statusCode = 500;
        res.end();
        return;
      }
      const special: Record<string, [string, string]> = {
        '/private': ['cache-control', 'private'],
        '/nostore': ['cache-control', 'no-store'],
        '/cookie': ['set-cookie', 'a=1'],
      };
      const h = special[req.url ?? ''];
      const headers = h ? { [h[0]]: h[1] } : {};
      res.writeHead(200, headers);
      res.end(req.url === '/big' ? 'x'.repeat(100) : 'ok');
    });
    cleanup.push(() => up.close());
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
cache: { max_entry_bytes: 16 }
upstreams:
  app: { endpoints: ["${up.url}"], retry: { enabled: false }, fallback: c }
fallbacks:
  c: { type: cache }
`);
    for (const p of ['/private', '/nostore', '/cookie', '/big', '/small'])
      expect((await get(bw, p)).status).toBe(200);
    expect(bw.bw.cache?.entries).toBe(1);
    failing = true;
    expect(await get(bw, '/small')).toMatchObject({ status: 200, body: 'ok' });
    for (const p of ['/private', '/nostore', '/cookie', '/big']) expect((await get(bw, p)).status).toBe(500);
  });

  it('a fallback of type upstream sends the request to another upstream', async () => {
    const primary = await switchable({ status: 502 });
    const replica = await switchable({ status: 200, body: 'from the replica' });
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: eu }] }]
admin: { port: 0 }
upstreams:
  eu: { endpoints: ["${primary.up.url}"], retry: { enabled: false }, fallback: other_zone }
  us: { endpoints: ["${replica.up.url}"], fallback: back_to_eu }
fallbacks:
  other_zone: { type: upstream, upstream: us }
  back_to_eu: { type: upstream, upstream: eu }
`);
    const res = await get(bw, '/orders/7');
    expect(res).toMatchObject({ status: 200, body: 'from the replica' });
    expect(res.headers['x-breakwater-fallback']).toBe('other_zone');
    expect(replica.up.received[0]?.url).toBe('/orders/7');
  });

  it('rate_limited does not trigger a fallback unless `on` names it', async () => {
    // One token, and the next only in 100 s: a slow machine cannot earn one during the test.
    const { up } = await switchable({ status: 200 });
    const bw = await proxy(`
listeners:
  - name: main
    port: 0
    routes: [{ match: { path_prefix: /a }, upstream: a }, { upstream: b }]
admin: { port: 0 }
upstreams:
  a: { endpoints: ["${up.url}"], rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1 }, fallback: busy }
  b: { endpoints: ["${up.url}"], rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1 }, fallback: busy_too }
fallbacks:
  busy: { type: static_response, body: 'later' }
  busy_too: { type: static_response, status: 503, body: 'try later', on: [rate_limited] }
`);
    await get(bw, '/a');
    expect((await get(bw, '/a')).status).toBe(429);
    await get(bw, '/b');
    const shaped = await get(bw, '/b');
    expect(shaped).toMatchObject({ status: 503, body: 'try later' });
    expect(shaped.headers['x-breakwater-fallback']).toBe('busy_too');
  });
});

describe('degradation (the seed conditions)', () => {
  const config = (reco: string, search: string, probeRatio = '30%') => `
listeners:
  - name: main
    port: 0
    routes:
      - { match: { path_prefix: /search }, upstream: search-service }
      - { upstream: recommendation-service }
admin: { port: 0 }
upstreams:
  recommendation-service: { endpoints: ["${reco}"], retry: { enabled: false }, fallback: reco_static }
  search-service: { endpoints: ["${search}"], retry: { enabled: false } }
fallbacks:
  reco_static: { type: static_response, body: 'static recommendations' }
degradation:
  enabled: true
  window: 2s
  minimum_requests: 5
  recovery: 600ms
  probe_ratio: ${probeRatio}
  services:
    - name: recommendation-service
      fallback: static_response
      conditions:
        - type: latency
          threshold: 100ms
        - type: error_rate
          threshold: 50%
    - name: search-service
      fallback: cache_only
      conditions:
        - type: availability
          threshold: 80%
`;

  const recovered = (bw: Running, upstream: string) => () =>
    bw.logs.some((l) => l.event === 'degradation' && l.degraded === false && l.upstream === upstream);

  /** Sends a request every `every` ms until `until` holds or `maxMs` passes; returns the answers. */
  async function drive(
    bw: Running,
    path: string,
    until: (a: Awaited<ReturnType<typeof get>>) => boolean,
    maxMs: number,
    every = 40,
  ) {
    const t0 = performance.now();
    const seen: { at: number; fallback: unknown; status: number }[] = [];
    for (;;) {
      const a = await get(bw, path);
      seen.push({
        at: performance.now() - t0,
        fallback: a.headers['x-breakwater-fallback'],
        status: a.status,
      });
      if (until(a) || performance.now() - t0 > maxMs) return seen;
      await sleep(every);
    }
  }

  it('latency: a slow upstream degrades to the static response, and recovers only after the recovery period', async () => {
    const reco = await switchable({ status: 200, delayMs: 150, body: 'live' });
    const search = await switchable({ status: 200 });
    const bw = await proxy(config(reco.up.url, search.up.url));
    const degrading = await drive(
      bw,
      '/reco',
      (a) => a.headers['x-breakwater-fallback'] === 'reco_static',
      3000,
      0,
    );
    expect(degrading.at(-1)?.fallback).toBe('reco_static');
    expect(degrading.length).toBeGreaterThanOrEqual(6); // at least minimum_requests measured first
    const line = bw.logs.find((l) => l.event === 'degradation' && l.degraded === true);
    expect(line).toMatchObject({
      upstream: 'recommendation-service',
      condition: 'latency p99',
      threshold: 100,
    });
    expect(line?.value as number).toBeGreaterThan(100);
    // While degraded, requests are answered without the upstream, but for the probes.
    const hitsWhenDegraded = reco.up.received.length;
    const during = await drive(bw, '/reco', () => false, 600);
    const probes = reco.up.received.length - hitsWhenDegraded;
    // Every answer is the fallback except the probes, and only the probes reached the upstream.
    const answeredLive = during.filter((a) => a.fallback === undefined).length;
    expect(during.filter((a) => a.fallback === 'reco_static').length).toBeGreaterThanOrEqual(1);
    expect(probes).toBe(answeredLive);
    // The upstream heals: back to normal, but only after the conditions stayed clear for `recovery`.
    reco.set({ status: 200, body: 'live' });
    await drive(bw, '/reco', recovered(bw, 'recommendation-service'), 8000);
    expect(await get(bw, '/reco')).toMatchObject({ status: 200, body: 'live' });
    const degradedAt = Date.parse(
      String(bw.logs.find((l) => l.event === 'degradation' && l.degraded === true)?.time),
    );
    const recoveredAt = Date.parse(
      String(bw.logs.find((l) => l.event === 'degradation' && l.degraded === false)?.time),
    );
    expect(recoveredAt - degradedAt).toBeGreaterThanOrEqual(600);
  });

  it('error_rate: more than 50% failures degrades; recovery follows the same hysteresis', async () => {
    const reco = await switchable({ status: 500 });
    const search = await switchable({ status: 200 });
    const bw = await proxy(config(reco.up.url, search.up.url));
    for (let i = 0; i < 6; i++) await get(bw, '/reco');
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toMatch(/breakwater_degraded\{upstream="recommendation-service"\} 1/);
    expect(bw.logs.find((l) => l.event === 'degradation' && l.degraded === true)).toMatchObject({
      condition: 'error_rate',
      value: 1,
    });
    reco.set({ status: 200, body: 'live' });
    await drive(bw, '/reco', recovered(bw, 'recommendation-service'), 8000);
    expect(recovered(bw, 'recommendation-service')()).toBe(true);
    expect(await get(bw, '/reco')).toMatchObject({ status: 200, body: 'live' });
  });

  it('availability: under 80% serves only from cache (cached answers, 503 for the rest), then recovers', async () => {
    const reco = await switchable({ status: 200 });
    const search = await switchable({ status: 200, body: 'results for shoes' });
    const bw = await proxy(config(reco.up.url, search.up.url));
    expect((await get(bw, '/search?q=shoes')).body).toBe('results for shoes');
    search.set({ status: 503 });
    for (let i = 0; i < 6; i++) await get(bw, '/search?q=hats');
    // Probes still reach the (failing) upstream; every other request is answered from the cache.
    const cached = (
      await drive(bw, '/search?q=shoes', (a) => a.headers['x-breakwater-fallback'] !== undefined, 3000, 0)
    ).at(-1);
    expect(cached).toMatchObject({ status: 200, fallback: 'cache_only' });
    expect((await get(bw, '/search?q=shoes')).body).toMatch(/results for shoes|status 503/);
    const uncached = (
      await drive(
        bw,
        '/search?q=socks',
        (a) => a.headers['content-type'] === 'application/problem+json',
        3000,
        0,
      )
    ).at(-1);
    expect(uncached?.status).toBe(503);
    expect(bw.logs.find((l) => l.event === 'degradation' && l.degraded === true)).toMatchObject({
      upstream: 'search-service',
      condition: 'availability',
    });
    search.set({ status: 200, body: 'fresh' });
    await drive(bw, '/search?q=socks', recovered(bw, 'search-service'), 8000);
    expect(recovered(bw, 'search-service')()).toBe(true);
    expect(await get(bw, '/search?q=socks')).toMatchObject({ status: 200, body: 'fresh' });
  });
});
