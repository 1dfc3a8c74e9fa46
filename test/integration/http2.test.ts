/**
 * HTTP/2: a listener with `protocol: h2c` takes HTTP/2 with prior knowledge and HTTP/1.1 on one
 * port; an upstream with `protocol: h2c` is spoken to over HTTP/2, many requests on one connection;
 * bodies and trailers pass both ways.
 */
import http2 from 'node:http2';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { h2Request, startH2Upstream } from '../kit/h2.js';
import { startUpstream } from '../kit/upstream.js';

describe('HTTP/2', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function proxy(upstreamUrl: string, upstreamProtocol: string) {
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    protocol: h2c
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${upstreamUrl}"], protocol: ${upstreamProtocol} }
`);
    cleanup.push(() => bw.stop());
    return bw;
  }

  it('relays HTTP/2 both ways: headers, a body, trailers, on one upstream connection', async () => {
    const up = await startH2Upstream((stream, headers, body) => {
      stream.respond(
        { ':status': 201, 'content-type': 'text/plain', 'x-seen-path': String(headers[':path']) },
        { waitForTrailers: true },
      );
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': String(body.length) }));
      stream.end(`got ${body.toString()}`);
    });
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'h2c');
    for (let i = 0; i < 3; i++) {
      const res = await h2Request(
        bw.url(),
        { ':method': 'POST', ':path': `/items?i=${i}`, 'content-type': 'text/plain' },
        'hello',
      );
      expect(res.status).toBe(201);
      expect(res.headers['x-seen-path']).toBe(`/items?i=${i}`);
      expect(res.body.toString()).toBe('got hello');
      expect(res.trailers?.['x-checksum']).toBe('5');
    }
    expect(up.received[0]?.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(up.received[0]?.headers[':authority']).toBe(up.url.slice('http://'.length));
    expect(up.received[0]?.headers['x-forwarded-host']).toBe(bw.url().slice('http://'.length));
    expect(up.sessions).toBe(1);
  });

  it('serves HTTP/1.1 on the same port as HTTP/2', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'http1');
    const h1 = await request(`${bw.url()}/one`);
    expect(h1.statusCode).toBe(200);
    await h1.body.dump();
    const h2 = await h2Request(bw.url(), { ':path': '/two' });
    expect(h2.status).toBe(200);
    expect(up.received.map((r) => r.url)).toEqual(['/one', '/two']);
    // An HTTP/2 request reaches an HTTP/1.1 upstream with a Host and no pseudo-headers.
    expect(up.received[1]?.rawHeaders.some((h) => h.startsWith(':'))).toBe(false);
    expect(up.received[1]?.headers.host).toBe(up.url.slice('http://'.length));
  });

  it('answers 408 to an HTTP/2 body that stalls and keeps the connection for other streams', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    protocol: h2c
    limits: { body_idle_timeout: 300ms }
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"] }
`);
    cleanup.push(() => bw.stop());
    const session = http2.connect(bw.url());
    cleanup.push(async () => {
      session.destroy();
    });
    const stalled = session.request({ ':method': 'POST', ':path': '/upload', 'content-length': '1000' });
    stalled.write('only the start');
    const status = await new Promise<number>((resolve) =>
      stalled.on('response', (h) => resolve(Number(h[':status']))),
    );
    expect(status).toBe(408);
    // The same connection still serves another request.
    const next = session.request({ ':path': '/after' });
    const nextStatus = await new Promise<number>((resolve) =>
      next.on('response', (h) => resolve(Number(h[':status']))),
    );
    next.resume();
    expect(nextStatus).toBe(200);
    expect(up.received.map((r) => r.url)).toEqual(['/after']);
  });

  it('answers an HTTP/2 client with problem+json when the upstream is down', async () => {
    const bw = await proxy('http://127.0.0.1:1', 'h2c');
    const res = await h2Request(bw.url(), { ':path': '/x' });
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(res.body.toString()).type).toBe('urn:breakwater:problem:upstream-connect-failed');
  });
});
