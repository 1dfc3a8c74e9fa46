/**
 * HTTP/2: a listener with `protocol: h2c` takes HTTP/2 with prior knowledge and HTTP/1.1 on one
 * port; an upstream with `protocol: h2c` is spoken to over HTTP/2, many requests on one connection;
 * bodies and trailers pass both ways.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { h2Request, startH2Upstream } from '../kit/h2.js';
import { freePort } from '../kit/process.js';
import { startUpstream } from '../kit/upstream.js';

describe('HTTP/2', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  /** An h2c listener in front of one upstream; `listenerExtra` adds keys to the listener. */
  async function proxy(upstreamUrl: string, upstreamProtocol: string, listenerExtra = '') {
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    protocol: h2c
    ${listenerExtra}
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

  it('loses no byte of an HTTP/2 upstream body when the client reads slowly and trailers follow', async () => {
    const size = 3 * 1024 * 1024;
    const up = await startH2Upstream((stream) => {
      stream.respond({ ':status': 200 }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-done': 'yes' }));
      stream.end(Buffer.alloc(size, 7));
    });
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'h2c');
    const session = http2.connect(bw.url());
    cleanup.push(async () => {
      session.destroy();
    });
    const stream = session.request({ ':path': '/big' });
    stream.pause();
    // The client reads nothing for a while: breakwater is paced by it while the upstream is done.
    await new Promise((r) => setTimeout(r, 300));
    let bytes = 0;
    let trailers: http2.IncomingHttpHeaders | undefined;
    stream.on('trailers', (t) => {
      trailers = t;
    });
    stream.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    stream.resume();
    await new Promise<void>((r) => stream.on('end', () => r()));
    expect(bytes).toBe(size);
    expect(trailers?.['x-done']).toBe('yes');
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
    const bw = await proxy(up.url, 'http1', 'limits: { body_idle_timeout: 300ms }');
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

  it('survives connections reset while their first bytes are read, and serves the next', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'http1');
    const port = Number(new URL(bw.url()).port);
    for (const bytes of ['', 'PRI * HT', 'GET /x HT']) {
      const socket = net.connect(port, '127.0.0.1');
      await new Promise<void>((r) => socket.once('connect', () => r()));
      if (bytes) socket.write(bytes);
      await new Promise((r) => setTimeout(r, 20));
      socket.resetAndDestroy();
    }
    await new Promise((r) => setTimeout(r, 50));
    const res = await h2Request(bw.url(), { ':path': '/still-here' });
    expect(res.status).toBe(200);
  });

  it('aborts the upstream request when an HTTP/2 client cancels its stream', async () => {
    let upstreamClosedEarly = false;
    const slow = http.createServer((_req, res) => {
      res.on('close', () => {
        if (!res.writableFinished) upstreamClosedEarly = true;
      });
      res.writeHead(200);
      res.write('first part');
      setTimeout(() => res.end('late'), 2000).unref();
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
    cleanup.push(
      () =>
        new Promise<void>((r) => {
          slow.closeAllConnections();
          slow.close(() => r());
        }),
    );
    const bw = await proxy(`http://127.0.0.1:${(slow.address() as net.AddressInfo).port}`, 'http1');
    const session = http2.connect(bw.url());
    cleanup.push(async () => {
      session.destroy();
    });
    const stream = session.request({ ':path': '/slow' });
    await new Promise<void>((r) => stream.once('data', () => r()));
    stream.close(http2.constants.NGHTTP2_CANCEL);
    for (let i = 0; i < 40 && !upstreamClosedEarly; i++) await new Promise((r) => setTimeout(r, 25));
    expect(upstreamClosedEarly).toBe(true);
    const line = bw.logs.find((l) => l.msg === 'request' && l.path === '/slow');
    expect(line?.complete).toBe(false);
  });

  it('keeps the HTTP/1.1 body idle timeout (408) on an h2c listener', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'http1', 'limits: { body_idle_timeout: 300ms }');
    const socket = net.connect(Number(new URL(bw.url()).port), '127.0.0.1');
    let answer = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      answer += d;
    });
    socket.on('error', () => undefined);
    socket.write('POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc');
    await new Promise<void>((r) => socket.once('close', () => r()));
    expect(answer).toMatch(/^HTTP\/1.1 408 /);
  });

  it('turns h2c on and off by a reload on the same port', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const port = await freePort();
    const yaml = (protocol: string) => `
listeners:
  - { name: main, port: ${port}, protocol: ${protocol}, routes: [{ upstream: app }] }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"] }
`;
    const dir = mkdtempSync(join(tmpdir(), 'bw-h2-reload-'));
    const file = join(dir, 'breakwater.yaml');
    writeFileSync(file, yaml('http1'));
    const bw = await startBreakwater(yaml('http1'), { file });
    cleanup.push(() => bw.stop());
    writeFileSync(file, yaml('h2c'));
    expect((await bw.bw.reload('test')).ok).toBe(true);
    expect((await h2Request(`http://127.0.0.1:${port}`, { ':path': '/h2' })).status).toBe(200);
    const h1 = await request(`http://127.0.0.1:${port}/h1`);
    await h1.body.dump();
    expect(h1.statusCode).toBe(200);
  });

  it('a reload that changes an upstream protocol builds new pools (http1 -> h2c)', async () => {
    const up = await startH2Upstream((stream) => {
      stream.respond({ ':status': 200 });
      stream.end('over h2');
    });
    cleanup.push(() => up.close());
    const yaml = (protocol: string) => `
listeners:
  - { name: main, port: 0, routes: [{ upstream: app }] }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], protocol: ${protocol}, retry: { enabled: false } }
`;
    const dir = mkdtempSync(join(tmpdir(), 'bw-h2-pools-'));
    const file = join(dir, 'breakwater.yaml');
    writeFileSync(file, yaml('http1'));
    const bw = await startBreakwater(yaml('http1'), { file });
    cleanup.push(() => bw.stop());
    const before = await request(`${bw.url()}/x`);
    await before.body.dump();
    // An h2c-only server does not answer HTTP/1.1.
    expect(before.statusCode).toBeGreaterThanOrEqual(502);
    writeFileSync(file, yaml('h2c'));
    expect((await bw.bw.reload('test')).ok).toBe(true);
    const after = await request(`${bw.url()}/x`);
    expect(after.statusCode).toBe(200);
    expect(await after.body.text()).toBe('over h2');
  });

  it('stops promptly with a connection that never sent a byte', async () => {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up.url, 'http1');
    const socket = net.connect(Number(new URL(bw.url()).port), '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((r) => socket.once('connect', () => r()));
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    const t0 = performance.now();
    await bw.stop();
    await closed;
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  it('answers an HTTP/2 client with problem+json when the upstream is down', async () => {
    const bw = await proxy('http://127.0.0.1:1', 'h2c');
    const res = await h2Request(bw.url(), { ':path': '/x' });
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(res.body.toString()).type).toBe('urn:breakwater:problem:upstream-connect-failed');
  });
});
