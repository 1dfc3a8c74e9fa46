import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { type FaultUpstream, startFaultUpstream } from '../kit/fault-upstream.js';
import { freePort } from '../kit/process.js';
import { rawRequest } from '../kit/raw-client.js';

async function problemOf(res: Awaited<ReturnType<typeof request>>) {
  expect(res.headers['content-type']).toBe('application/problem+json');
  return (await res.body.json()) as { type: string; status: number; detail: string; upstream: string };
}

describe('upstream failures are mapped, never hung, never disguised', () => {
  let fault: FaultUpstream;
  let bw: Running;
  beforeAll(async () => {
    fault = await startFaultUpstream({ kind: 'hang' });
    bw = await startBreakwater(
      simpleConfig(fault.url, 'timeout: 300ms\nbody_timeout: 300ms\nretry: { enabled: false }'),
    );
  });
  afterAll(async () => {
    await bw.stop();
    await fault.close();
  });

  it('connection refused -> 502 naming the upstream and the cause', async () => {
    const port = await freePort();
    const down = await startBreakwater(simpleConfig(`http://127.0.0.1:${port}`));
    try {
      const res = await request(`${down.url()}/x`);
      expect(res.statusCode).toBe(502);
      const p = await problemOf(res);
      expect(p).toMatchObject({ type: 'urn:breakwater:problem:upstream-connect-failed', upstream: 'app' });
      expect(p.detail).toMatch(/ECONNREFUSED/);
    } finally {
      await down.stop();
    }
  });

  it('an upstream that never answers -> 504 after the attempt timeout', async () => {
    fault.setFault({ kind: 'hang' });
    const t0 = performance.now();
    const res = await request(`${bw.url()}/hang`);
    const took = performance.now() - t0;
    expect(res.statusCode).toBe(504);
    expect((await problemOf(res)).type).toBe('urn:breakwater:problem:upstream-timeout');
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(3000);
  });

  it('slow headers within the timeout pass; beyond it -> 504', async () => {
    fault.setFault({ kind: 'slow-headers', delayMs: 50, body: 'late' });
    const ok = await request(`${bw.url()}/slow`);
    expect(ok.statusCode).toBe(200);
    expect(await ok.body.text()).toBe('late');
    fault.setFault({ kind: 'slow-headers', delayMs: 1000 });
    const late = await request(`${bw.url()}/slower`);
    expect(late.statusCode).toBe(504);
    expect((await problemOf(late)).type).toBe('urn:breakwater:problem:upstream-timeout');
  });

  it('an upstream that closes without answering -> 502', async () => {
    fault.setFault({ kind: 'close' });
    const res = await request(`${bw.url()}/close`);
    expect(res.statusCode).toBe(502);
    expect((await problemOf(res)).type).toBe('urn:breakwater:problem:upstream-reset');
  });

  it('a connection reset before the response -> 502', async () => {
    fault.setFault({ kind: 'reset' });
    const res = await request(`${bw.url()}/reset`);
    expect(res.statusCode).toBe(502);
    expect((await problemOf(res)).type).toBe('urn:breakwater:problem:upstream-reset');
  });

  it.each([
    ['an invalid status line', 'HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok'],
    ['duplicate Content-Length', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok'],
    [
      'Content-Length with Transfer-Encoding',
      'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    ],
    ['a bare CR in a header', 'HTTP/1.1 200 OK\r\nx-a: b\rc\r\ncontent-length: 2\r\n\r\nok'],
  ])('a malformed response (%s) -> 502, never forwarded', async (_name, bytes) => {
    fault.setFault({ kind: 'raw', bytes, close: true });
    const res = await request(`${bw.url()}/malformed`);
    expect(res.statusCode).toBe(502);
    expect((await problemOf(res)).type).toBe('urn:breakwater:problem:upstream-bad-response');
  });

  it.each(['reset', 'close'] as const)(
    'a body shorter than its Content-Length (%s) aborts the client connection',
    async (how) => {
      fault.setFault({ kind: 'truncate', length: 1000, sent: 100, how });
      const r = await rawRequest(bw.bw.listenerPort('main'), 'GET /short HTTP/1.1\r\nHost: x\r\n\r\n', 1000);
      expect(r.text).toMatch(/^HTTP\/1.1 200 OK\r\n[\s\S]*content-length: 1000\r\n/i);
      const body = r.text.slice(r.text.indexOf('\r\n\r\n') + 4);
      expect(body.length).toBe(100);
      expect(r.end).not.toBe('open');
    },
  );

  it('a chunked body cut off aborts the client connection without the last chunk', async () => {
    fault.setFault({ kind: 'truncate', length: 0, sent: 100, how: 'close', chunked: true });
    const r = await rawRequest(bw.bw.listenerPort('main'), 'GET /cut HTTP/1.1\r\nHost: x\r\n\r\n', 1000);
    expect(r.text).toMatch(/^HTTP\/1.1 200 OK\r\n[\s\S]*transfer-encoding: chunked/i);
    expect(r.text).not.toMatch(/\r\n0\r\n\r\n$/);
    expect(r.end).not.toBe('open');
  });

  it('a body that stalls longer than body_timeout aborts the client connection', async () => {
    fault.setFault({ kind: 'raw', bytes: 'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc' });
    const t0 = performance.now();
    const r = await rawRequest(bw.bw.listenerPort('main'), 'GET /stall HTTP/1.1\r\nHost: x\r\n\r\n', 3000);
    expect(r.end).not.toBe('open');
    expect(r.text.endsWith('\r\n\r\nabc')).toBe(true);
    expect(performance.now() - t0).toBeLessThan(2500);
  });
});

describe('breakwater_requests_total', () => {
  let fault: FaultUpstream;
  let bw: Running;
  beforeAll(async () => {
    fault = await startFaultUpstream({ kind: 'hang' });
    bw = await startBreakwater(simpleConfig(fault.url, 'timeout: 300ms\nretry: { enabled: false }'));
  });
  afterAll(async () => {
    await bw.stop();
    await fault.close();
  });

  /** The request counter of route `all`, as `METHOD CODE` -> count. */
  async function counted(): Promise<Record<string, number>> {
    const text = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(
      /^breakwater_requests_total\{listener="main",route="all",upstream="app",method="([^"]+)",code="(\d+)"\} (\d+)$/gm,
    ))
      out[`${m[1]} ${m[2]}`] = Number(m[3]);
    return out;
  }

  it('counts every failure with the status the client got, once each', async () => {
    expect(await counted()).toEqual({});
    const got: string[] = [];
    const send = async (method: 'GET' | 'POST', times: number) => {
      for (let i = 0; i < times; i++) {
        const res = await request(`${bw.url()}/f`, { method, body: method === 'POST' ? 'x' : null });
        await res.body.dump();
        got.push(`${method} ${res.statusCode}`);
      }
    };
    fault.setFault({ kind: 'hang' });
    await send('GET', 2);
    fault.setFault({ kind: 'close' });
    await send('GET', 2);
    await send('POST', 1);
    fault.setFault({ kind: 'raw', bytes: 'HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok', close: true });
    await send('GET', 1);
    fault.setFault({ kind: 'raw', bytes: 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok' });
    await send('GET', 1);
    expect(got).toEqual(['GET 504', 'GET 504', 'GET 502', 'GET 502', 'POST 502', 'GET 502', 'GET 200']);
    expect(await counted()).toEqual({ 'GET 504': 2, 'GET 502': 3, 'POST 502': 1, 'GET 200': 1 });
  });
});

describe('client going away', () => {
  let fault: FaultUpstream;
  let bw: Running;
  beforeAll(async () => {
    fault = await startFaultUpstream({ kind: 'hang' });
    bw = await startBreakwater(simpleConfig(fault.url, 'timeout: 10s'));
  });
  afterEach(() => fault.setFault({ kind: 'hang' }));
  afterAll(async () => {
    await bw.stop();
    await fault.close();
  });

  it('aborts the upstream attempt and logs 499 when the client disconnects first', async () => {
    const before = fault.requests;
    const r = await rawRequest(bw.bw.listenerPort('main'), 'GET /gone HTTP/1.1\r\nHost: x\r\n\r\n', 150);
    expect(r.end).toBe('open');
    await new Promise((res) => setTimeout(res, 100));
    expect(fault.requests).toBe(before + 1);
    // The upstream connection that carried the request was closed, not left hanging for 10 s.
    expect(fault.busyOpen).toBe(0);
    const line = bw.logs.find((l) => l.path === '/gone');
    expect(line).toMatchObject({ status: 499, complete: false });
  });
});
