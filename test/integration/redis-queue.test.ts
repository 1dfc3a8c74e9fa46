/**
 * The Redis Streams queue itself (src/deferred/redis-queue.ts) against a real redis-server, two
 * instances in one process as two replicas (two RedisStore clients, two consumer names): the lease
 * fences a replica that lost it, lanes keep arrival order across a replay, caps count the shared
 * queue.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import { parseConfigText } from '../../src/config/load.js';
import type { NewItem } from '../../src/deferred/backend.js';
import { RedisDeferredQueue } from '../../src/deferred/redis-queue.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import type { InternalResult } from '../../src/pipeline/internal-call.js';
import { RedisStore } from '../../src/stores/redis.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';

const ok: InternalResult = {
  type: 'response',
  status: 201,
  headers: [],
  body: Buffer.from('{}'),
  attempts: 1,
};

const item = (key: string, orderingKey: string | undefined): NewItem => ({
  route: 'orders',
  upstream: 'orders',
  method: 'POST',
  path: '/orders',
  headers: ['idempotency-key', key],
  body: Buffer.from(`body of ${key}`),
  requestId: key,
  clientAddress: '127.0.0.1',
  idempotencyKey: key,
  orderingKey,
  reason: 'connect_failure',
  schedule: [100],
  maxAttempts: 0,
  maxAge: 60_000,
});

describe.skipIf(!redisTool.available)('the deferred queue on Redis Streams', () => {
  let redis: RedisServer;
  const stores: RedisStore[] = [];
  const queues: RedisDeferredQueue[] = [];
  let n = 0;

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    for (const q of queues) await q.close();
    for (const s of stores) await s.close();
    await redis.stop();
  });

  /** Two replicas on one fresh queue (its own key_prefix). */
  async function pair(maxItems = 100, retention = 60_000): Promise<[RedisDeferredQueue, RedisDeferredQueue]> {
    const prefix = `rq${++n}:`;
    const config = await parseConfigText(
      `
listeners: [{ name: main, port: 15001, routes: [{ upstream: app }] }]
upstreams: { app: { endpoints: ["http://127.0.0.1:9"] } }
stores: { redis: { url: "${redis.url}", key_prefix: "${prefix}" } }
`,
      'test.yaml',
      { env: {} },
    );
    const model = config.stores.redis;
    if (!model) throw new Error('no stores.redis');
    const out: RedisDeferredQueue[] = [];
    for (let i = 0; i < 2; i++) {
      const metrics = createMetrics({ defaultMetrics: false });
      const logger = createLogger({ level: 'silent' });
      const store = new RedisStore(model, metrics, logger, systemClock);
      await store.waitReady(2_000);
      stores.push(store);
      const q = await RedisDeferredQueue.open(() => store, {
        metrics,
        logger,
        clock: systemClock,
        random: () => 0.5,
        caps: () => ({
          maxItems,
          maxBytes: 1 << 20,
          retention,
          concurrency: 4,
          backend: 'redis',
          lease: 1_000,
        }),
      });
      queues.push(q);
      out.push(q);
    }
    return out as [RedisDeferredQueue, RedisDeferredQueue];
  }

  it('a replica whose lease ran out cannot record its result: the one that took the item over does', async () => {
    const [a, b] = await pair();
    const stored = await a.enqueue(item('k1', undefined), 0);
    expect(stored.kind).toBe('stored');
    const took = await a.take(() => 4);
    expect(took.items.map((i) => i.idempotencyKey)).toEqual(['k1']);
    expect(took.items[0]?.body?.toString()).toBe('body of k1');
    // A does not renew (its loop is stuck); after the lease B takes the item over.
    await new Promise((r) => setTimeout(r, 1_300));
    const byB = await b.take(() => 4);
    expect(byB.items.map((i) => i.idempotencyKey)).toEqual(['k1']);
    expect(await b.settle(byB.items[0] as NonNullable<(typeof byB.items)[0]>, ok)).toBe('synced');
    // A's late answer is not recorded over B's.
    const late = took.items[0];
    if (!late) throw new Error('no item');
    expect(await a.settle(late, { ...ok, status: 500 })).toBe('delivering');
    const now = await b.get(late.id);
    expect(now?.state).toBe('synced');
    expect(now?.history.map((h) => h.status)).toEqual([201]);
  });

  it('an ordering key is delivered in arrival order across replicas; a replayed item takes its place back', async () => {
    const [a, b] = await pair();
    for (const k of ['o1', 'o2', 'o3'])
      expect((await (k === 'o2' ? b : a).enqueue(item(k, 'cust'), 0)).kind).toBe('stored');
    expect(await a.laneWaiting('orders', 'cust')).toBe(true);
    expect(await a.laneWaiting('orders', 'other')).toBe(false);
    // Whoever reads the entries, only the head is handed out, once.
    const first = [
      ...(await a.take(() => 4)).items.map((i) => [a, i] as const),
      ...(await b.take(() => 4)).items.map((i) => [b, i] as const),
    ];
    expect(first.map(([, i]) => i.idempotencyKey)).toEqual(['o1']);
    // o1 fails (poison): o2 is the head now.
    const [owner, o1] = first[0] ?? [];
    if (!owner || !o1) throw new Error('no item');
    expect(await owner.settle(o1, { ...ok, status: 400 })).toBe('failed');
    expect((await a.get(o1.id))?.state).toBe('failed');
    // A replay puts o1 back at the head of its lane (its arrival order), ahead of o2 and o3.
    const replayed = await b.replay(o1.id);
    expect(replayed.ok).toBe(true);
    const order: string[] = [];
    for (let round = 0; round < 20 && order.length < 3; round++) {
      for (const q of [a, b]) {
        const { items } = await q.take(() => 4);
        for (const i of items) {
          order.push(i.idempotencyKey ?? '');
          expect(await q.settle(i, ok)).toBe('synced');
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(order).toEqual(['o1', 'o2', 'o3']);
    const { items } = await a.list({ status: 'synced' }, 10);
    expect(items.map((i) => i.idempotencyKey)).toEqual(['o1', 'o2', 'o3']);
  });

  it('cancelling an item behind the head of its lane leaves the head to its retry backoff', async () => {
    const [a] = await pair();
    const slow = (key: string): NewItem => ({ ...item(key, 'slow'), schedule: [60_000], maxAge: 600_000 });
    expect((await a.enqueue(slow('h1'), 0)).kind).toBe('stored');
    expect((await a.enqueue(slow('h2'), 0)).kind).toBe('stored');
    const { items } = await a.take(() => 4);
    const h1 = items[0];
    expect(items.map((i) => i.idempotencyKey)).toEqual(['h1']);
    if (!h1) throw new Error('no item');
    // h1's upstream answers 503: it is retried in about a minute, still the lane's head.
    expect(await a.settle(h1, { ...ok, status: 503 })).toBe('pending');
    expect((await a.take(() => 4)).items).toEqual([]);
    const h2 = (await a.list({ status: 'pending' }, 10)).items.find((i) => i.idempotencyKey === 'h2');
    if (!h2) throw new Error('no h2');
    // h2 is not the head: cancelling it does not move the lane on, h1 keeps its backoff.
    expect((await a.cancel(h2.id)).ok).toBe(true);
    expect((await a.take(() => 4)).items).toEqual([]);
    expect(await a.laneWaiting('orders', 'slow')).toBe(true);
  });

  it('a replayed item waits while the item now heading its lane is being delivered: one in flight per lane', async () => {
    const [a, b] = await pair();
    for (const k of ['r1', 'r2']) expect((await a.enqueue(item(k, 'busy'), 0)).kind).toBe('stored');
    const r1 = (await a.take(() => 4)).items[0];
    if (!r1) throw new Error('no r1');
    expect(r1.idempotencyKey).toBe('r1');
    expect(await a.settle(r1, { ...ok, status: 400 })).toBe('failed');
    const r2 = (await a.take(() => 4)).items[0];
    if (!r2) throw new Error('no r2');
    expect(r2.idempotencyKey).toBe('r2');
    // r1 is replayed (back at the head of the lane by arrival) while r2 is in flight.
    expect((await b.replay(r1.id)).ok).toBe(true);
    for (let round = 0; round < 3; round++) {
      expect((await a.take(() => 4)).items).toEqual([]);
      expect((await b.take(() => 4)).items).toEqual([]);
      await new Promise((r) => setTimeout(r, 100));
    }
    // r2's delivery ends: r1 goes next.
    expect(await a.settle(r2, ok)).toBe('synced');
    const next: string[] = [];
    for (let round = 0; round < 20 && next.length === 0; round++) {
      for (const q of [a, b])
        for (const i of (await q.take(() => 4)).items) next.push(i.idempotencyKey ?? '');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(next).toEqual(['r1']);
  });

  it('the item in flight in its lane is taken over after its lease even when a replay put an older item at the head', async () => {
    const [a, b] = await pair();
    for (const k of ['t1', 't2']) expect((await a.enqueue(item(k, 'takeover'), 0)).kind).toBe('stored');
    const t1 = (await a.take(() => 4)).items[0];
    if (!t1) throw new Error('no t1');
    expect(await a.settle(t1, { ...ok, status: 400 })).toBe('failed');
    const t2 = (await a.take(() => 4)).items[0];
    expect(t2?.idempotencyKey).toBe('t2');
    expect((await a.replay(t1.id)).ok).toBe(true);
    // a stops renewing (stuck) while t2 is in flight; after the lease b takes t2 over and delivers it.
    await new Promise((r) => setTimeout(r, 1_300));
    const order: string[] = [];
    for (let round = 0; round < 20 && order.length < 2; round++) {
      for (const i of (await b.take(() => 4)).items) {
        order.push(i.idempotencyKey ?? '');
        expect(await b.settle(i, ok)).toBe('synced');
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(order).toEqual(['t2', 't1']);
  });

  it('max_items counts the shared queue: a replica refuses what the other filled, and room comes back when items finish', async () => {
    const [a, b] = await pair(2, 0);
    expect((await a.enqueue(item('c1', undefined), 0)).kind).toBe('stored');
    expect((await b.enqueue(item('c2', undefined), 0)).kind).toBe('stored');
    const full = await b.enqueue(item('c3', undefined), 0);
    expect(full.kind).toBe('full');
    // The same key again is the waiting item, not a new one (and not refused).
    const again = await b.enqueue(item('c1', undefined), 0);
    expect(again.kind).toBe('existing');
    const c1 = (await a.list({}, 10)).items.find((i) => i.idempotencyKey === 'c1');
    if (!c1) throw new Error('no c1');
    expect((await b.cancel(c1.id)).ok).toBe(true);
    expect((await a.enqueue(item('c3', undefined), 0)).kind).toBe('stored');
    // Retention (0 here): the sweep removes the finished item, and keeps the live ones and both consumers.
    await new Promise((r) => setTimeout(r, 5));
    expect(await b.sweep()).toBe(1);
    expect(await a.get(c1.id)).toBeUndefined();
    expect((await a.list({}, 10)).items.map((i) => i.idempotencyKey)).toEqual(['c2', 'c3']);
  });
});
