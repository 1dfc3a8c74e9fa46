/**
 * The compose loop without Docker: demo/upstreams.mjs as the `demo` service runs it, and breakwater
 * started as its image starts it with config/compose.yaml (moved onto free loopback ports, the
 * upstream URLs given by the environment variables the config reads). Every route reaches its demo
 * service, the metrics Prometheus scrapes count them, and the recommendation fallback answers when
 * the demo services are gone.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../kit/process.js';
import { type Container, onLoopback, runAsContainer } from './container.js';
import { ROOT } from './dockerfile.js';

const SERVICES = ['catalog', 'recommendation', 'inventory', 'orders', 'payment'];

async function startDemo(): Promise<{ proc: ChildProcess; ports: Record<string, number> }> {
  const env = Object.fromEntries(SERVICES.map((s) => [`${s.toUpperCase()}_PORT`, '0']));
  const proc = spawn(process.execPath, [join(ROOT, 'demo/upstreams.mjs')], {
    env: { PATH: process.env.PATH ?? '', DEMO_HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ports: Record<string, number> = {};
  await new Promise<void>((resolve, reject) => {
    let buffer = '';
    proc.once('exit', (code) => reject(new Error(`demo exited with ${code}`)));
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buffer += d;
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const line = JSON.parse(buffer.slice(0, nl)) as { event: string; service: string; port: number };
        buffer = buffer.slice(nl + 1);
        if (line.event === 'listening') ports[line.service] = line.port;
        if (Object.keys(ports).length === SERVICES.length) resolve();
      }
    });
  });
  return { proc, ports };
}

async function call(url: string, init: { method?: 'GET' | 'POST'; headers?: Record<string, string> } = {}) {
  const res = await request(url, init);
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

describe('the compose loop on loopback: demo services behind breakwater with config/compose.yaml', () => {
  let demo: { proc: ChildProcess; ports: Record<string, number> };
  let bw: Container;
  let base: string;
  let admin: string;
  beforeAll(async () => {
    demo = await startDemo();
    const [port, adminPort] = [await freePort(), await freePort()];
    const yaml = onLoopback(readFileSync(join(ROOT, 'config/compose.yaml'), 'utf8'), {
      listenerPort: port,
      adminPort,
    });
    const urls = Object.fromEntries(
      SERVICES.map((s) => [`${s.toUpperCase()}_URL`, `http://127.0.0.1:${demo.ports[s]}`]),
    );
    bw = runAsContainer(yaml, urls);
    base = `http://127.0.0.1:${port}`;
    admin = `http://127.0.0.1:${adminPort}`;
    await waitFor(`${admin}/health/ready`, 200, 20_000);
  });
  afterAll(async () => {
    demo.proc.kill('SIGKILL');
    bw.kill('SIGTERM');
    await bw.exited;
  });

  it('every route reaches its demo service', async () => {
    expect(await call(`${base}/catalog/products/p-2`)).toMatchObject({
      status: 200,
      body: { service: 'catalog', id: 'p-2' },
    });
    expect(await call(`${base}/recommendations`)).toMatchObject({
      status: 200,
      body: { service: 'recommendation', personalized: true },
    });
    expect(await call(`${base}/inventory/stock/p-1`)).toMatchObject({
      status: 200,
      body: { service: 'inventory', sku: 'p-1' },
    });
    expect(await call(`${base}/orders`, { method: 'POST' })).toMatchObject({
      status: 201,
      body: { service: 'orders', status: 'created' },
    });
    expect(
      await call(`${base}/payments/charge`, { method: 'POST', headers: { 'idempotency-key': 'k-1' } }),
    ).toMatchObject({ status: 200, body: { service: 'payment', charged: true, idempotency_key: 'k-1' } });
  });

  it('the admin port serves the metrics Prometheus scrapes, counting each route', async () => {
    const text = await (await request(`${admin}/metrics`)).body.text();
    for (const route of ['catalog', 'recommendations', 'inventory', 'orders', 'payments']) {
      expect(text).toMatch(new RegExp(`breakwater_requests_total\\{[^}]*route="${route}"`));
    }
  });

  it('the recommendation fallback answers when the demo services are gone', async () => {
    demo.proc.kill('SIGTERM');
    await new Promise((r) => demo.proc.once('exit', r));
    expect(await call(`${base}/recommendations`)).toMatchObject({
      status: 200,
      body: { service: 'fallback', personalized: false },
    });
  });
});
