import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Child, freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';
import { checkoutConfig, effects, type FakeService, fakeService } from '../kit/saga-services.js';
import { until } from '../kit/until.js';

/**
 * Sagas in a fleet: two breakwater replicas (dist/cli.js) share the saga log on a real
 * redis-server (`saga_store.backend: redis`, lease 2s). A replica killed with SIGKILL mid-saga has
 * its saga taken over and compensated by the other; a saga on a live replica is never taken over.
 * Needs `npm run build`.
 */
describe.skipIf(!redisTool.available)('sagas on a Redis saga log, two replicas', () => {
  let redis: RedisServer;
  let orders: FakeService;
  let payments: FakeService;
  let inventory: FakeService;
  const children: Child[] = [];
  const dirs: string[] = [];
  /** The order step answers this late (ms). */
  let orderDelay = 0;

  interface Replica {
    readonly child: Child;
    readonly url: string;
    readonly admin: string;
  }

  const replica = async (): Promise<Replica> => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const dir = mkdtempSync(join(tmpdir(), 'bw-saga-fleet-'));
    dirs.push(dir);
    const yaml = `${checkoutConfig(
      { orders: orders.url, payments: payments.url, inventory: inventory.url },
      dir,
      {
        timeout: '60s',
        // Step 3 keeps failing with 503, retried by its upstream's pipeline (the key makes that safe).
        inventoryPolicies:
          'idempotency_keys: honored, retry: { max_attempts: 10, initial_wait: 200ms, max_wait: 200ms, jitter: none, retry_on: [5xx] }',
      },
    )
      .replace('port: 0', `port: ${port}`)
      .replace('admin: { port: 0 }', `admin: { port: ${adminPort} }`)}
saga_store: { backend: redis, lease: 2s }
stores:
  redis: { url: "${redis.url}", command_timeout: 500ms }
`;
    const child = spawnBreakwater(yaml);
    children.push(child);
    await waitFor(`http://127.0.0.1:${adminPort}/health/ready`);
    return { child, url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}` };
  };
  const list = async (r: Replica) =>
    ((await (await fetch(`${r.admin}/sagas`)).json()) as { sagas: { id: string; state: string }[] }).sagas;
  const metric = async (r: Replica, name: string) => {
    const text = await (await fetch(`${r.admin}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return Number(line?.split(' ')[1] ?? Number.NaN);
  };
  const checkout = (r: Replica, cart: string) =>
    fetch(`${r.url}/checkout/${cart}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ customer: 'c-1', amount: 42 }),
    });

  beforeAll(async () => {
    redis = await startRedis();
    orders = await fakeService('orders', (c) =>
      c.path === '/orders'
        ? { status: 201, body: { id: `o-${c.body.includes('cart-live') ? 'live' : '7'}` }, delay: orderDelay }
        : { status: 200 },
    );
    payments = await fakeService('payments', () => ({ status: 201, body: { id: 'p-9' } }));
    inventory = await fakeService('inventory', (c) =>
      c.method === 'POST' && c.body.includes('o-7') ? { status: 503 } : { status: 201, body: {} },
    );
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(children.map((c) => c.exited));
    await Promise.all([orders.close(), payments.close(), inventory.close()]);
    await redis.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  let b: Replica;

  it('a replica killed after step 2 while step 3 fails: the other takes the saga over after the lease and compensates step 2 then step 1 exactly once each', async () => {
    const a = await replica();
    b = await replica();
    effects.length = 0;
    const client = checkout(a, 'cart-3').catch((err: unknown) => err);
    await until(
      () => inventory.calls.filter((c) => c.method === 'POST').length >= 2,
      'step 3 failing',
      10_000,
    );
    // Either replica's admin API lists the saga while A drives it.
    const onA = await list(a);
    const onB = await list(b);
    expect(onA.map((s) => s.state)).toEqual(['running']);
    expect(onB).toEqual(onA);
    const id = onA[0]?.id as string;
    a.child.kill('SIGKILL');
    await a.child.exited;
    expect(await client).toBeInstanceOf(Error);
    expect(effects).toEqual(['orders POST /orders', 'payments POST /payments']);

    await until(async () => (await list(b))[0]?.state === 'compensated', 'compensated by B', 15_000);
    // The reservation (outcome unknown when A died) is released too; then payment, then order.
    expect(effects).toEqual([
      'orders POST /orders',
      'payments POST /payments',
      `inventory DELETE /reservations/${id}`,
      'payments POST /payments/p-9/refund',
      'orders POST /orders/o-7/cancel',
    ]);
    expect(payments.calls.filter((c) => c.path.endsWith('/refund'))).toHaveLength(1);
    expect(orders.calls.filter((c) => c.path.endsWith('/cancel'))).toHaveLength(1);
    expect(orders.calls.filter((c) => c.path === '/orders')).toHaveLength(1);
    expect(await metric(b, 'breakwater_sagas_recovered_total')).toBe(1);
    const one = (await (await fetch(`${b.admin}/sagas/${id}`)).json()) as { history: { event: string }[] };
    expect(one.history.map((h) => h.event)).toContain('step_unknown');
    const state = (await (await fetch(`${b.admin}/state`)).json()) as { sagas: Record<string, unknown> };
    expect(state.sagas).toMatchObject({ backend: 'redis', lease_ms: 2000, driving: 0 });
  });

  it('a saga on a live replica is never taken over: its lease is renewed while a step takes over 2 leases', async () => {
    const c = await replica();
    const callsBefore = orders.calls.length;
    orderDelay = 4_500;
    const res = await checkout(c, 'cart-live');
    orderDelay = 0;
    expect(res.status).toBe(201);
    const id = res.headers.get('x-breakwater-saga-id') as string;
    expect(res.headers.get('x-breakwater-saga-state')).toBe('completed');
    // One order call (no replica re-sent or compensated it), no takeover anywhere.
    expect(orders.calls.slice(callsBefore).map((x) => `${x.method} ${x.path}`)).toEqual(['POST /orders']);
    expect(await metric(c, 'breakwater_sagas_recovered_total')).toBe(0);
    expect(await metric(b, 'breakwater_sagas_recovered_total')).toBe(1);
    const one = (await (await fetch(`${b.admin}/sagas/${id}`)).json()) as {
      state: string;
      history: { event: string }[];
    };
    expect(one.state).toBe('completed');
    expect(one.history.map((h) => h.event)).not.toContain('step_unknown');
  });

  it('Redis unreachable at a trigger: 503 saga-unavailable at once, no step called', async () => {
    const callsBefore = orders.calls.length;
    await redis.stop();
    const t0 = performance.now();
    const res = await checkout(b, 'cart-down');
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { type: string }).type).toMatch(/saga-unavailable$/);
    expect(orders.calls.length).toBe(callsBefore);
  });
});
