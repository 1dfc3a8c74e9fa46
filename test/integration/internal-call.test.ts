import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

/**
 * Calls breakwater makes itself (deferred deliveries, saga steps): through the upstream's pipeline,
 * answer read whole, never a fallback.
 */
describe('internal calls through an upstream pipeline', () => {
  let up: TestUpstream;
  let bw: Running;
  let fail = 0;
  beforeAll(async () => {
    up = await startUpstream((req, res, body) => {
      if (req.url === '/flaky' && fail-- > 0) {
        res.writeHead(503).end('later');
        return;
      }
      if (req.url === '/big') {
        res.end(Buffer.alloc(64 * 1024, 1));
        return;
      }
      res.writeHead(201, {
        'content-type': 'application/json',
        'x-seen-key': String(req.headers['idempotency-key']),
      });
      res.end(JSON.stringify({ method: req.method, url: req.url, body: body.toString() }));
    });
    bw = await startBreakwater(
      simpleConfig(
        up.url,
        'retry: { max_attempts: 3, initial_wait: 1ms, max_wait: 5ms }\nfallback: { type: static_response, status: 200, body: "fallback" }',
      ),
    );
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it('sends method, path, headers and body, and returns the whole answer', async () => {
    const r = await bw.bw.callUpstream(
      'app',
      {
        method: 'POST',
        path: '/orders?x=1',
        headers: ['Idempotency-Key', 'k-1', 'content-type', 'text/plain'],
        body: Buffer.from('hello'),
        requestId: 'req-1',
        clientAddress: '10.0.0.9',
      },
      1024 * 1024,
    );
    expect(r.type).toBe('response');
    if (r.type !== 'response') return;
    expect(r.status).toBe(201);
    expect(JSON.parse(r.body.toString())).toEqual({ method: 'POST', url: '/orders?x=1', body: 'hello' });
    const seen = up.received.at(-1);
    expect(seen?.headers['idempotency-key']).toBe('k-1');
    expect(seen?.headers['content-length']).toBe('5');
    expect(seen?.headers['x-request-id']).toBe('req-1');
    expect(seen?.headers['x-forwarded-for']).toContain('10.0.0.9');
  });

  it('retries as the upstream pipeline says (a GET answered 503 twice, then 201)', async () => {
    fail = 2;
    const before = up.received.length;
    const r = await bw.bw.callUpstream(
      'app',
      { method: 'GET', path: '/flaky', headers: [], body: null, requestId: 'req-2' },
      1024,
    );
    expect(r.type === 'response' && r.status).toBe(201);
    expect(r.type === 'response' && r.attempts).toBe(3);
    expect(up.received.length - before).toBe(3);
  });

  it('a failure is a problem, never the fallback', async () => {
    const r = await bw.bw.callUpstream(
      'nope',
      { method: 'GET', path: '/', headers: [], body: null, requestId: 'r' },
      1024,
    );
    expect(r.type).toBe('failure');
    const big = await bw.bw.callUpstream(
      'app',
      { method: 'GET', path: '/big', headers: [], body: null, requestId: 'r' },
      1024,
    );
    expect(big.type).toBe('failure');
    expect(big.type === 'failure' && big.problem.kind).toBe('upstream-bad-response');
  });
});
