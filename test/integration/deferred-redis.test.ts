/**
 * Deferred delivery on the Redis Streams backend (`deferred_store.backend: redis`), with breakwater
 * as users run it (dist/cli.js in child processes), a real redis-server, and an upstream that
 * deduplicates by Idempotency-Key: two replicas share one queue; a replica killed with SIGKILL
 * mid-delivery hands its claimed items to the other after the lease; a poison item fails alone; a
 * full queue answers 503 and loses nothing; Redis away answers 503 at once.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDedupUpstream } from '../kit/dedup-upstream.js';
import { type Child, freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';
import { until } from '../kit/until.js';

interface Replica {
  readonly port: number;
  readonly admin: number;
  child: Child;
}

function config(
  r: { port: number; admin: number },
  upPort: number,
  redisUrl: string,
  prefix: string,
  extra = '',
  schedule = '[50ms, 100ms]',
): string {
  return `
listeners:
  - name: main
    port: ${r.port}
    routes:
      - name: orders
        upstream: orders
        deferred:
          schedule: ${schedule}
          ordering_key: x-customer
admin:
  port: ${r.admin}
upstreams:
  orders:
    endpoints: [http://127.0.0.1:${upPort}]
    connect_timeout: 200ms
stores:
  redis: { url: "${redisUrl}", key_prefix: "${prefix}" }
deferred_store:
  backend: redis
  lease: 2s
${extra}
data_dir: ${mkdtempSync(join(tmpdir(), 'bw-dredis-'))}
logging: { level: info, access_log: false }
`;
}

async function start(yaml: string, admin: number): Promise<Child> {
  const child = spawnBreakwater(yaml);
  try {
    await waitFor(`http://127.0.0.1:${admin}/health/ready`, 200, 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(
      `${(err as Error).message}\n${child.stderr.join('')}\n${child.stdout.slice(-20).join('\n')}`,
    );
  }
  return child;
}

async function stop(child: Child): Promise<void> {
  child.kill('SIGTERM');
  await child.exited;
}

function post(port: number, key: string, customer: string) {
  return fetch(`http://127.0.0.1:${port}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key, 'x-customer': customer },
    body: `{"order":"${key}"}`,
  });
}

async function items(
  admin: number,
  query: string,
): Promise<{ id: string; status: string; idempotency_key: string; attempts: number }[]> {
  const r = await fetch(`http://127.0.0.1:${admin}/deferred?${query}&limit=1000`);
  expect(r.status).toBe(200);
  return (
    (await r.json()) as { items: { id: string; status: string; idempotency_key: string; attempts: number }[] }
  ).items;
}

describe.skipIf(!redisTool.available)('deferred delivery on Redis Streams', () => {
  let redis: RedisServer;
  let client: Redis;
  let n = 0;
  /** A fresh key prefix per test: each test has its own queue in the one redis-server. */
  const prefix = () => `bwt${++n}:`;

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    await client.connect();
  });
  /** Two replicas on one queue and one upstream port, shared by the tests that can (starts cost seconds). */
  let pair: { a: Replica; b: Replica; upPort: number } | undefined;
  async function sharedPair() {
    if (!pair) {
      const upPort = await freePort();
      const [a, b] = (await replicas(2, upPort, prefix())) as [Replica, Replica];
      pair = { a, b, upPort };
    }
    return pair;
  }
  afterAll(async () => {
    if (pair) await Promise.all([stop(pair.a.child), stop(pair.b.child)]);
    client.disconnect();
    await redis.stop();
  });

  async function replicas(
    count: number,
    upPort: number,
    p: string,
    extra = '',
    schedule?: string,
  ): Promise<Replica[]> {
    const out: Replica[] = [];
    for (let i = 0; i < count; i++) {
      const r = { port: await freePort(), admin: await freePort() };
      out.push({ ...r, child: await start(config(r, upPort, redis.url, p, extra, schedule), r.admin) });
    }
    return out;
  }

  it('two replicas share the queue: keyed POSTs accepted by both are each delivered once, in order per ordering key', async () => {
    const { a, b, upPort } = await sharedPair();
    const customers = 8;
    const perCustomer = 5;
    const sent = new Map<string, string[]>();
    await Promise.all(
      Array.from({ length: customers }, async (_, c) => {
        const list: string[] = [];
        sent.set(`c-${c}`, list);
        for (let i = 0; i < perCustomer; i++) {
          const key = `k-${c}-${i}`;
          // Alternating replicas: one customer's requests arrive at both.
          const r = await post((i + c) % 2 === 0 ? a.port : b.port, key, `c-${c}`);
          const text = await r.text();
          expect(r.status, text).toBe(202);
          const body = JSON.parse(text) as { status: string; id: string };
          expect(body.status).toBe('pending');
          list.push(key);
        }
      }),
    );
    const total = customers * perCustomer;
    // Both replicas see the whole queue (each item pending, or being tried against the down upstream).
    for (const r of [a, b]) {
      const all = await items(r.admin, '');
      expect(all.length).toBe(total);
      expect(all.every((i) => i.status === 'pending' || i.status === 'delivering')).toBe(true);
    }
    // /state (and the status page) show the shared queue from either replica.
    await until(
      async () => {
        const st = (await (await fetch(`http://127.0.0.1:${a.admin}/state`)).json()) as {
          deferred: { upstreams: Record<string, { pending: number; delivering: number }> };
        };
        const q = st.deferred.upstreams.orders;
        return q !== undefined && q.pending + q.delivering === total;
      },
      '/state shows the whole queue',
      5_000,
    );
    const up = await startDedupUpstream(upPort, { orderingHeader: 'x-customer', delayMs: 10 });
    try {
      const t0 = performance.now();
      await until(() => up.processed.size === total, 'every key delivered', 40_000);
      const ms = performance.now() - t0;
      for (const [key, count] of up.processed) expect(count, key).toBe(1);
      for (const [customer, keys] of sent) expect(up.order.get(customer), customer).toEqual(keys);
      await until(async () => (await items(b.admin, 'status=synced')).length === total, 'all synced', 10_000);
      // Each delivered through the upstream once: no item went to both replicas.
      expect(up.received()).toBe(total);
      console.log(
        `deferred on redis: two replicas delivered ${total} items (8 ordering keys) in ${Math.round(ms)} ms`,
      );
    } finally {
      await up.close();
    }
  }, 90_000);

  it('SIGKILL of a replica mid-delivery hands its claimed items to the other after the lease; each key once at the upstream', async () => {
    const upPort = await freePort();
    const p = prefix();
    const [a] = (await replicas(1, upPort, p)) as [Replica];
    let b: Replica | undefined;
    try {
      // The upstream is down: A accepts 12 items (3 customers) and claims them all.
      for (let c = 0; c < 3; c++)
        for (let i = 0; i < 4; i++) expect((await post(a.port, `s-${c}-${i}`, `c-${c}`)).status).toBe(202);
      await until(
        async () => Number(await client.xlen(`${p}deferred-stream:{deferred}`)) === 12,
        'twelve entries in the stream',
        5_000,
      );
      // B joins: the entries are A's already (read by A's consumer), B has none to take yet.
      [b] = (await replicas(1, upPort, p)) as [Replica];
      await until(
        async () => {
          const pending = (await client.call('XPENDING', `${p}deferred-stream:{deferred}`, 'deliverers')) as [
            number,
            string,
            string,
            [string, string][] | null,
          ];
          return pending[0] === 12 && (pending[3] ?? []).length === 1;
        },
        'all twelve claimed by A',
        10_000,
      );
      // The upstream comes back and holds its answers: A's deliveries are under way when it dies.
      const slow = await startDedupUpstream(upPort, { orderingHeader: 'x-customer', delayMs: 800 });
      try {
        await until(() => slow.received() >= 3, 'A delivering the lane heads', 10_000);
        const inFlight = [...slow.seen.keys()];
        a.child.kill('SIGKILL');
        await a.child.exited;
        const killedAt = performance.now();
        await until(() => slow.processed.size === 12, 'every key delivered by B', 40_000);
        const handoverMs = performance.now() - killedAt;
        for (const [key, count] of slow.processed) expect(count, key).toBe(1);
        for (let c = 0; c < 3; c++)
          expect(slow.order.get(`c-${c}`)).toEqual([0, 1, 2, 3].map((i) => `s-${c}-${i}`));
        // The items A had in flight were delivered again by B (the upstream deduplicated them).
        for (const key of inFlight) expect(slow.seen.get(key), key).toBeGreaterThanOrEqual(2);
        // Not before the lease ran out (2 s).
        expect(handoverMs).toBeGreaterThan(1_500);
        await until(
          async () => (await items(b?.admin ?? 0, 'status=synced')).length === 12,
          'all synced',
          10_000,
        );
        expect(b.child.stdout.some((l) => l.includes('"event":"deferred_reclaimed"'))).toBe(true);
        console.log(
          `deferred on redis: SIGKILL with ${inFlight.length} in flight; B finished all 12 ${Math.round(handoverMs)} ms after the kill (lease 2 s, upstream 0.8 s per answer)`,
        );
      } finally {
        await slow.close();
      }
    } finally {
      a.child.kill('SIGKILL');
      if (b) await stop(b.child);
    }
  }, 90_000);

  it('SIGTERM of a replica hands its items to the other at once, not after the lease', async () => {
    const upPort = await freePort();
    const p = prefix();
    // A long lease: a hand-over that waited for it would not finish within the test.
    const one = async () => {
      const r = { port: await freePort(), admin: await freePort() };
      const yaml = config(r, upPort, redis.url, p).replace('  lease: 2s\n', '  lease: 60s\n');
      return { ...r, child: await start(yaml, r.admin) };
    };
    const a = await one();
    let b: Replica | undefined;
    try {
      for (let i = 0; i < 6; i++) expect((await post(a.port, `t-${i}`, `c-${i % 2}`)).status).toBe(202);
      await until(
        async () => {
          const pending = (await client.call('XPENDING', `${p}deferred-stream:{deferred}`, 'deliverers')) as [
            number,
            ...unknown[],
          ];
          return pending[0] === 6;
        },
        'all six claimed by A',
        10_000,
      );
      b = await one();
      a.child.kill('SIGTERM');
      expect(await a.child.exited).toBe(0);
      const t0 = performance.now();
      const up = await startDedupUpstream(upPort, { orderingHeader: 'x-customer' });
      try {
        // Within half the lease: A let go of its items as it stopped.
        await until(() => up.processed.size === 6, 'B delivers all six', 30_000);
        const ms = performance.now() - t0;
        console.log(
          `deferred on redis: after SIGTERM of A, B delivered its 6 items in ${Math.round(ms)} ms (lease 60 s)`,
        );
        expect(up.order.get('c-0')).toEqual(['t-0', 't-2', 't-4']);
        expect(up.order.get('c-1')).toEqual(['t-1', 't-3', 't-5']);
        expect(b.child.stdout.some((l) => l.includes('"event":"deferred_reclaimed"'))).toBe(true);
      } finally {
        await up.close();
      }
    } finally {
      a.child.kill('SIGKILL');
      if (b) await stop(b.child);
    }
  }, 60_000);

  it('a request the upstream always answers 400 ends failed without delaying other keys', async () => {
    const { a, b, upPort } = await sharedPair();
    expect((await post(a.port, 'poison', 'c-1')).status).toBe(202);
    expect((await post(b.port, 'after-poison', 'c-1')).status).toBe(202);
    for (let i = 0; i < 6; i++)
      expect((await post(i % 2 ? a.port : b.port, `other-${i}`, `o-${i}`)).status).toBe(202);
    const up = await startDedupUpstream(upPort, {
      orderingHeader: 'x-customer',
      poison: new Set(['poison']),
    });
    try {
      await until(() => up.processed.size === 7, 'the other keys delivered', 30_000);
      expect(up.order.get('c-1')).toEqual(['after-poison']);
      await until(async () => (await items(a.admin, 'status=failed')).length === 1, 'failed', 10_000);
      const failed = await items(a.admin, 'status=failed');
      expect(failed.map((i) => i.idempotency_key)).toEqual(['poison']);
      expect(up.seen.get('poison')).toBe(1);
      const detail = (await (
        await fetch(`http://127.0.0.1:${b.admin}/deferred/${failed[0]?.id}`)
      ).json()) as {
        history: { status: number | null }[];
        last_answer: string;
      };
      expect(detail.history.at(-1)?.status).toBe(400);
      expect(detail.last_answer).toContain('invalid order');
      // Metrics come from the shared counters: both replicas report the one failed item.
      await until(
        async () =>
          /breakwater_deferred_items\{state="failed"\} 1/.test(
            await (await fetch(`http://127.0.0.1:${b.admin}/metrics`)).text(),
          ),
        'failed gauge',
        5_000,
      );
    } finally {
      await up.close();
    }
  }, 60_000);

  it('a full queue answers 503 deferred-store-full across replicas and loses nothing it accepted; the admin API works on it', async () => {
    const upPort = await freePort();
    // Items wait ten minutes for their first try, until replayed.
    const [a, b] = (await replicas(2, upPort, prefix(), '  max_items: 5', '[10m]')) as [Replica, Replica];
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const r = await post(i % 2 ? a.port : b.port, `full-${i}`, `c-${i}`);
        statuses.push(r.status);
        if (r.status === 503) {
          const pr = (await r.json()) as { type: string; detail: string };
          expect(pr.type).toBe('urn:breakwater:problem:deferred-store-full');
          expect(pr.detail).toContain('max_items');
        } else await r.arrayBuffer();
      }
      expect(statuses).toEqual([202, 202, 202, 202, 202, 503, 503, 503]);
      // Admin: cancel one, replay it, bulk by filter.
      const pending = await items(a.admin, 'status=pending');
      expect(pending.map((i) => i.idempotency_key)).toEqual([
        'full-0',
        'full-1',
        'full-2',
        'full-3',
        'full-4',
      ]);
      const id = pending[0]?.id;
      const cancel = await fetch(`http://127.0.0.1:${b.admin}/deferred/${id}/cancel`, { method: 'POST' });
      expect(cancel.status).toBe(200);
      expect(((await cancel.json()) as { status: string }).status).toBe('cancelled');
      const again = await fetch(`http://127.0.0.1:${a.admin}/deferred/${id}/cancel`, { method: 'POST' });
      expect(again.status).toBe(409);
      await again.arrayBuffer();
      const up = await startDedupUpstream(upPort);
      try {
        const bulk = await fetch(`http://127.0.0.1:${a.admin}/deferred/replay`, {
          method: 'POST',
          body: '{"status":"cancelled"}',
        });
        expect(await bulk.json()).toEqual({ matched: 1, changed: 1 });
        // A replay of pending items tries them now (the first try was ten minutes away).
        const now = await fetch(`http://127.0.0.1:${b.admin}/deferred/replay`, {
          method: 'POST',
          body: '{"status":"pending"}',
        });
        // (The replayed one may be under way already: not pending then.)
        expect(((await now.json()) as { matched: number }).matched).toBeGreaterThanOrEqual(4);
        await until(() => up.processed.size === 5, 'the accepted five delivered', 30_000);
        expect([...up.processed.keys()].sort()).toEqual(['full-0', 'full-1', 'full-2', 'full-3', 'full-4']);
        await until(async () => (await items(b.admin, 'status=synced')).length === 5, 'synced', 10_000);
      } finally {
        await up.close();
      }
    } finally {
      await Promise.all([stop(a.child), stop(b.child)]);
    }
  }, 60_000);

  it('Redis away: a deferrable request gets 503 at once, nothing hangs; Redis back (empty): accepted again', async () => {
    const upPort = await freePort();
    const [a] = (await replicas(1, upPort, prefix())) as [Replica];
    try {
      expect((await post(a.port, 'before', 'c-1')).status).toBe(202);
      await redis.stop();
      const t0 = performance.now();
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await post(a.port, `down-${i}`, `d-${i}`);
        statuses.push(r.status);
        const pr = (await r.json()) as { type: string };
        expect(pr.type).toBe('urn:breakwater:problem:deferred-store-failed');
      }
      const ms = performance.now() - t0;
      expect(statuses).toEqual([503, 503, 503, 503, 503]);
      expect(ms).toBeLessThan(5_000);
      const list = await fetch(`http://127.0.0.1:${a.admin}/deferred`);
      expect(list.status).toBe(503);
      expect(((await list.json()) as { type: string }).type).toBe(
        'urn:breakwater:problem:admin-store-unavailable',
      );
      const state = await fetch(`http://127.0.0.1:${a.admin}/state`);
      expect(state.status).toBe(200);
      await state.arrayBuffer();
      await redis.restart();
      await client.ping().catch(() => undefined);
      await until(
        async () => {
          const r = await post(a.port, 'after', 'c-2');
          await r.arrayBuffer();
          return r.status === 202;
        },
        'accepted again after Redis came back',
        20_000,
      );
      const up = await startDedupUpstream(upPort);
      try {
        await until(() => up.processed.has('after'), 'delivered after Redis came back', 20_000);
      } finally {
        await up.close();
      }
      console.log(`deferred on redis: 5 requests with Redis down answered 503 in ${Math.round(ms)} ms`);
    } finally {
      await stop(a.child);
    }
  }, 60_000);
});
