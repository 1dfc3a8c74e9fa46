/**
 * docs/getting-started.md, replayed: the stand-in services of config/examples/first-hour-services.mjs
 * as a child process, breakwater in-process from config/examples/first-hour.yaml (its ports
 * turned to 0), and the walkthrough's claims checked from both sides.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';

const ROOT = join(import.meta.dirname, '../..');
const EXAMPLE = join(ROOT, 'config/examples/first-hour.yaml');

let services: ChildProcess;
let urls: Record<string, string> = {};
let bw: Running;

beforeAll(async () => {
  services = spawn(process.execPath, [join(ROOT, 'config/examples/first-hour-services.mjs')], {
    env: {
      ...process.env,
      CATALOG_1_PORT: '0',
      CATALOG_2_PORT: '0',
      PAYMENTS_PORT: '0',
      RECOMMENDATION_PORT: '0',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ready = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`services did not start: ${out}`)), 10_000);
    services.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('services ready:'));
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    });
  });
  urls = Object.fromEntries([...ready.matchAll(/(\S+)=(http:\S+)/g)].map((m) => [m[1], m[2]]));
  const yaml = readFileSync(EXAMPLE, 'utf8')
    .replace(/port: 15001\b/, 'port: 0')
    .replace(/port: 9901\b/, 'port: 0');
  bw = await startBreakwater(yaml, {
    env: {
      CATALOG_1: urls['catalog-1'] as string,
      CATALOG_2: urls['catalog-2'] as string,
      PAYMENTS_URL: urls.payments as string,
      RECOMMENDATION_URL: urls.recommendation as string,
    },
  });
}, 20_000);

afterAll(async () => {
  await bw?.stop();
  services?.kill('SIGTERM');
});

async function get(path: string) {
  const res = await request(`${bw.url()}${path}`);
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

async function pay(key: string | undefined, body: string, headers: Record<string, string> = {}) {
  const res = await request(`${bw.url()}/payments/charges`, {
    method: 'POST',
    body,
    headers: { ...(key === undefined ? {} : { 'idempotency-key': key }), ...headers },
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

describe('the first hour (docs/getting-started.md)', () => {
  it('the catalog: two replicas in turn', async () => {
    const replicas = [];
    for (let i = 0; i < 4; i++) replicas.push(JSON.parse((await get('/products/42')).body).replica);
    expect(new Set(replicas)).toEqual(new Set(['catalog-1', 'catalog-2']));
    expect(replicas[0]).not.toBe(replicas[1]);
  });

  it('payments: a key is required, a repeat is replayed, a charge-then-503 is not sent twice', async () => {
    expect((await pay(undefined, '{"amount":4200}')).status).toBe(400);
    const first = await pay('order-1001', '{"amount":4200}');
    expect(first.status).toBe(201);
    const again = await pay('order-1001', '{"amount":4200}');
    expect(again).toMatchObject({ status: 201, body: first.body });
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect((await pay('order-1001', '{"amount":9999}')).status).toBe(422);
    const crash = await pay('order-1002', '{"amount":1500}', { 'x-demo-fail': 'after-charge' });
    expect(crash.status).toBe(503);
    expect(crash.headers['x-breakwater-attempts']).toBe('1');
    expect((await pay('order-1002', '{"amount":1500}')).headers['idempotent-replayed']).toBe('true');
    // Asked of the service itself: one charge per key.
    const charges = await request(`${urls.payments}/payments/charges`);
    expect(await charges.body.json()).toEqual({ 'order-1001': 1, 'order-1002': 1 });
  });

  it('recommendations: the flaky 503s are retried once; down, the fallback answers and the breaker opens', async () => {
    const attempts = [];
    for (let i = 0; i < 6; i++) {
      const res = await get('/recommendations/for/u-7');
      expect(res.status).toBe(200);
      expect(res.headers['x-breakwater-fallback']).toBeUndefined();
      attempts.push(res.headers['x-breakwater-attempts']);
    }
    expect(attempts).toEqual(['1', '1', '2', '1', '2', '1']);
    await (await request(`${urls.recommendation}/_down`, { method: 'POST' })).body.dump();
    for (let i = 0; i < 4; i++) {
      const res = await get('/recommendations/for/u-7');
      expect(res.status).toBe(200);
      expect(res.headers['x-breakwater-fallback']).toBe('top_items');
      expect(JSON.parse(res.body).fallback).toBe(true);
    }
    const state = (await (await request(`${bw.adminUrl}/state`)).body.json()) as {
      upstreams: Record<string, { breaker: { state: string } }>;
    };
    expect(state.upstreams.recommendation?.breaker.state).toBe('open');
    await (await request(`${urls.recommendation}/_up`, { method: 'POST' })).body.dump();
  });
});
