import net from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { rawRequest } from '../kit/raw-client.js';
import { sleep } from '../kit/until.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

describe('limits and request-target hygiene', () => {
  let up: TestUpstream;
  /** A server of its own behind the /admin route, so which route matched shows where a request lands. */
  let adminUp: TestUpstream;
  let bw: Running;
  let port: number;
  beforeAll(async () => {
    up = await startUpstream();
    adminUp = await startUpstream();
    bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    limits: { max_headers: 20, max_body_bytes: 1KiB, max_header_bytes: 4KiB }
    routes:
      - { match: { path_prefix: /admin }, upstream: admin }
      - { match: { path_prefix: /uploads }, upstream: app, max_body_bytes: 8KiB }
      - { upstream: app }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], retry: { enabled: false } }
  admin: { endpoints: ["${adminUp.url}"] }
`);
    port = bw.bw.listenerPort('main');
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
    await adminUp.close();
  });

  const status = (text: string) => text.slice(9, 12);

  it('answers OPTIONS * itself', async () => {
    const before = up.received.length;
    const r = await rawRequest(port, 'OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(status(r.text)).toBe('200');
    expect(r.text).toMatch(/allow: GET, HEAD, POST/i);
    expect(up.received.length).toBe(before);
  });

  it('refuses CONNECT and absolute-form targets for other hosts; serves its own host in absolute-form', async () => {
    const before = up.received.length;
    expect(
      status(
        (await rawRequest(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')).text,
      ),
    ).toBe('405');
    const foreign = await rawRequest(port, 'GET http://example.com/x HTTP/1.1\r\nHost: shop.local\r\n\r\n');
    expect(status(foreign.text)).toBe('400');
    expect(up.received.length).toBe(before);
    const own = await rawRequest(port, 'GET http://shop.local/own?x=1 HTTP/1.1\r\nHost: shop.local\r\n\r\n');
    expect(status(own.text)).toBe('200');
    expect(up.received.at(-1)?.url).toBe('/own?x=1');
  });

  it.each([
    ['/admin/../public', '/public', 'app'],
    ['/public/%2e%2e/admin/x', '/admin/x', 'admin'],
    ['/public/%2E%2e/admin/x', '/admin/x', 'admin'],
    ['//admin//x', '/admin/x', 'admin'],
    ['/a/./b/', '/a/b/', 'app'],
    ['/keep/%2F/and/%0D%0A', '/keep/%2F/and/%0D%0A', 'app'],
  ])('reads %s as %s for matching and upstream alike (route %s)', async (raw, normalized, route) => {
    const [appBefore, adminBefore] = [up.received.length, adminUp.received.length];
    const r = await rawRequest(port, `GET ${raw}?q=1 HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(status(r.text)).toBe('200');
    const matched = route === 'admin' ? adminUp : up;
    expect({
      app: up.received.length - appBefore,
      admin: adminUp.received.length - adminBefore,
    }).toEqual({ app: route === 'app' ? 1 : 0, admin: route === 'admin' ? 1 : 0 });
    expect(matched.received.at(-1)?.url).toBe(`${normalized}?q=1`);
  });

  it.each(['/a\\b', '/a%5cb', '/../etc/passwd', '/%2e%2e/x'])('refuses the path %s with 400', async (raw) => {
    const before = up.received.length;
    const r = await rawRequest(port, `GET ${raw} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(status(r.text)).toBe('400');
    expect(up.received.length).toBe(before);
  });

  it('431 for too many headers or too large a header block', async () => {
    const many = Array.from({ length: 25 }, (_, i) => `x-h${i}: v\r\n`).join('');
    expect(status((await rawRequest(port, `GET /m HTTP/1.1\r\nHost: x\r\n${many}\r\n`)).text)).toBe('431');
    const big = `x-big: ${'a'.repeat(5000)}\r\n`;
    expect(status((await rawRequest(port, `GET /b HTTP/1.1\r\nHost: x\r\n${big}\r\n`)).text)).toBe('431');
  });

  it('413 for a body over the listener limit, by Content-Length or while a chunked body streams; a route may allow more', async () => {
    const before = up.started;
    const over = Buffer.alloc(2048, 'x');
    const res = await request(`${bw.url()}/small`, { method: 'POST', body: over });
    expect(res.statusCode).toBe(413);
    expect(((await res.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:payload-too-large',
    );
    // A chunked body under the limit at first, over it 200 ms later: held back, never streamed.
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString('latin1');
    });
    socket.on('error', () => undefined);
    const ended = new Promise((r) => socket.on('close', r));
    const chunk = (n: number) => `${n.toString(16)}\r\n${'y'.repeat(n)}\r\n`;
    socket.write(`POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk(1000)}`);
    await sleep(200);
    socket.end(`${chunk(1048)}0\r\n\r\n`);
    await ended;
    expect(status(answer)).toBe('413');
    // Neither reached the upstream, not even its head.
    expect(up.started).toBe(before);
    const allowed = await request(`${bw.url()}/uploads/file`, {
      method: 'POST',
      body: Buffer.alloc(4096, 'z'),
    });
    expect(allowed.statusCode).toBe(200);
    await allowed.body.dump();
  });
});
