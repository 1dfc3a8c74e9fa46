/**
 * Fleet mode against a real redis-server: three breakwater replicas share one global rate limit
 * and one Idempotency-Key store; Redis is killed and restarted under traffic.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Clock, systemClock } from '../../src/clock.js';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort } from '../kit/process.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';
import { requireTool } from '../kit/tools.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

interface Shot {
  readonly status: number;
  readonly ms: number;
  /** performance.now() when sent. */
  readonly at: number;
  /** performance.now() when the answer arrived. */
  readonly done: number;
  readonly path: string;
  readonly body: string;
  readonly headers: Record<string, string | string[] | undefined>;
}

async function shoot(
  base: string,
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
) {
  const at = performance.now();
  const res = await request(`${base}${path}`, {
    method: (init.method ?? 'GET') as 'GET',
    headers: init.headers,
    body: init.body,
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const body = await res.body.text();
  const done = performance.now();
  return { status: res.statusCode, ms: done - at, at, done, path, body, headers: res.headers } satisfies Shot;
}

/**
 * `total` requests spread evenly over `spanMs`, round robin over `urls`, to `<prefix>/<i>`; resolves
 * when all are answered.
 */
async function blast(
  urls: readonly string[],
  total: number,
  spanMs: number,
  prefix: string,
): Promise<Shot[]> {
  const t0 = performance.now();
  const pending: Promise<Shot>[] = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * spanMs) / total;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    pending.push(shoot(urls[i % urls.length] as string, `${prefix}/${i}`));
  }
  return Promise.all(pending);
}

const promtool = requireTool('promtool', 'prometheus');

function promtoolCheck(bin: string, text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    p.stdout.on('data', (d) => {
      output += d;
    });
    p.stderr.on('data', (d) => {
      output += d;
    });
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code, output }));
    p.stdin.end(text);
  });
}

/** Redis's own clock in seconds. */
async function redisTime(client: Redis): Promise<number> {
  const [s, us] = (await client.time()) as [number | string, number | string];
  return Number(s) + Number(us) / 1e6;
}

/** The sum of a metric's series whose labels include `labels`. */
async function metric(r: Running, name: string, labels: Record<string, string>): Promise<number> {
  const m = r.bw.metrics.registry.getSingleMetric(name);
  if (!m) throw new Error(`no metric ${name}`);
  const { values } = await m.get();
  let sum = 0;
  for (const v of values)
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  return sum;
}

async function sumOver(
  rs: readonly Running[],
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  let n = 0;
  for (const r of rs) n += await metric(r, name, labels);
  return n;
}

/**
 * What an ideal GCRA (rate, burst) admits of requests arriving at `times` (ms): the lower bound
 * the shared limit is held to, robust to gaps in the offered load on a busy machine.
 */
function idealAdmissions(times: readonly number[], rate: number, burst: number): number {
  const interval = 1000 / rate;
  let tat = Number.NEGATIVE_INFINITY;
  let n = 0;
  for (const t of [...times].sort((a, b) => a - b)) {
    const next = Math.max(tat, t) + interval;
    if (next - t <= burst * interval + 1e-9) {
      tat = next;
      n++;
    }
  }
  return n;
}

/** Decisions the replicas took without Redis (on_store_error). */
function fallbacks(rs: readonly Running[]): Promise<number> {
  return sumOver(rs, 'breakwater_rate_limit_decisions_total', { source: 'local_fallback' });
}

function p99(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? 0;
}

function fleetConfig(upstreamUrl: string, name: string, limiter: string, extra = ''): string {
  return `
listeners:
  - name: main
    port: 0
    routes:
      - name: pay
        match: { path_prefix: /pay }
        upstream: ${name}
        idempotency: { store: redis, key_scope: global }
      - name: payfwd
        match: { path_prefix: /payfwd }
        upstream: ${name}
        idempotency: { store: redis, key_scope: global, on_store_error: forward }
      - { name: api, upstream: ${name} }
admin: { port: 0 }
stores:
  redis: { url: "\${REDIS_URL}" ${extra} }
upstreams:
  ${name}:
    endpoints: ["${upstreamUrl}"]
    rate_limiter: ${limiter}
logging: { level: info, access_log: false }
`;
}

describe.skipIf(!redisTool.available)('fleet mode: three replicas share Redis', () => {
  let redis: RedisServer;
  let client: Redis;
  let up: TestUpstream;
  /** Upstream arrival time (performance.now()) per request path. */
  const arrivals = new Map<string, number>();
  /** Payment paths the upstream was called with, one entry per call. */
  const charges: string[] = [];
  const replicas: Running[] = [];

  async function fleet(yaml: string, clocks: (Clock | undefined)[] = [undefined, undefined, undefined]) {
    const started: Running[] = [];
    for (const clock of clocks) {
      const r = await startBreakwater(yaml, { env: { REDIS_URL: redis.url }, ...(clock ? { clock } : {}) });
      started.push(r);
      replicas.push(r);
    }
    return started;
  }

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    await client.connect();
    up = await startUpstream((req, res) => {
      const url = req.url ?? '';
      if (url.startsWith('/pay')) {
        // A payment: every request that reaches here is one charge.
        charges.push(url);
        setTimeout(() => {
          res.writeHead(201, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ charge: charges.length }));
        }, 300);
        return;
      }
      arrivals.set(url, performance.now());
      res.end('ok');
    });
  }, 60_000);

  // A test that fails half-way leaves neither replicas nor a stopped Redis to the next one.
  afterEach(async () => {
    for (const r of replicas.splice(0)) await r.stop();
    redis.resume();
    if (!redis.running) await redis.restart();
  });

  afterAll(async () => {
    client?.disconnect();
    await up?.close();
    await redis?.stop('SIGTERM');
  });

  /** The blast both rate tests run: 1000 requests over 3 s across the replicas. */
  /**
   * The blast both rate tests run: 1000 requests over 3 s across the replicas. `ideal` is what one
   * perfect bucket (100/s, burst 10) admits of the same requests, on the timeline they were sent
   * and on the one they were decided (arrival at the upstream for an admitted one, the answer for a
   * refused one): on a busy machine the offered load has gaps, and this bound follows them where a
   * fixed rate * seconds would not.
   */
  async function measuredBlast(fleetOf3: readonly Running[], prefix: string) {
    const before = await redisTime(client);
    const shots = await blast(
      fleetOf3.map((r) => r.url()),
      1000,
      3000,
      prefix,
    );
    const elapsed = (await redisTime(client)) - before;
    const admitted = shots.filter((s) => s.status === 200).length;
    const decided = shots.map((s) => (s.status === 200 ? (arrivals.get(s.path) ?? s.done) : s.done));
    const sent = shots.map((s) => s.at);
    const atUpstream = shots.filter((s) => arrivals.has(s.path)).length;
    // Neither timeline is exact (a request is decided between being sent and being answered): the
    // lower bound takes the lesser of the two.
    const ideal = Math.min(idealAdmissions(decided, 100, 10), idealAdmissions(sent, 100, 10));
    return { shots, elapsed, admitted, atUpstream, ideal };
  }

  // A generous command_timeout: these tests are about sharing, not outages (a busy machine must not
  // push the replicas into their local fallback).
  const ACCURATE = 'command_timeout: 2s';

  it('a global limit of 100 req/s holds across three replicas: 1000 requests let ~100/s through, not ~300/s', async () => {
    const fleetOf3 = await fleet(
      fleetConfig(
        up.url,
        'shared',
        '{ max_requests_per_second: 100, burst_limit: 10, scope: global, replicas: 3 }',
        `, ${ACCURATE}`,
      ),
    );
    const { shots, elapsed, admitted, ideal, atUpstream } = await measuredBlast(fleetOf3, '/a');
    const limited = shots.filter((s) => s.status === 429);
    expect(admitted + limited.length).toBe(1000);
    expect(atUpstream).toBe(admitted);
    // Every decision came from Redis (no local fallback, which could admit more).
    expect(await fallbacks(fleetOf3)).toBe(0);
    // Redis's clock bounds what GCRA can admit: the burst plus the rate over the run (three local
    // buckets of 100/s would have admitted about three times as much).
    expect(admitted).toBeLessThanOrEqual(10 + 100 * elapsed);
    // And the limit is not stingier than an ideal bucket fed the same requests, within 10 %.
    expect(admitted).toBeGreaterThanOrEqual(Math.floor(ideal * 0.9));
    // 429s carry the global state.
    const h = limited[0]?.headers;
    expect(h?.['ratelimit-policy']).toBe('"default";q=100;w=1');
    expect(String(h?.ratelimit)).toMatch(/^"default";r=0;t=\d+$/);
    expect(Number(h?.['retry-after'])).toBeGreaterThanOrEqual(1);
    // Every admission was Redis's decision; repeated denials came from the local cache.
    expect(
      await sumOver(fleetOf3, 'breakwater_rate_limit_decisions_total', {
        source: 'store',
        result: 'allowed',
      }),
    ).toBe(admitted);
    expect(
      await sumOver(fleetOf3, 'breakwater_rate_limit_decisions_total', { source: 'cache' }),
    ).toBeGreaterThan(0);
    for (const r of fleetOf3) await r.stop();
  }, 60_000);

  it("one replica's clock 5 s ahead changes nothing: the script reads Redis's clock", async () => {
    const skewed: Clock = {
      now: () => systemClock.now() + 5_000,
      wall: () => systemClock.wall() + 5_000,
      setTimeout: systemClock.setTimeout,
      clearTimeout: systemClock.clearTimeout,
    };
    const fleetOf3 = await fleet(
      fleetConfig(
        up.url,
        'skewed',
        '{ max_requests_per_second: 100, burst_limit: 10, scope: global, replicas: 3 }',
        `, ${ACCURATE}`,
      ),
      [undefined, skewed, undefined],
    );
    const { shots, elapsed, admitted, ideal } = await measuredBlast(fleetOf3, '/b');
    expect(await fallbacks(fleetOf3)).toBe(0);
    expect(admitted).toBeLessThanOrEqual(10 + 100 * elapsed);
    expect(admitted).toBeGreaterThanOrEqual(Math.floor(ideal * 0.9));
    // The skewed replica got its fair part of the admissions, no more (it cannot refill the bucket).
    const bySkewed = shots.filter((s, i) => i % 3 === 1 && s.status === 200).length;
    expect(bySkewed).toBeLessThan(admitted * 0.5);
    for (const r of fleetOf3) await r.stop();
  }, 60_000);
  it('concurrent duplicate POSTs with one Idempotency-Key over three replicas reach the upstream once', async () => {
    const fleetOf3 = await fleet(
      fleetConfig(up.url, 'payments', '{ max_requests_per_second: 10000, scope: global }', `, ${ACCURATE}`),
    );
    const send = (r: Running, key: string, body: string) =>
      shoot(r.url(), '/pay/charges', {
        method: 'POST',
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body,
      });
    const answers = await Promise.all(
      Array.from({ length: 9 }, (_, i) => send(fleetOf3[i % 3] as Running, 'order-42', '{"amount":100}')),
    );
    expect(charges.filter((c) => c === '/pay/charges')).toHaveLength(1);
    const original = answers.filter(
      (a) => a.status === 201 && a.headers['idempotent-replayed'] === undefined,
    );
    expect(original).toHaveLength(1);
    for (const a of answers) {
      if (a === original[0]) continue;
      if (a.status === 409) expect(a.body).toContain('idempotency-conflict');
      else {
        expect(a.status).toBe(201);
        expect(a.headers['idempotent-replayed']).toBe('true');
        expect(a.body).toBe(original[0]?.body);
      }
    }
    // Later, on any replica: the stored response, byte for byte; another body under the key: 422.
    // (The response is written to Redis as its body ends, so a retry right behind the first answer
    // may still get 409 for one round trip; a client retries that, as here, a bounded number of times.)
    const settled = async (r: Running) => {
      for (let i = 0; ; i++) {
        const a = await send(r, 'order-42', '{"amount":100}');
        if (a.status !== 409 || i === 20) return a;
        await new Promise((res) => setTimeout(res, 50));
      }
    };
    for (const r of fleetOf3) {
      const again = await settled(r);
      expect(again.status).toBe(201);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.body).toBe(original[0]?.body);
    }
    const other = await send(fleetOf3[2] as Running, 'order-42', '{"amount":999}');
    expect(other.status).toBe(422);
    expect(charges.filter((c) => c === '/pay/charges')).toHaveLength(1);
    // A request that produced nothing to replay releases the key on every replica: a retry runs.
    expect(await sumOver(fleetOf3, 'breakwater_idempotency_total', { result: 'stored' })).toBe(1);
    for (const r of fleetOf3) await r.stop();
  }, 60_000);

  it('Redis killed and restarted under traffic: no request hangs, the local share applies and is counted, then the global limit again', async () => {
    const fleetOf3 = await fleet(
      fleetConfig(
        up.url,
        'outage',
        '{ max_requests_per_second: 60, burst_limit: 6, scope: global, replicas: 3, on_store_error: local }',
        ', command_timeout: 100ms',
      ),
    );
    const urls = fleetOf3.map((r) => r.url());
    // A steady 40 req/s, round robin, while Redis is up, down, and back.
    const before = await blast(urls, 40, 1000, '/o/before');
    await redis.stop('SIGKILL');
    const down = await blast(urls, 80, 2000, '/o/down');
    // The key with Idempotency-Key cannot be checked: 503 (reject), or forwarded (forward).
    const pay = await shoot(urls[0] as string, '/pay/x', {
      method: 'POST',
      headers: { 'idempotency-key': 'k-down' },
      body: 'x',
    });
    expect(pay.status).toBe(503);
    expect(pay.body).toContain('store-unavailable');
    const payFwd = await shoot(urls[0] as string, '/payfwd/x', {
      method: 'POST',
      headers: { 'idempotency-key': 'k-down' },
      body: 'x',
    });
    expect(payFwd.status).toBe(201);
    await redis.restart();
    // Traffic until every replica decides from Redis again (bounded).
    const storeDecisions = async () =>
      sumOver(fleetOf3, 'breakwater_rate_limit_decisions_total', { source: 'store' });
    const afterKill = await storeDecisions();
    const after: Shot[] = [];
    const end = Date.now() + 15_000;
    while (Date.now() < end) {
      after.push(...(await blast(urls, 12, 300, '/o/after')));
      let all = true;
      for (const r of fleetOf3)
        if ((await metric(r, 'breakwater_rate_limit_decisions_total', { source: 'store' })) === 0)
          all = false;
      if ((await storeDecisions()) > afterKill + 6 && all) break;
    }
    expect(await storeDecisions()).toBeGreaterThan(afterKill + 6);

    // No request hung: each was answered, 200 or 429, and the outage added little latency.
    for (const s of [...before, ...down, ...after]) expect([200, 429]).toContain(s.status);
    const added = p99(down.map((s) => s.ms)) - p99(before.map((s) => s.ms));
    expect(added).toBeLessThan(100 + 100);
    // The failure mode was applied and counted; logged once per replica for the outage.
    expect(
      await sumOver(fleetOf3, 'breakwater_rate_limit_decisions_total', { source: 'local_fallback' }),
    ).toBeGreaterThan(0);
    const notSent = await sumOver(fleetOf3, 'breakwater_store_requests_total', {
      op: 'rate_limit',
      result: 'unavailable',
    });
    expect(notSent).toBeGreaterThan(0);
    for (const r of fleetOf3) {
      expect(r.logs.filter((l) => l.event === 'rate_limit_store_unavailable')).toHaveLength(1);
      const state = (await (await request(`${r.adminUrl}/state`)).body.json()) as {
        stores: { redis: { up: boolean; breaker: string } };
      };
      expect(state.stores.redis.up).toBe(true);
      expect(await metric(r, 'breakwater_store_up', { store: 'redis' })).toBe(1);
    }
    // The store's series pass promtool, as the rest of the exposition does.
    const scrape = await (await request(`${fleetOf3[0]?.adminUrl}/metrics`)).body.text();
    for (const name of [
      'breakwater_store_requests_total',
      'breakwater_store_duration_seconds_bucket',
      'breakwater_store_up',
      'breakwater_rate_limit_decisions_total',
    ])
      expect(scrape).toContain(name);
    // (Without promtool, outside CI, that one check is left out; the tools line says so.)
    if (promtool.path !== undefined) {
      const checked = await promtoolCheck(promtool.path, scrape);
      expect(checked.output).toBe('');
      expect(checked.code).toBe(0);
    }
    expect(await sumOver(fleetOf3, 'breakwater_idempotency_total', { result: 'store_error_rejected' })).toBe(
      1,
    );
    expect(await sumOver(fleetOf3, 'breakwater_idempotency_total', { result: 'store_error_forwarded' })).toBe(
      1,
    );
    for (const r of fleetOf3) await r.stop();
  }, 60_000);

  it('a hung Redis (SIGSTOP) costs one command_timeout per probe: the store breaker keeps requests off it', async () => {
    const fleetOf3 = await fleet(
      fleetConfig(
        up.url,
        'hung',
        '{ max_requests_per_second: 1000, scope: global, replicas: 3, on_store_error: allow }',
        ', command_timeout: 20ms, breaker: { failure_threshold: 3, reset_timeout: 500ms }',
      ),
    );
    const urls = fleetOf3.map((r) => r.url());
    const before = await blast(urls, 30, 1000, '/h/before');
    redis.pause();
    let hung: Shot[];
    try {
      hung = await blast(urls, 90, 2000, '/h/hung');
    } finally {
      redis.resume();
    }
    for (const s of [...before, ...hung]) expect(s.status).toBe(200);
    const timeouts = await sumOver(fleetOf3, 'breakwater_store_requests_total', {
      op: 'rate_limit',
      result: 'timeout',
    });
    const refused = await sumOver(fleetOf3, 'breakwater_store_requests_total', {
      op: 'rate_limit',
      result: 'unavailable',
    });
    // Per replica: 3 to open the breaker, then one probe per 500 ms of the 2 s (and a little slack
    // for a slow run); every other request skipped Redis.
    expect(timeouts).toBeLessThanOrEqual(3 * (3 + 6));
    expect(refused).toBeGreaterThan(timeouts);
    // The slowest requests waited one command_timeout, not more.
    const added = p99(hung.map((s) => s.ms)) - p99(before.map((s) => s.ms));
    expect(added).toBeLessThan(20 + 100);
    for (const r of fleetOf3) await r.stop();
  }, 60_000);
  it('one Redis connection per process: kept by a reload that does not change stores.redis, replaced by one that does, closed with its metric series by one that drops it', async () => {
    const named = async () =>
      ((await client.client('LIST')) as string).split('\n').filter((l) => / name=breakwater /.test(l)).length;
    // Replicas of the tests before may still be closing their connections.
    const quiet = Date.now() + 5_000;
    while ((await named()) !== 0 && Date.now() < quiet) await new Promise((r) => setTimeout(r, 50));
    const base = await named();
    expect(base).toBe(0);
    const yaml = (prefix: string) => `
listeners: [{ name: main, port: 0, routes: [{ name: api, upstream: reloaded }] }]
admin: { port: 0 }
stores:
  redis: { url: "${redis.url}", key_prefix: "${prefix}" }
upstreams:
  reloaded:
    endpoints: ["${up.url}"]
    rate_limiter: { max_requests_per_second: 0.2, burst_limit: 10, scope: global }
shutdown: { drain_timeout: 200ms }
logging: { level: info, access_log: false }
`;
    const file = join(mkdtempSync(join(tmpdir(), 'bw-fleet-')), 'breakwater.yaml');
    writeFileSync(file, yaml('one:'));
    const bw = await startBreakwater(yaml('one:'), { file });
    try {
      expect(await named()).toBe(base + 1);
      expect((await shoot(bw.url(), '/r/1')).status).toBe(200);
      expect(await client.exists('one:rl:{reloaded}')).toBe(1);
      writeFileSync(file, `${yaml('one:')}\n# a comment changes nothing\n`);
      expect((await bw.bw.reload('test')).ok).toBe(true);
      expect(await named()).toBe(base + 1);
      writeFileSync(file, yaml('two:'));
      expect((await bw.bw.reload('test')).ok).toBe(true);
      expect((await shoot(bw.url(), '/r/2')).status).toBe(200);
      expect(await client.exists('two:rl:{reloaded}')).toBe(1);
      // (A GCRA key lives until its bucket is full again: 5 s here.) The old connection closes once
      // the drain timeout has passed.
      const end = Date.now() + 10_000;
      while ((await named()) !== base + 1 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      expect(await named()).toBe(base + 1);
      const storeSeries = async () =>
        (await (await request(`${bw.adminUrl}/metrics`)).body.text())
          .split('\n')
          .filter((l) => l.startsWith('breakwater_store_'));
      expect(await storeSeries()).not.toEqual([]);
      // A reload that drops stores.redis: the connection closes and the store's series go with it.
      const local = yaml('three:')
        .replace(/^stores:\n.*\n/m, '')
        .replace('scope: global', 'scope: local');
      writeFileSync(file, local);
      expect((await bw.bw.reload('test')).ok).toBe(true);
      expect((await shoot(bw.url(), '/r/3')).status).toBe(200);
      const gone = Date.now() + 10_000;
      while ((await named()) !== base && Date.now() < gone) await new Promise((r) => setTimeout(r, 50));
      expect(await named()).toBe(base);
      expect(await storeSeries()).toEqual([]);
    } finally {
      await bw.stop();
    }
    const end = Date.now() + 5_000;
    while ((await named()) !== base && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(await named()).toBe(base);
  }, 30_000);
});

describe('fleet mode with no Redis at all', () => {
  it('starts within connect_timeout, never crashes, applies on_store_error: deny (503), allow and local, and /state shows the store down in snake_case keys', async () => {
    const port = await freePort(); // nothing listens there
    const up = await startUpstream((_req, res) => res.end('ok'));
    const started = Date.now();
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - { name: deny, match: { path_prefix: /deny }, upstream: denied }
      - { name: allow, match: { path_prefix: /allow }, upstream: allowed }
      - { name: local, upstream: shared }
admin: { port: 0 }
stores:
  redis: { url: "redis://127.0.0.1:${port}", connect_timeout: 300ms }
upstreams:
  denied:
    endpoints: ["${up.url}"]
    rate_limiter: { max_requests_per_second: 100, scope: global, on_store_error: deny }
  allowed:
    endpoints: ["${up.url}"]
    rate_limiter: { max_requests_per_second: 1, burst_limit: 1, scope: global, on_store_error: allow }
  shared:
    endpoints: ["${up.url}"]
    rate_limiter: { max_requests_per_second: 2, burst_limit: 4, scope: global, replicas: 2 }
logging: { level: info, access_log: false }
`);
    try {
      expect(Date.now() - started).toBeLessThan(5_000);
      const denied = await shoot(bw.url(), '/deny/x');
      expect(denied.status).toBe(503);
      expect(JSON.parse(denied.body).type).toBe('urn:breakwater:problem:store-unavailable');
      expect(Number(denied.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      // allow: a limit of 1/s that lets everything through while Redis is away.
      for (let i = 0; i < 5; i++) expect((await shoot(bw.url(), '/allow/x')).status).toBe(200);
      // local: the share is 2/2 = 1/s with burst 4/2 = 2: two pass, the third is limited.
      const local = [];
      for (let i = 0; i < 3; i++) local.push((await shoot(bw.url(), '/x')).status);
      expect(local).toEqual([200, 200, 429]);
      const decided = (labels: Record<string, string>) =>
        metric(bw, 'breakwater_rate_limit_decisions_total', { source: 'local_fallback', ...labels });
      expect(await decided({ upstream: 'denied', result: 'unavailable' })).toBe(1);
      expect(await decided({ upstream: 'allowed', result: 'allowed' })).toBe(5);
      expect(await decided({ upstream: 'shared', result: 'limited' })).toBe(1);
      expect(await metric(bw, 'breakwater_store_up', { store: 'redis' })).toBe(0);
      const state = (await (await request(`${bw.adminUrl}/state`)).body.json()) as {
        stores: { redis: { up: boolean; connection: string; last_error: string | null } };
        upstreams: Record<string, { rate_limiter: Record<string, unknown> }>;
      };
      expect(state.stores.redis.up).toBe(false);
      expect(state.stores.redis.connection).not.toBe('ready');
      expect(state.stores.redis.last_error).toMatch(/ECONNREFUSED|not connected/);
      // rate and burst are the fleet's; the local share is half of them (replicas: 2).
      expect(state.upstreams.shared?.rate_limiter).toMatchObject({
        scope: 'global',
        rate_per_second: 2,
        burst: 4,
        global: { fallback: 'local', local_share_per_second: 1, store: { up: false } },
      });
      // Every key snake_case, as the rest of /state (upstream names are the config's, not keys).
      const camel: string[] = [];
      const walk = (v: unknown, at: string) => {
        if (v && typeof v === 'object')
          for (const [k, x] of Object.entries(v)) {
            if (at !== 'upstreams' && !/^[a-z0-9]+(_[a-z0-9]+)*$/.test(k)) camel.push(`${at}.${k}`);
            walk(x, at ? `${at}.${k}` : k);
          }
      };
      walk(state, '');
      expect(camel).toEqual([]);
      expect(bw.logs.filter((l) => l.event === 'store_error')).toHaveLength(1);
    } finally {
      await bw.stop();
      await up.close();
    }
  }, 30_000);
});
