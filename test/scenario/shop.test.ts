/**
 * The scripted shop of the promotion day, on its own: each fault does what the profile says, and
 * each service counts what reached it (the figures trust these counts).
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Shop, startShop } from '../../demo/promo-day/upstreams.js';

const HEALTHY = { recommendationDown: false, inventoryDelayMs: 0, paymentBlip: false, ordersDown: false };

describe('promo-day scripted shop', () => {
  let shop: Shop;
  beforeAll(async () => {
    shop = await startShop();
  });
  afterAll(async () => {
    await shop.close();
  });

  const post = async (url: string, headers: Record<string, string> = {}) => {
    const res = await request(url, { method: 'POST', headers, body: '{}' });
    await res.body.dump();
    return res.statusCode;
  };

  it('recommendation fails outright and inventory slows down when told to', async () => {
    await shop.setFaults({ ...HEALTHY, recommendationDown: true, inventoryDelayMs: 300 });
    const reco = await request(`${shop.urls.recommendation}/recommendations`);
    await reco.body.dump();
    expect(reco.statusCode).toBe(500);
    const start = performance.now();
    const stock = await request(`${shop.urls.inventory}/inventory/stock/p-1`);
    expect(await stock.body.json()).toMatchObject({ sku: 'p-1' });
    expect(performance.now() - start).toBeGreaterThanOrEqual(290);
    await shop.setFaults(HEALTHY);
  });

  it('payment charges once per request it accepts, and blips every other call without charging', async () => {
    await shop.setFaults({ ...HEALTHY, paymentBlip: true });
    const statuses = [];
    for (let i = 0; i < 4; i++)
      statuses.push(await post(`${shop.urls.payment}/payments/charge`, { 'idempotency-key': `k${i}` }));
    expect(statuses.filter((s) => s === 503)).toHaveLength(2);
    expect(statuses.filter((s) => s === 200)).toHaveLength(2);
    expect([...shop.charges.values()].reduce((a, b) => a + b, 0)).toBe(2);
    await shop.setFaults(HEALTHY);
    expect(await post(`${shop.urls.payment}/payments/charge`, { 'idempotency-key': 'k0' })).toBe(200);
    expect(await post(`${shop.urls.payment}/payments/charge`, { 'idempotency-key': 'k0' })).toBe(200);
    // The shop does not deduplicate: that is breakwater's job in front of it.
    expect(shop.charges.get('k0')).toBe(statuses[0] === 200 ? 3 : 2);
  });

  it('orders refuses connections while down and counts orders per id once back', async () => {
    await shop.setFaults({ ...HEALTHY, ordersDown: true });
    await expect(post(`${shop.urls.orders}/orders`, { 'x-order-id': 'o1' })).rejects.toThrow();
    await shop.setFaults(HEALTHY);
    expect(await post(`${shop.urls.orders}/orders`, { 'x-order-id': 'o1' })).toBe(201);
    expect(shop.orders.get('o1')).toBe(1);
  });

  it("answers the checkout saga's steps and compensations and counts each", async () => {
    expect(await post(`${shop.urls.inventory}/reservations`, { 'idempotency-key': 's1:inventory' })).toBe(
      201,
    );
    expect(await post(`${shop.urls.inventory}/reservations/s1:inventory/release`)).toBe(200);
    expect(await post(`${shop.urls.payment}/payments/k9/refund`)).toBe(200);
    expect(await post(`${shop.urls.orders}/orders/o1/cancel`)).toBe(200);
    expect(shop.saga.reservations.get('s1:inventory')).toBe(1);
    expect(shop.saga.releases.get('s1:inventory')).toBe(1);
    expect(shop.saga.refunds.get('k9')).toBe(1);
    expect(shop.saga.cancellations.get('o1')).toBe(1);
  });
});
