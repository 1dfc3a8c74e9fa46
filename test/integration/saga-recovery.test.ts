import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Child, freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { checkoutConfig, effects, type FakeService, fakeService } from '../kit/saga-services.js';
import { until } from '../kit/until.js';

/**
 * The saga log survives SIGKILL: breakwater as users run it (dist/cli.js), killed while a saga's
 * third step is failing (retried by the upstream's pipeline), then started again on the same
 * data_dir. Needs `npm run build`.
 */
describe('saga recovery after SIGKILL', () => {
  let orders: FakeService;
  let payments: FakeService;
  let inventory: FakeService;
  const children: Child[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'bw-saga-crash-'));

  beforeAll(async () => {
    orders = await fakeService('orders', () => ({ status: 201, body: { id: 'o-7' } }));
    payments = await fakeService('payments', () => ({ status: 201, body: { id: 'p-9' } }));
    inventory = await fakeService('inventory', (c) =>
      c.method === 'POST' ? { status: 503 } : { status: 200 },
    );
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(children.map((c) => c.exited));
    await Promise.all([orders.close(), payments.close(), inventory.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('killed after step 2 while step 3 fails: after restart, step 2 then step 1 are compensated exactly once each', async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const yaml = checkoutConfig(
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
      .replace('admin: { port: 0 }', `admin: { port: ${adminPort} }`);
    const first = spawnBreakwater(yaml);
    children.push(first);
    await waitFor(`http://127.0.0.1:${adminPort}/health/ready`);
    const client = fetch(`http://127.0.0.1:${port}/checkout/cart-3`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ customer: 'c-1', amount: 42 }),
    }).catch((err: unknown) => err);
    await until(
      () => inventory.calls.filter((c) => c.method === 'POST').length >= 2,
      'step 3 failing',
      10_000,
    );
    first.kill('SIGKILL');
    await first.exited;
    expect(await client).toBeInstanceOf(Error);
    expect(effects).toEqual(['orders POST /orders', 'payments POST /payments']);

    const second = spawnBreakwater(yaml);
    children.push(second);
    await waitFor(`http://127.0.0.1:${adminPort}/health/ready`);
    const list = async () =>
      (
        (await (await fetch(`http://127.0.0.1:${adminPort}/sagas`)).json()) as {
          sagas: { id: string; state: string }[];
        }
      ).sagas;
    await until(async () => (await list())[0]?.state === 'compensated', 'compensated after restart', 15_000);
    const id = (await list())[0]?.id as string;
    // The reservation (outcome unknown when killed) is released too; then payment, then order.
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
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(metrics).toMatch(/^breakwater_sagas_recovered_total 1$/m);
    expect(metrics).toMatch(/^breakwater_sagas_total\{saga="checkout",outcome="compensated"\} 1$/m);
    const one = (await (await fetch(`http://127.0.0.1:${adminPort}/sagas/${id}`)).json()) as {
      history: { event: string; step: string | null }[];
    };
    expect(one.history.map((h) => h.event)).toContain('step_unknown');
    second.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});
