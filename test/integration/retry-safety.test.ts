/**
 * Retries that cannot charge twice (issue 22): a request that may not be sent twice (POST, PATCH, a
 * method a route's `idempotency` covers) is retried only when the upstream certainly did not
 * process it, unless the upstream declares it deduplicates Idempotency-Keys itself. Checked from the
 * upstream's side: what it received, what it charged.
 */
import http2 from 'node:http2';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { startH2Upstream } from '../kit/h2.js';
import { freePort } from '../kit/process.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function proxy(yaml: string): Promise<Running> {
  const bw = await startBreakwater(yaml);
  cleanup.push(() => bw.stop());
  return bw;
}

/** The issue's config: /payments with idempotency required, defaults of 4 attempts. */
function paymentsConfig(endpoints: string[], upstreamExtra = ''): string {
  return `
listeners:
  - name: main
    port: 0
    routes:
      - name: payments
        match: { path_prefix: /payments }
        upstream: payments
        idempotency: { required: true }
admin: { port: 0 }
upstreams:
  payments:
    endpoints: [${endpoints.map((e) => `"${e}"`).join(', ')}]
${upstreamExtra}
resilience:
  retry: { max_attempts: 4, initial_wait: 1ms }
`;
}

/**
 * A payment upstream that records the charge and then answers 503 (a crash after the commit).
 * With `dedupe`, it honours Idempotency-Key itself: a key it has charged is answered with the
 * original charge, and never charged again.
 */
async function chargeThen503(dedupe = false): Promise<TestUpstream & { charges: Map<string, number> }> {
  const charges = new Map<string, number>();
  const up = await startUpstream((req, res) => {
    const key = String(req.headers['idempotency-key']);
    if (dedupe && charges.has(key)) {
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ charge: `ch_${key}`, deduplicated: true }));
      return;
    }
    charges.set(key, (charges.get(key) ?? 0) + 1);
    res.writeHead(503, { 'content-type': 'text/plain' });
    res.end('charged, then failed');
  });
  cleanup.push(() => up.close());
  return Object.assign(up, { charges });
}

async function pay(bw: Running, key: string, path = '/payments/charges') {
  const res = await request(`${bw.url()}${path}`, {
    method: 'POST',
    body: '{"amount":4200}',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

async function metrics(bw: Running): Promise<string> {
  return (await request(`${bw.adminUrl}/metrics`)).body.text();
}

describe('retries of requests that may not be sent twice', () => {
  it('the charge-then-503 upstream sees exactly one charge per key under the defaults', async () => {
    const up = await chargeThen503();
    const bw = await proxy(paymentsConfig([up.url]));
    const first = await pay(bw, 'k-42');
    expect(first.status).toBe(503);
    expect(first.headers['x-breakwater-attempts']).toBe('1');
    const other = await pay(bw, 'k-43');
    expect(other.headers['x-breakwater-attempts']).toBe('1');
    // The client's own retry with the same key gets the stored answer, not a second charge.
    const again = await pay(bw, 'k-42');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect([...up.charges]).toEqual([
      ['k-42', 1],
      ['k-43', 1],
    ]);
    expect(up.received).toHaveLength(2);
    expect(await metrics(bw)).toMatch(
      /breakwater_retries_skipped_total\{upstream="payments",reason="method"\} 2/,
    );
  });

  it('a connect-refused POST is still retried: the first endpoint refuses, the second charges once', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(201);
      res.end('charged');
    });
    cleanup.push(() => up.close());
    const dead = `http://127.0.0.1:${await freePort()}`;
    // round robin starts at the first endpoint: the dead one.
    const bw = await proxy(paymentsConfig([dead, up.url]));
    const res = await pay(bw, 'k-7');
    expect(res).toMatchObject({ status: 201, body: 'charged' });
    expect(res.headers['x-breakwater-attempts']).toBe('2');
    expect(up.received).toHaveLength(1);
    expect(up.received[0]?.headers['idempotency-key']).toBe('k-7');
  });

  it('with idempotency_keys: honored the upstream sees the retries and deduplicates them itself', async () => {
    const up = await chargeThen503(true);
    const bw = await proxy(paymentsConfig([up.url], '    idempotency_keys: honored'));
    const res = await pay(bw, 'k-42');
    expect(res.status).toBe(201);
    expect(JSON.parse(res.body)).toEqual({ charge: 'ch_k-42', deduplicated: true });
    expect(res.headers['x-breakwater-attempts']).toBe('2');
    expect(up.received.map((r) => r.headers['idempotency-key'])).toEqual(['k-42', 'k-42']);
    expect(up.charges.get('k-42')).toBe(1);
  });

  it('a timeout after the request was sent is not retried for a POST (a GET is)', async () => {
    const up = await startUpstream(() => undefined); // reads the request, never answers
    cleanup.push(() => up.close());
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app:
    endpoints: ["${up.url}"]
    timeout: 300ms
    retry: { max_attempts: 2, initial_wait: 1ms, retry_on: [timeout, connect-failure, reset, 5xx] }
`);
    const post = await request(`${bw.url()}/orders`, { method: 'POST', body: 'order 1' });
    expect(post.statusCode).toBe(504);
    expect(post.headers['x-breakwater-attempts']).toBe('1');
    await post.body.dump();
    expect(up.received.map((r) => r.method)).toEqual(['POST']);
    const get = await request(`${bw.url()}/orders/1`);
    expect(get.statusCode).toBe(504);
    expect(get.headers['x-breakwater-attempts']).toBe('2');
    await get.body.dump();
    expect(up.received.map((r) => r.method)).toEqual(['POST', 'GET', 'GET']);
  });

  it('a POST with an Idempotency-Key on a route without idempotency is retried after a 5xx only to an upstream that honours keys', async () => {
    const yaml = (extra: string, url: string) => `
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${url}"], retry: { initial_wait: 1ms } ${extra} }
`;
    const plain = await chargeThen503();
    const bw = await proxy(yaml('', plain.url));
    expect((await pay(bw, 'k-1', '/charges')).headers['x-breakwater-attempts']).toBe('1');
    expect(plain.charges.get('k-1')).toBe(1);
    const deduping = await chargeThen503(true);
    const bw2 = await proxy(yaml(', idempotency_keys: honored', deduping.url));
    const res = await pay(bw2, 'k-1', '/charges');
    expect(res.status).toBe(201);
    expect(deduping.received).toHaveLength(2);
    expect(deduping.charges.get('k-1')).toBe(1);
  });

  it('retry.methods [GET]: a 503 is retried for a GET, not for a HEAD or a PUT', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(503);
      res.end();
    });
    cleanup.push(() => up.close());
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], retry: { max_attempts: 3, initial_wait: 1ms, methods: [GET] } }
`);
    const attempts: Record<string, string | string[] | undefined> = {};
    for (const method of ['GET', 'HEAD', 'PUT'] as const) {
      const res = await request(`${bw.url()}/items/1`, {
        method,
        ...(method === 'PUT' ? { body: 'x' } : {}),
      });
      expect(res.statusCode).toBe(503);
      attempts[method] = res.headers['x-breakwater-attempts'];
      await res.body.dump();
    }
    expect(attempts).toEqual({ GET: '3', HEAD: '1', PUT: '1' });
    expect(up.received.map((r) => r.method)).toEqual(['GET', 'GET', 'GET', 'HEAD', 'PUT']);
    expect(await metrics(bw)).toMatch(/breakwater_retries_skipped_total\{upstream="app",reason="method"\} 2/);
  });

  it('an HTTP/2 stream refused with REFUSED_STREAM is retried for a POST; one reset after it was read is not', async () => {
    let refuse = true;
    let reset = false;
    const up = await startH2Upstream((stream, _headers, body) => {
      stream.on('error', () => undefined);
      if (refuse) {
        refuse = false;
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      } else if (reset) {
        stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      } else {
        stream.respond({ ':status': 201 });
        stream.end(`charged ${body.toString()}`);
      }
    });
    cleanup.push(() => up.close());
    const bw = await proxy(`
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], protocol: h2c, retry: { initial_wait: 1ms } }
`);
    const ok = await request(`${bw.url()}/charges`, { method: 'POST', body: 'once' });
    expect(ok.statusCode).toBe(201);
    expect(await ok.body.text()).toBe('charged once');
    expect(ok.headers['x-breakwater-attempts']).toBe('2');
    reset = true;
    const cut = await request(`${bw.url()}/charges`, { method: 'POST', body: 'twice?' });
    expect(cut.statusCode).toBe(502);
    expect(cut.headers['x-breakwater-attempts']).toBe('1');
    await cut.body.dump();
    expect(up.received.map((r) => r.body.toString())).toEqual(['once', 'once', 'twice?']);
  });

  it('a POST that got a 503 is not sent to a fallback upstream; one refused at connect is, and so is a GET', async () => {
    const primary = await startUpstream((_req, res) => {
      res.writeHead(503);
      res.end('primary failed');
    });
    const replica = await startUpstream((_req, res) => {
      res.end('from the replica');
    });
    cleanup.push(
      () => primary.close(),
      () => replica.close(),
    );
    const dead = `http://127.0.0.1:${await freePort()}`;
    const bw = await proxy(`
listeners:
  - name: main
    port: 0
    routes:
      - { match: { path_prefix: /down }, upstream: down }
      - { upstream: eu }
admin: { port: 0 }
upstreams:
  eu: { endpoints: ["${primary.url}"], retry: { enabled: false }, fallback: other_zone }
  down: { endpoints: ["${dead}"], retry: { enabled: false }, fallback: other_zone }
  us: { endpoints: ["${replica.url}"] }
fallbacks:
  other_zone: { type: upstream, upstream: us }
`);
    const post = await request(`${bw.url()}/orders`, { method: 'POST', body: 'order 1' });
    expect(post.statusCode).toBe(503);
    expect(await post.body.text()).toBe('primary failed');
    expect(replica.received).toHaveLength(0);
    const refused = await request(`${bw.url()}/down/orders`, { method: 'POST', body: 'order 2' });
    expect(refused.statusCode).toBe(200);
    expect(refused.headers['x-breakwater-fallback']).toBe('other_zone');
    await refused.body.dump();
    const get = await request(`${bw.url()}/orders/1`);
    expect(await get.body.text()).toBe('from the replica');
    expect(replica.received.map((r) => `${r.method} ${r.body.toString()}`)).toEqual(['POST order 2', 'GET ']);
  });
});
