/**
 * Idempotency-Key when the first request's outcome is not seen by its client: the client gives up
 * while the upstream still processes it, or breakwater's own timeout fires after it was sent. The
 * key stays claimed (409 while the call runs, its stored answer afterwards, or 409 for an unknown
 * outcome until the claim's lease lapses): the retry with the same key is never forwarded again,
 * so a payment is charged once. Run against the memory store and the shared Redis store.
 */
import http from 'node:http';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort } from '../kit/process.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

interface Payments {
  readonly url: string;
  /** Charges seen per Idempotency-Key. */
  readonly charges: Map<string, number>;
  /** Resolves when the upstream has sent its answer to the n-th charge (1-based). */
  answered(n: number): Promise<void>;
  /** Resolves when the upstream has received the n-th charge whole (1-based). */
  arrived(n: number): Promise<void>;
}

/** A payment upstream: counts charges per key and answers each after `delayMs`. */
async function payments(delayMs: number, bodyBytes = 0): Promise<Payments> {
  const charges = new Map<string, number>();
  const done: number[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  let total = 0;
  const arrivals: (() => void)[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const key = String(req.headers['idempotency-key']);
      charges.set(key, (charges.get(key) ?? 0) + 1);
      const n = ++total;
      for (const a of arrivals.splice(0)) a();
      // 'close': the answer was sent, or its connection cut (breakwater gave up on it).
      res.once('close', () => {
        done.push(n);
        for (const w of waiters.splice(0)) {
          if (done.includes(w.n)) w.resolve();
          else waiters.push(w);
        }
      });
      setTimeout(() => {
        if (res.destroyed) return;
        const body = bodyBytes > 0 ? 'x'.repeat(bodyBytes) : JSON.stringify({ id: `ch_${n}`, key });
        res.writeHead(201, { 'content-type': 'application/json', 'x-charge-id': `ch_${n}` });
        res.end(body);
      }, delayMs);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanup.push(
    () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    charges,
    arrived: (n) => (total >= n ? Promise.resolve() : new Promise((resolve) => arrivals.push(resolve))),
    answered: (n) =>
      done.includes(n) ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve })),
  };
}

interface StoreKind {
  readonly name: string;
  readonly idempotency: string;
  readonly stores: string;
  readonly env: Record<string, string>;
}

async function proxy(kind: StoreKind, endpoint: string, extra = '', idem = ''): Promise<Running> {
  const bw = await startBreakwater(
    `
listeners:
  - name: main
    port: 0
    routes: [{ name: pay, upstream: payments, idempotency: { ${kind.idempotency}${idem} } }]
admin: { port: 0 }
${kind.stores}
upstreams:
  payments: { endpoints: ["${endpoint}"], retry: { enabled: false } ${extra} }
logging: { level: warn, access_log: false }
`,
    { env: kind.env },
  );
  cleanup.push(() => bw.stop());
  return bw;
}

async function pay(bw: Running, key: string, signal?: AbortSignal) {
  const res = await request(`${bw.url()}/charges`, {
    method: 'POST',
    body: '{"amount":250}',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    ...(signal ? { signal } : {}),
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** A client that gives up once its request is at the upstream: it is aborted (the connection closed). */
async function payAndGiveUp(bw: Running, key: string, up: Payments): Promise<void> {
  const gone = new AbortController();
  const sent = pay(bw, key, gone.signal);
  await up.arrived(1);
  gone.abort();
  await expect(sent).rejects.toThrow();
}

async function metric(bw: Running, result: string): Promise<number> {
  const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
  const m = new RegExp(`breakwater_idempotency_total\\{route="pay",result="${result}"\\} (\\d+)`).exec(text);
  return m ? Number(m[1]) : 0;
}

function suite(kindOf: () => StoreKind): void {
  it('a client that gives up and retries at once with the same key is charged once (409 while it runs, then the replay)', async () => {
    const kind = kindOf();
    const up = await payments(300);
    const bw = await proxy(kind, up.url);
    const key = `give-up-${kind.name}`;
    await payAndGiveUp(bw, key, up);
    // The retry, at once: the first request is still at the upstream.
    const retry = await pay(bw, key);
    expect(retry.status).toBe(409);
    expect(JSON.parse(retry.body).type).toBe('urn:breakwater:problem:idempotency-conflict');
    // Once the upstream answered, the answer breakwater read for the departed client is replayed.
    await up.answered(1);
    let later = await pay(bw, key);
    for (let i = 0; i < 100 && later.status === 409; i++) {
      await new Promise((r) => setTimeout(r, 20));
      later = await pay(bw, key);
    }
    expect(later.status).toBe(201);
    expect(later.headers['idempotent-replayed']).toBe('true');
    expect(later.headers['x-charge-id']).toBe('ch_1');
    expect(up.charges.get(key)).toBe(1);
    expect(await metric(bw, 'stored')).toBe(1);
  });

  it('a call that runs on after its client left keeps its bulkhead slot until it ends', async () => {
    const kind = kindOf();
    const up = await payments(600);
    const bw = await proxy(kind, up.url, ', bulkhead: { max_concurrent: 1 }');
    const key = `slot-${kind.name}`;
    await payAndGiveUp(bw, key, up);
    // The departed client's call is still at the upstream: it holds the one slot.
    const other = await pay(bw, `slot-other-${kind.name}`);
    expect(other.status).toBe(503);
    expect(JSON.parse(other.body).type).toBe('urn:breakwater:problem:bulkhead-full');
    expect(up.charges.get(`slot-other-${kind.name}`)).toBeUndefined();
    // Once that call ended (its answer stored), the slot is free again.
    await up.answered(1);
    let later = await pay(bw, `slot-other-${kind.name}`);
    for (let i = 0; i < 100 && later.status === 503; i++) {
      await new Promise((r) => setTimeout(r, 20));
      later = await pay(bw, `slot-other-${kind.name}`);
    }
    expect(later.status).toBe(201);
    expect(up.charges.get(key)).toBe(1);
    expect(up.charges.get(`slot-other-${kind.name}`)).toBe(1);
  });

  it('conflict: wait: the retry of a client that gave up waits for the first call and replays it', async () => {
    const kind = kindOf();
    const up = await payments(300);
    const bw = await proxy(kind, up.url, '', ', conflict: wait');
    const key = `wait-${kind.name}`;
    await payAndGiveUp(bw, key, up);
    const retry = await pay(bw, key);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(up.charges.get(key)).toBe(1);
  });

  it('a timeout after the request was sent keeps the key claimed: the retry gets 409, never a second charge', async () => {
    const kind = kindOf();
    const up = await payments(600);
    const bw = await proxy(kind, up.url, ', timeout: 150ms, request_timeout: 200ms');
    const key = `timeout-${kind.name}`;
    const first = await pay(bw, key);
    expect(first.status).toBe(504);
    const retry = await pay(bw, key);
    expect(retry.status).toBe(409);
    expect(JSON.parse(retry.body).type).toBe('urn:breakwater:problem:idempotency-conflict');
    // Even after the upstream finished (breakwater did not see its answer), the outcome stays
    // unknown to breakwater: the key is not forwarded again while its claim holds.
    await up.answered(1);
    expect((await pay(bw, key)).status).toBe(409);
    expect(up.charges.get(key)).toBe(1);
    expect(await metric(bw, 'unknown')).toBe(1);
    expect(await metric(bw, 'released')).toBe(0);
  });

  it('a client that leaves mid-body: the rest of the answer is still read into the store and replayed whole', async () => {
    const kind = kindOf();
    let charges = 0;
    let sendRest = () => {};
    const restSent = new Promise<void>((r) => {
      sendRest = r;
    });
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        charges++;
        res.writeHead(201, { 'content-type': 'text/plain', 'x-charge-id': 'ch_mid' });
        res.write('first half;');
        // The second half once the client has left.
        restSent.then(() => res.end('second half'));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanup.push(
      () =>
        new Promise((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
    );
    const bw = await proxy(kind, `http://127.0.0.1:${(server.address() as { port: number }).port}`);
    const key = `mid-${kind.name}`;
    const gone = new AbortController();
    const res = await request(`${bw.url()}/charges`, {
      method: 'POST',
      body: '{"amount":250}',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      signal: gone.signal,
    });
    expect(res.statusCode).toBe(201);
    gone.abort();
    await expect(res.body.text()).rejects.toThrow();
    // While the rest is still to come the key is taken.
    expect((await pay(bw, key)).status).toBe(409);
    sendRest();
    let later = await pay(bw, key);
    for (let i = 0; i < 100 && later.status === 409; i++) {
      await new Promise((r) => setTimeout(r, 20));
      later = await pay(bw, key);
    }
    expect(later).toMatchObject({ status: 201, body: 'first half;second half' });
    expect(later.headers['idempotent-replayed']).toBe('true');
    expect(charges).toBe(1);
  });

  it('a response over max_body_bytes read for a departed client is not stored and keeps the key claimed', async () => {
    const kind = kindOf();
    const up = await payments(200, 4096);
    const bw = await proxy(kind, up.url, '', ', max_body_bytes: 1024');
    const key = `big-${kind.name}`;
    await payAndGiveUp(bw, key, up);
    await up.answered(1);
    // Give breakwater time to read the answer; the key must still not be forwarded again.
    await new Promise((r) => setTimeout(r, 100));
    expect((await pay(bw, key)).status).toBe(409);
    expect(up.charges.get(key)).toBe(1);
  });

  it('a request the rate limiter refused never reached the upstream: its key is released, not held as unknown', async () => {
    const kind = kindOf();
    const up = await payments(0);
    const bw = await proxy(kind, up.url, ', rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1 }');
    // The one token goes to another key; the keyed payment is refused with 429.
    expect((await pay(bw, `other-${kind.name}`)).status).toBe(201);
    const key = `limited-${kind.name}`;
    expect((await pay(bw, key)).status).toBe(429);
    expect(up.charges.get(key)).toBeUndefined();
    expect(await metric(bw, 'released')).toBe(1);
    expect(await metric(bw, 'unknown')).toBe(0);
  });

  it('a request that never reached the upstream (connect refused) releases its key: the retry runs for real', async () => {
    const kind = kindOf();
    const port = await freePort();
    const bw = await proxy(kind, `http://127.0.0.1:${port}`);
    const key = `refused-${kind.name}`;
    expect((await pay(bw, key)).status).toBe(502);
    let charges = 0;
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        charges++;
        res.writeHead(201).end('charged');
      });
    });
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    cleanup.push(() => new Promise((r) => server.close(() => r())));
    let again = await pay(bw, key);
    // The Redis release is sent after the answer: a 409 in between is allowed, a second charge never.
    for (let i = 0; i < 50 && again.status === 409; i++) {
      await new Promise((r) => setTimeout(r, 20));
      again = await pay(bw, key);
    }
    expect(again).toMatchObject({ status: 201, body: 'charged' });
    expect(charges).toBe(1);
    expect(await metric(bw, 'released')).toBe(1);
  });
}

describe('Idempotency-Key with a client that leaves (memory store)', () => {
  suite(() => ({ name: 'memory', idempotency: 'key_scope: global', stores: '', env: {} }));
});

describe.skipIf(!redisTool.available)('Idempotency-Key with a client that leaves (Redis store)', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop('SIGTERM');
  });
  suite(() => ({
    name: 'redis',
    idempotency: 'store: redis, key_scope: global',
    stores: `stores:\n  redis: { url: "\${REDIS_URL}" }`,
    env: { REDIS_URL: redis.url },
  }));
});
