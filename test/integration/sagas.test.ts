import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { checkoutConfig, effects, type FakeService, fakeService } from '../kit/saga-services.js';
import { until } from '../kit/until.js';

/**
 * Sagas end to end in one process: a real breakwater, three real fake services (order, payment,
 * inventory) that deduplicate by Idempotency-Key, and the embedded store in a temporary data_dir.
 */
describe('sagas', () => {
  let orders: FakeService;
  let payments: FakeService;
  let inventory: FakeService;
  let bw: Running | undefined;
  let dir: string;
  const okOrders = () => ({ status: 201, body: { id: 'o-7' } });
  const okPayments = () => ({ status: 201, body: { id: 'p-9' } });
  const okInventory = () => ({ status: 201, body: { reserved: true } });

  beforeAll(async () => {
    orders = await fakeService('orders', okOrders);
    payments = await fakeService('payments', okPayments);
    inventory = await fakeService('inventory', okInventory);
  });
  afterAll(async () => {
    await Promise.all([orders.close(), payments.close(), inventory.close()]);
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'bw-sagas-'));
    effects.length = 0;
    for (const s of [orders, payments, inventory]) s.calls.length = 0;
    orders.behaviour = okOrders;
    payments.behaviour = okPayments;
    inventory.behaviour = okInventory;
  });
  afterEach(async () => {
    await bw?.stop();
    bw = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (opts: Parameters<typeof checkoutConfig>[2] = {}) => {
    bw = await startBreakwater(
      checkoutConfig({ orders: orders.url, payments: payments.url, inventory: inventory.url }, dir, opts),
    );
    return bw;
  };
  const checkout = (b: Running, body: unknown = { customer: 'c-1', amount: 42 }) =>
    fetch(`${b.url()}/checkout/cart-3`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const admin = async (b: Running, path: string, init?: RequestInit) => {
    const r = await fetch(`${b.adminUrl}${path}`, init);
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  };
  const metric = async (b: Running, series: string) => {
    const text = await (await fetch(`${b.adminUrl}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(series));
    return line === undefined ? undefined : Number(line.slice(series.length).trim());
  };

  it('runs every step with rendered templates and answers with the last step and the saga id', async () => {
    const b = await start();
    const r = await checkout(b);
    expect(r.status).toBe(201);
    expect(await r.json()).toEqual({ reserved: true });
    const id = r.headers.get('x-breakwater-saga-id') as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(r.headers.get('x-breakwater-saga-state')).toBe('completed');
    expect(JSON.parse(orders.calls[0]?.body ?? '')).toEqual({ cart: 'cart-3', customer: 'c-1' });
    expect(JSON.parse(payments.calls[0]?.body ?? '')).toEqual({ order: 'o-7', amount: 42 });
    expect(orders.calls[0]?.key).toBe(`${id}:order`);
    expect(inventory.calls[0]?.key).toBe(`${id}:reservation`);
    expect(inventory.calls[0]?.lra).toBe(`http://127.0.0.1:${b.bw.admin?.port}/sagas/${id}`);
    const got = await admin(b, `/sagas/${id}`);
    expect(got.body.state).toBe('completed');
    expect((got.body.steps as { state: string }[]).map((s) => s.state)).toEqual(['done', 'done', 'done']);
    expect(await metric(b, 'breakwater_sagas_total{saga="checkout",outcome="completed"}')).toBe(1);
    // GET /config shows the templates as written.
    const cfg = (await admin(b, '/config')).body as {
      config: { sagas: { checkout: { steps: { compensate: { path: string } }[] } } };
    };
    expect(cfg.config.sagas.checkout.steps[1]?.compensate.path).toBe(
      '/payments/{{ steps.payment.body.id }}/refund',
    );
  });

  it('inventory fails: payment refund then order cancel, once each; the client gets inventory’s error with the saga id', async () => {
    inventory.behaviour = () => ({ status: 409, body: { error: 'out of stock' } });
    const b = await start();
    const r = await checkout(b);
    expect(r.status).toBe(409);
    expect(await r.json()).toEqual({ error: 'out of stock' });
    const id = r.headers.get('x-breakwater-saga-id') as string;
    expect(id).toBeTruthy();
    await until(async () => (await admin(b, `/sagas/${id}`)).body.state === 'compensated', 'compensated');
    expect(effects).toEqual([
      'orders POST /orders',
      'payments POST /payments',
      'payments POST /payments/p-9/refund',
      'orders POST /orders/o-7/cancel',
    ]);
    expect(payments.calls.filter((c) => c.path.endsWith('/refund'))).toHaveLength(1);
    expect(orders.calls.filter((c) => c.path.endsWith('/cancel'))).toHaveLength(1);
    expect(payments.calls.at(-1)?.key).toBe(`${id}:payment:compensate`);
    // The failed step is not compensated (it answered an error: nothing to undo).
    expect(inventory.calls.map((c) => c.method)).toEqual(['POST']);
    expect(await metric(b, 'breakwater_sagas_total{saga="checkout",outcome="compensated"}')).toBe(1);
    expect(
      await metric(
        b,
        'breakwater_saga_compensations_total{saga="checkout",step="payment",outcome="success"}',
      ),
    ).toBe(1);
  });

  it('step 3 answers 200 after the saga’s timeout: the client gets 504 and the step is still compensated', async () => {
    inventory.behaviour = (c) =>
      c.method === 'POST' ? { status: 200, body: { reserved: true }, delay: 800 } : { status: 200 };
    const b = await start({ timeout: '300ms' });
    const r = await checkout(b);
    expect(r.status).toBe(504);
    const problem = (await r.json()) as Record<string, unknown>;
    expect(problem.type).toBe('urn:breakwater:problem:saga-timeout');
    const id = problem.saga_id as string;
    expect(r.headers.get('x-breakwater-saga-id')).toBe(id);
    await until(
      async () => (await admin(b, `/sagas/${id}`)).body.state === 'compensated',
      'compensated',
      10_000,
    );
    // The release is sent only once the late reservation was answered, then the others, in reverse.
    expect(effects).toEqual([
      'orders POST /orders',
      'payments POST /payments',
      'inventory POST /reservations',
      `inventory DELETE /reservations/${id}`,
      'payments POST /payments/p-9/refund',
      'orders POST /orders/o-7/cancel',
    ]);
  });

  it('a compensation failing 5 times then succeeding ends compensated', async () => {
    inventory.behaviour = () => ({ status: 500 });
    payments.behaviour = (c, nth) =>
      c.path.endsWith('/refund') && nth <= 5 ? { status: 503 } : { status: 201, body: { id: 'p-9' } };
    const b = await start();
    const r = await checkout(b);
    expect(r.status).toBe(500);
    const id = r.headers.get('x-breakwater-saga-id') as string;
    await until(
      async () => (await admin(b, `/sagas/${id}`)).body.state === 'compensated',
      'compensated',
      10_000,
    );
    expect(payments.calls.filter((c) => c.path.endsWith('/refund'))).toHaveLength(6);
    expect(effects.filter((e) => e.endsWith('/refund') || e.endsWith('/cancel'))).toEqual([
      'payments POST /payments/p-9/refund',
      'orders POST /orders/o-7/cancel',
    ]);
    expect(
      await metric(
        b,
        'breakwater_saga_compensations_total{saga="checkout",step="payment",outcome="failure"}',
      ),
    ).toBe(5);
  });

  it('a compensation that always fails parks the saga as failed_to_compensate (admin API, metric); an operator retries it', async () => {
    inventory.behaviour = () => ({ status: 500 });
    payments.behaviour = (c) =>
      c.path.endsWith('/refund') ? { status: 503 } : { status: 201, body: { id: 'p-9' } };
    const b = await start({ compensateMaxAttempts: 4 });
    const r = await checkout(b);
    const id = r.headers.get('x-breakwater-saga-id') as string;
    await until(
      async () => (await admin(b, `/sagas/${id}`)).body.state === 'failed_to_compensate',
      'failed_to_compensate',
      10_000,
    );
    const listed = await admin(b, '/sagas?state=failed_to_compensate');
    expect((listed.body.sagas as { id: string }[]).map((s) => s.id)).toEqual([id]);
    const one = await admin(b, `/sagas/${id}`);
    const steps = one.body.steps as { name: string; state: string; compensation_attempts: number }[];
    expect(steps.map((s) => s.state)).toEqual(['done', 'compensation_failed', 'failed']);
    expect(steps[1]?.compensation_attempts).toBe(4);
    // Reverse order holds: the order is not cancelled while its payment is not refunded.
    expect(orders.calls.filter((c) => c.path.endsWith('/cancel'))).toHaveLength(0);
    expect(await metric(b, 'breakwater_sagas_total{saga="checkout",outcome="failed_to_compensate"}')).toBe(1);
    expect(await metric(b, 'breakwater_sagas_failed_to_compensate{saga="checkout"}')).toBe(1);
    expect(
      await metric(
        b,
        'breakwater_saga_compensations_total{saga="checkout",step="payment",outcome="gave_up"}',
      ),
    ).toBe(1);

    payments.behaviour = () => ({ status: 200 });
    const retried = await admin(b, `/sagas/${id}/retry`, { method: 'POST' });
    expect(retried.status).toBe(202);
    await until(
      async () => (await admin(b, `/sagas/${id}`)).body.state === 'compensated',
      'compensated',
      10_000,
    );
    expect(orders.calls.filter((c) => c.path.endsWith('/cancel'))).toHaveLength(1);
    expect(await metric(b, 'breakwater_sagas_failed_to_compensate{saga="checkout"}')).toBe(0);
    expect((await admin(b, `/sagas/${id}/retry`, { method: 'POST' })).status).toBe(409);
    expect((await admin(b, `/sagas/${id}`, { method: 'DELETE' })).status).toBe(200);
    expect((await admin(b, `/sagas/${id}`)).status).toBe(404);
  });

  it('a config without sagas never touches data_dir', async () => {
    const { existsSync } = await import('node:fs');
    const unused = join(dir, 'never-made');
    const yaml = checkoutConfig(
      { orders: orders.url, payments: payments.url, inventory: inventory.url },
      unused,
    );
    bw = await startBreakwater(yaml.slice(0, yaml.indexOf('sagas:')));
    expect((await fetch(`${bw.url()}/checkout/cart-3`, { method: 'POST', body: '{}' })).status).toBe(201);
    expect(orders.calls.at(-1)?.path).toBe('/checkout/cart-3');
    expect(existsSync(unused)).toBe(false);
    expect((await admin(bw, '/sagas')).body).toEqual({ sagas: [] });
  });

  it('a reload that adds a saga opens the log then; one that changes it keeps the sagas', async () => {
    const { existsSync, writeFileSync } = await import('node:fs');
    const file = join(dir, 'breakwater.yaml');
    const data = join(dir, 'data');
    const yaml = checkoutConfig(
      { orders: orders.url, payments: payments.url, inventory: inventory.url },
      data,
    );
    const without = yaml.slice(0, yaml.indexOf('sagas:'));
    writeFileSync(file, without);
    bw = await startBreakwater(without, { file });
    expect(existsSync(data)).toBe(false);
    writeFileSync(file, yaml);
    const reload = await admin(bw, '/config/reload', { method: 'POST' });
    expect(reload.status).toBe(200);
    expect(existsSync(data)).toBe(true);
    const r = await checkout(bw);
    expect(r.status).toBe(201);
    const id = r.headers.get('x-breakwater-saga-id') as string;
    // The trigger moves; the log and its sagas stay.
    writeFileSync(file, yaml.replace('/checkout/:cart', '/buy/:cart'));
    expect((await admin(bw, '/config/reload', { method: 'POST' })).status).toBe(200);
    const moved = await fetch(`${bw.url()}/buy/cart-3`, {
      method: 'POST',
      body: JSON.stringify({ customer: 'c-2', amount: 1 }),
    });
    expect(moved.status).toBe(201);
    expect((await admin(bw, `/sagas/${id}`)).body.state).toBe('completed');
    expect(((await admin(bw, '/sagas')).body.sagas as unknown[]).length).toBe(2);
  });

  it('a body that is not JSON is 400 when a template reads request.body; nothing is called', async () => {
    const b = await start();
    const r = await fetch(`${b.url()}/checkout/cart-3`, { method: 'POST', body: 'not json' });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { type: string }).type).toBe('urn:breakwater:problem:bad-request');
    expect(orders.calls).toHaveLength(0);
    // Other requests still go to the routes.
    const routed = await fetch(`${b.url()}/anything`);
    expect(routed.status).toBe(201);
    expect(orders.calls.at(-1)?.path).toBe('/anything');
  });
});
