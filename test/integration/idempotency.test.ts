import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { parseIdempotencyKey } from '../../src/pipeline/idempotency.js';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort } from '../kit/process.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A payment upstream: every request it handles is one charge. */
async function payments(delayMs = 0, status = 201): Promise<TestUpstream & { charges: string[] }> {
  const charges: string[] = [];
  const up = await startUpstream((_req, res, body) => {
    charges.push(body.toString());
    setTimeout(() => {
      res.writeHead(status, { 'content-type': 'application/json', 'x-charge-id': `ch_${charges.length}` });
      res.end(JSON.stringify({ charged: body.toString(), n: charges.length }));
    }, delayMs);
  });
  cleanup.push(() => up.close());
  return Object.assign(up, { charges });
}

async function proxy(endpoint: string, idempotency = '{}', upstreamExtra = ''): Promise<Running> {
  const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes: [{ name: pay, upstream: payments, idempotency: ${idempotency} }]
admin: { port: 0 }
upstreams:
  payments: { endpoints: ["${endpoint}"] ${upstreamExtra} }
`);
  cleanup.push(() => bw.stop());
  return bw;
}

async function pay(bw: Running, key: string | undefined, body: string, headers: Record<string, string> = {}) {
  const res = await request(`${bw.url()}/charges`, {
    method: 'POST',
    body,
    headers: {
      'content-type': 'application/json',
      ...(key === undefined ? {} : { 'idempotency-key': key }),
      ...headers,
    },
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

describe('Idempotency-Key', () => {
  it('parses the draft sf-string form and bare tokens, refuses the rest', () => {
    expect(parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"')).toBe(
      '8e03978e-40d5-43e8-bc93-6894a57f9324',
    );
    expect(parseIdempotencyKey('order-42')).toBe('order-42');
    for (const bad of ['', '"', '"unterminated', 'a b', 'x'.repeat(256), '"x"y'])
      expect(parseIdempotencyKey(bad)).toBeUndefined();
  });

  it('replays the stored response for the same key without calling the upstream, byte-identical', async () => {
    const up = await payments();
    const bw = await proxy(up.url);
    const first = await pay(bw, '"k-1"', '{"amount":10}');
    const again = await pay(bw, '"k-1"', '{"amount":10}');
    expect(up.charges).toHaveLength(1);
    expect(again.status).toBe(first.status);
    expect(again.body).toBe(first.body);
    expect(again.headers['x-charge-id']).toBe('ch_1');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toMatch(/breakwater_idempotency_total\{route="pay",result="stored"\} 1/);
    expect(text).toMatch(/breakwater_idempotency_total\{route="pay",result="replayed"\} 1/);
  });

  it('50 concurrent duplicates: the upstream sees exactly one; every other client gets a 409 or a marked replay', async () => {
    const up = await payments(150);
    const bw = await proxy(up.url);
    const results = await Promise.all(Array.from({ length: 50 }, () => pay(bw, 'dup-key', '{"amount":99}')));
    // The contract, whatever the schedule: one charge; one original answer; every other answer is
    // either the in-flight conflict or, once the original completed, its replay marked as such.
    expect(up.charges).toHaveLength(1);
    const originals = results.filter(
      (r) => r.headers['idempotent-replayed'] === undefined && r.status !== 409,
    );
    expect(originals.map((r) => r.status)).toEqual([201]);
    const original = originals[0];
    for (const r of results) {
      if (r === original) continue;
      if (r.status === 409) {
        expect(JSON.parse(r.body).type).toBe('urn:breakwater:problem:idempotency-conflict');
        expect(r.headers['idempotent-replayed']).toBeUndefined();
      } else {
        expect({ status: r.status, replayed: r.headers['idempotent-replayed'], body: r.body }).toEqual({
          status: 201,
          replayed: 'true',
          body: original?.body,
        });
      }
    }
    const later = await pay(bw, 'dup-key', '{"amount":99}');
    expect(later).toMatchObject({ status: 201, body: original?.body });
    expect(later.headers['idempotent-replayed']).toBe('true');
    expect(up.charges).toHaveLength(1);
  });

  it('conflict: wait makes duplicates wait for the first and replay it', async () => {
    const up = await payments(150);
    const bw = await proxy(up.url, '{ conflict: wait }');
    const results = await Promise.all(Array.from({ length: 10 }, () => pay(bw, 'wait-key', '{"amount":5}')));
    expect(up.charges).toHaveLength(1);
    // One original; the nine others waited (no 409) and got its replay, marked as one.
    const replayed = results.filter((r) => r.headers['idempotent-replayed'] === 'true');
    const originals = results.filter((r) => r.headers['idempotent-replayed'] === undefined);
    expect(originals.map((r) => r.status)).toEqual([201]);
    expect(replayed).toHaveLength(9);
    for (const r of replayed)
      expect({ status: r.status, body: r.body, charge: r.headers['x-charge-id'] }).toEqual({
        status: 201,
        body: originals[0]?.body,
        charge: 'ch_1',
      });
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(text).toMatch(/breakwater_idempotency_total\{route="pay",result="stored"\} 1/);
    expect(text).toMatch(/breakwater_idempotency_total\{route="pay",result="replayed"\} 9/);
  });

  it('the same key with another body is 422; no key where required is 400; a malformed key is 400', async () => {
    const up = await payments();
    const bw = await proxy(up.url, '{ required: true }');
    await pay(bw, 'k-2', '{"amount":10}');
    const mismatch = await pay(bw, 'k-2', '{"amount":1000}');
    expect(mismatch.status).toBe(422);
    expect(JSON.parse(mismatch.body).type).toBe('urn:breakwater:problem:idempotency-key-mismatch');
    const missing = await pay(bw, undefined, '{"amount":10}');
    expect(missing.status).toBe(400);
    expect(JSON.parse(missing.body).type).toBe('urn:breakwater:problem:idempotency-key-missing');
    const malformed = await pay(bw, '"unterminated', '{"amount":10}');
    expect(malformed.status).toBe(400);
    expect(up.charges).toHaveLength(1);
  });

  it('a connect failure does not poison the key: the next try with it runs for real', async () => {
    const port = await freePort();
    const bw = await proxy(`http://127.0.0.1:${port}`, '{}', ', retry: { enabled: false }');
    expect((await pay(bw, 'k-3', '{"amount":7}')).status).toBe(502);
    const http = await import('node:http');
    let charges = 0;
    const server = http.createServer((_req, res) => {
      charges++;
      res.end('charged');
    });
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    cleanup.push(() => new Promise((r) => server.close(() => r())));
    expect(await pay(bw, 'k-3', '{"amount":7}')).toMatchObject({ status: 200, body: 'charged' });
    expect((await pay(bw, 'k-3', '{"amount":7}')).headers['idempotent-replayed']).toBe('true');
    expect(charges).toBe(1);
  });

  it('a 5xx is stored and replayed by default; store_server_errors: false releases the key', async () => {
    const failing = await payments(0, 500);
    const bw = await proxy(failing.url, '{}', ', retry: { enabled: false }');
    await pay(bw, 'k-4', 'x');
    expect((await pay(bw, 'k-4', 'x')).headers['idempotent-replayed']).toBe('true');
    expect(failing.charges).toHaveLength(1);
    const bw2 = await proxy(failing.url, '{ store_server_errors: false }', ', retry: { enabled: false }');
    await pay(bw2, 'k-5', 'x');
    await pay(bw2, 'k-5', 'x');
    expect(failing.charges).toHaveLength(3);
  });

  it('keys are scoped per client: the same key from two client identities runs twice', async () => {
    const up = await payments();
    const bw = await proxy(up.url, '{ key_scope: "header:x-client-id" }');
    await pay(bw, 'same', 'a', { 'x-client-id': 'shop-1' });
    await pay(bw, 'same', 'a', { 'x-client-id': 'shop-2' });
    await pay(bw, 'same', 'a', { 'x-client-id': 'shop-1' });
    expect(up.charges).toHaveLength(2);
  });

  it('the financial scenario: the payment upstream is down, the breaker protects it, the client retries with its key, one charge', async () => {
    const port = await freePort();
    const bw = await proxy(
      `http://127.0.0.1:${port}`,
      '{}',
      ', retry: { initial_wait: 10ms }, circuit_breaker: { failure_threshold: 3, reset_timeout: 300ms }',
    );
    // The client retries its payment with one key while the upstream is down.
    const seen: number[] = [];
    for (let i = 0; i < 3; i++) seen.push((await pay(bw, 'tx-777', '{"amount":250}')).status);
    expect(seen[0]).toBe(502);
    expect(seen.at(-1)).toBe(503); // the breaker opened: no more calls to a dead upstream
    const http = await import('node:http');
    let charges = 0;
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => {
        body += d;
      });
      req.on('end', () => {
        charges++;
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: 'ch_1', body }));
      });
    });
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    cleanup.push(() => new Promise((r) => server.close(() => r())));
    await new Promise((r) => setTimeout(r, 350));
    const ok = await pay(bw, 'tx-777', '{"amount":250}');
    expect(ok.status).toBe(201);
    // A duplicate (the client never saw the answer, say) is replayed, not charged again.
    const dup = await pay(bw, 'tx-777', '{"amount":250}');
    expect(dup).toMatchObject({ status: 201, body: ok.body });
    expect(charges).toBe(1);
  });
});
