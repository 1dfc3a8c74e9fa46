import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort } from '../kit/process.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

interface Ep extends TestUpstream {
  name: string;
  hits: number;
  set(o: { status?: number; delayMs?: number; health?: number }): void;
}

async function endpoint(
  name: string,
  o: { status?: number; delayMs?: number; health?: number } = {},
): Promise<Ep> {
  const state = { status: 200, delayMs: 0, health: 200, ...o };
  let hits = 0;
  const up = await startUpstream((req, res) => {
    if (req.url === '/health') {
      res.statusCode = state.health;
      res.end();
      return;
    }
    hits++;
    setTimeout(() => {
      res.statusCode = state.status;
      res.end(name);
    }, state.delayMs);
  });
  cleanup.push(() => up.close());
  const ep = Object.assign(up, {
    name,
    set(n: typeof o) {
      Object.assign(state, n);
    },
  });
  Object.defineProperty(ep, 'hits', { get: () => hits });
  return ep as Ep;
}

async function proxy(upstreamYaml: string, extra = '', file?: string): Promise<Running> {
  const yaml = `
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app:
${upstreamYaml}
${extra}`;
  const bw = await startBreakwater(yaml, file ? { file } : {});
  cleanup.push(() => bw.stop());
  return bw;
}

async function send(bw: Running, n: number, concurrency = 1): Promise<string[]> {
  const out: string[] = [];
  let left = n;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const res = await request(`${bw.url()}/x`);
        out.push(`${res.statusCode} ${await res.body.text()}`);
      }
    }),
  );
  return out;
}

const count = (xs: string[], s: string) => xs.filter((x) => x === s).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('load balancing', () => {
  it('round robin is even', async () => {
    const eps = await Promise.all(['a', 'b', 'c'].map((n) => endpoint(n)));
    const bw = await proxy(`    endpoints: [${eps.map((e) => `"${e.url}"`).join(', ')}]`);
    const answers = await send(bw, 30);
    expect(eps.map((e) => count(answers, `200 ${e.name}`))).toEqual([10, 10, 10]);
  });

  it('honours weights: 1:3 gets 25% / 75%', async () => {
    const [a, b] = await Promise.all([endpoint('a'), endpoint('b')]);
    const bw = await proxy(`    endpoints: [{ url: "${a.url}", weight: 1 }, { url: "${b.url}", weight: 3 }]`);
    const answers = await send(bw, 40);
    expect([count(answers, '200 a'), count(answers, '200 b')]).toEqual([10, 30]);
  });

  it('least_conn avoids a slow endpoint', async () => {
    const [slow, fast] = await Promise.all([
      endpoint('slow', { delayMs: 200 }),
      endpoint('fast', { delayMs: 5 }),
    ]);
    const bw = await proxy(`    endpoints: ["${slow.url}", "${fast.url}"]\n    load_balancing: least_conn`);
    const answers = await send(bw, 60, 6);
    expect(count(answers, '200 slow')).toBeLessThan(count(answers, '200 fast') / 3);
  });

  it('p2c_ewma shifts load away from a slow endpoint within seconds', async () => {
    const [slow, fast] = await Promise.all([
      endpoint('slow', { delayMs: 80 }),
      endpoint('fast', { delayMs: 2 }),
    ]);
    const bw = await proxy(`    endpoints: ["${slow.url}", "${fast.url}"]\n    load_balancing: p2c_ewma`);
    await send(bw, 20, 2); // warm-up: both get measured
    const answers = await send(bw, 100, 2);
    expect(count(answers, '200 slow')).toBeLessThan(20);
  });
});

describe('health', () => {
  it('outlier detection ejects a failing endpoint and re-admits it after the ejection time', async () => {
    const [bad, good] = await Promise.all([endpoint('bad', { status: 500 }), endpoint('good')]);
    const bw = await proxy(
      `    endpoints: ["${bad.url}", "${good.url}"]\n    retry: { enabled: false }\n    outlier_detection: { consecutive_failures: 3, base_ejection_time: 400ms, max_ejection_percent: 50% }`,
    );
    await send(bw, 6); // 3 reach bad -> ejected
    expect(bad.hits).toBe(3);
    const during = await send(bw, 10);
    expect(count(during, '200 good')).toBe(10);
    expect(bw.logs.some((l) => l.event === 'endpoint_ejected' && l.endpoint === bad.url)).toBe(true);
    bad.set({ status: 200 });
    await sleep(450);
    const after = await send(bw, 10);
    expect(count(after, '200 bad')).toBe(5);
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toContain(`breakwater_endpoint_ejections_total{upstream="app",endpoint="${bad.url}"} 1`);
  });

  it('an endpoint failing its health check gets no traffic, and returns when healthy', async () => {
    const [sick, well] = await Promise.all([endpoint('sick', { health: 503 }), endpoint('well')]);
    const bw = await proxy(
      `    endpoints: ["${sick.url}", "${well.url}"]\n    health_check: { path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }`,
    );
    await sleep(150);
    const answers = await send(bw, 10);
    expect(count(answers, '200 well')).toBe(10);
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toContain(`breakwater_endpoint_healthy{upstream="app",endpoint="${sick.url}"} 0`);
    sick.set({ health: 200 });
    await sleep(400);
    const later = await send(bw, 10);
    expect(count(later, '200 sick')).toBe(5);
  });

  it('fails over to priority 1 when priority 0 is down, and back when it heals', async () => {
    const [local, remote] = await Promise.all([endpoint('local'), endpoint('remote')]);
    const bw = await proxy(
      `    endpoints: [{ url: "${local.url}", priority: 0 }, { url: "${remote.url}", priority: 1 }]\n    health_check: { path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }`,
    );
    expect(count(await send(bw, 5), '200 local')).toBe(5);
    local.set({ health: 503 });
    await sleep(300);
    expect(count(await send(bw, 5), '200 remote')).toBe(5);
    local.set({ health: 200 });
    await sleep(300);
    expect(count(await send(bw, 5), '200 local')).toBe(5);
  });

  it('with every endpoint down: 503 at once, the fallback if there is one, or all of them in panic mode', async () => {
    const ep = await endpoint('only', { health: 503 });
    const hc = 'health_check: { path: /health, interval: 100ms, unhealthy_threshold: 1 }';
    const bw = await proxy(`    endpoints: ["${ep.url}"]\n    ${hc}`);
    await sleep(150);
    const res = await request(`${bw.url()}/x`);
    expect(res.statusCode).toBe(503);
    expect(((await res.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:no-healthy-endpoint',
    );
    const withFallback = await proxy(
      `    endpoints: ["${ep.url}"]\n    ${hc}\n    fallback: sorry`,
      'fallbacks:\n  sorry: { type: static_response, body: later }',
    );
    await sleep(150);
    expect(await send(withFallback, 1)).toEqual(['200 later']);
    const panic = await proxy(`    endpoints: ["${ep.url}"]\n    ${hc}\n    panic: true`);
    await sleep(150);
    expect(await send(panic, 1)).toEqual(['200 only']);
  });

  it('readiness waits for a healthy endpoint of require_upstreams', async () => {
    const app = await endpoint('app', { health: 503 });
    const bw = await proxy(
      `    endpoints: ["${app.url}"]\n    health_check: { path: /health, interval: 100ms, healthy_threshold: 1 }`,
      'readiness: { require_upstreams: [app] }',
    );
    await sleep(150);
    const notYet = await request(`${bw.adminUrl}/health/ready`);
    expect(notYet.statusCode).toBe(503);
    expect(((await notYet.body.json()) as { reason: string }).reason).toMatch(
      /waiting for a healthy endpoint of app/,
    );
    app.set({ health: 200 });
    await sleep(250);
    expect((await request(`${bw.adminUrl}/health/ready`)).statusCode).toBe(200);
  });
});

describe('host names', () => {
  it('resolves an endpoint host name into one endpoint per address', async () => {
    const ep = await endpoint('named');
    const port = new URL(ep.url).port;
    const bw = await proxy(`    endpoints: ["http://localhost:${port}"]\n    dns_refresh: 100ms`);
    await sleep(250);
    const state = (await (await request(`${bw.adminUrl}/state`)).body.json()) as {
      upstreams: { app: { endpoints: { url: string }[] } };
    };
    expect(state.upstreams.app.endpoints.map((e) => e.url)).toContain(`http://127.0.0.1:${port}`);
    expect(await send(bw, 3)).toEqual(['200 named', '200 named', '200 named']);
  });
});

describe('blue-green', () => {
  it('switches traffic from blue to green by reload with no failed request', async () => {
    const [blue, green] = await Promise.all([
      endpoint('blue', { delayMs: 5 }),
      endpoint('green', { delayMs: 5 }),
    ]);
    const port = await freePort();
    const cfg = (b: number, g: number) => `
listeners: [{ name: main, port: ${port}, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app:
    endpoints: [{ url: "${blue.url}", group: blue }, { url: "${green.url}", group: green }]
    group_weights: { blue: ${b}, green: ${g} }
`;
    const file = join(mkdtempSync(join(tmpdir(), 'bw-bg-')), 'breakwater.yaml');
    writeFileSync(file, cfg(100, 0));
    const bw = await startBreakwater(cfg(100, 0), { file });
    cleanup.push(() => bw.stop());
    const results: string[] = [];
    /** Answers to requests sent after the reload had returned. */
    const afterReload: string[] = [];
    let reloaded = false;
    const stopAt = performance.now() + 1200;
    const load = Promise.all(
      Array.from({ length: 10 }, async () => {
        for (let i = 0; i < 2000 && performance.now() < stopAt; i++) {
          const sentAfterReload = reloaded;
          const res = await request(`http://127.0.0.1:${port}/x`);
          const answer = `${res.statusCode} ${await res.body.text()}`;
          results.push(answer);
          if (sentAfterReload) afterReload.push(answer);
        }
      }),
    );
    await sleep(400);
    const beforeReload = [...results];
    writeFileSync(file, cfg(0, 100));
    expect((await bw.bw.reload('blue-green')).ok).toBe(true);
    reloaded = true;
    await load;
    // No request failed; all blue before the switch, all green once the reload returned.
    expect(results.every((r) => r === '200 blue' || r === '200 green')).toBe(true);
    expect(beforeReload.length).toBeGreaterThan(0);
    expect(new Set(beforeReload)).toEqual(new Set(['200 blue']));
    expect(afterReload.length).toBeGreaterThan(0);
    expect(new Set(afterReload)).toEqual(new Set(['200 green']));
    const after = await request(`http://127.0.0.1:${port}/x`);
    expect(await after.body.text()).toBe('green');
  });
});
