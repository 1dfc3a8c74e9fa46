import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

describe('forwarding', () => {
  let up: TestUpstream;
  let bw: Running;
  beforeAll(async () => {
    up = await startUpstream();
    bw = await startBreakwater(simpleConfig(up.url));
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it('forwards method, path, query and body, and returns status, headers and body', async () => {
    const res = await request(`${bw.url()}/orders/42?expand=items&x=%2F`, {
      method: 'POST',
      body: 'hello',
      headers: { 'content-type': 'text/plain' },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-upstream-method']).toBe('POST');
    expect(res.headers['x-upstream-url']).toBe('/orders/42?expand=items&x=%2F');
    expect(await res.body.text()).toBe('hello');
    const seen = up.received.at(-1);
    expect(seen?.headers['content-type']).toBe('text/plain');
    expect(seen?.headers['content-length']).toBe('5');
  });

  it.each([
    ['0', Buffer.from('0')],
    ['false', Buffer.from('false')],
    ['empty', Buffer.alloc(0)],
    ['binary', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256))],
  ])('forwards a %s body byte-exact both ways', async (_name, body) => {
    const res = await request(`${bw.url()}/echo`, {
      method: 'PUT',
      body,
      headers: { 'content-type': 'application/json' },
    });
    expect(Buffer.from(await res.body.arrayBuffer())).toEqual(body);
    expect(up.received.at(-1)?.body).toEqual(body);
  });

  it('forwards a chunked request body (no Content-Length) byte-exact', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      'POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n',
    );
    expect(r.text).toMatch(/\r\n\r\n\{"a":1\}$/);
    const seen = up.received.at(-1);
    expect(seen?.body.toString()).toBe('{"a":1}');
    // Framing is hop-by-hop: a body that had fully arrived may be re-framed with its exact length.
    if (seen?.headers['transfer-encoding'] === undefined) expect(seen?.headers['content-length']).toBe('7');
    else expect(seen?.headers['transfer-encoding']).toBe('chunked');
  });

  it('removes hop-by-hop request headers, keeps end-to-end ones, sets the forwarding headers', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      'GET /h HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, x-secret-hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n' +
        'TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.9\r\n' +
        'X-Forwarded-Proto: https\r\nX-Custom: kept\r\nX-Request-Id: req-abc-123\r\n\r\n',
    );
    expect(r.text).toMatch(/^HTTP\/1.1 200/);
    const h = up.received.at(-1)?.headers ?? {};
    for (const gone of ['x-secret-hop', 'keep-alive', 'te', 'proxy-authorization', 'proxy-connection'])
      expect(h[gone]).toBeUndefined();
    expect(h.connection).not.toMatch(/x-secret-hop/i);
    expect(h['x-custom']).toBe('kept');
    expect(h['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toBe('shop.example');
    expect(h.host).toBe(`127.0.0.1:${up.port}`);
    expect(h['x-request-id']).toBe('req-abc-123');
    expect(r.text).toMatch(/\r\nx-request-id: req-abc-123\r\n/i);
  });

  it('owns its own headers: a client cannot set x-breakwater-timeout-ms', async () => {
    const res = await request(`${bw.url()}/own`, { headers: { 'x-breakwater-timeout-ms': '999999' } });
    await res.body.dump();
    expect(up.received.at(-1)?.headers['x-breakwater-timeout-ms']).toBe('5000');
  });

  it('generates an x-request-id when the client sends none, and returns it', async () => {
    const res = await request(`${bw.url()}/id`);
    await res.body.dump();
    const id = res.headers['x-request-id'];
    expect(id).toMatch(/^[0-9a-f]{16}-[0-9a-z]+$/);
    expect(up.received.at(-1)?.headers['x-request-id']).toBe(id);
  });

  it('answers Expect: 100-continue itself and forwards the body without the Expect header', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n',
      200,
    );
    expect(r.text).toMatch(/^HTTP\/1.1 100 Continue\r\n/);
    const r2 = await rawRequest(
      bw.bw.listenerPort('main'),
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc',
    );
    expect(r2.text).toMatch(/HTTP\/1.1 200 OK[\s\S]*\r\n\r\nabc$/);
    expect(up.received.at(-1)?.headers.expect).toBeUndefined();
    expect(up.received.at(-1)?.body.toString()).toBe('abc');
  });
});

describe('response framing', () => {
  let up: TestUpstream;
  let bw: Running;
  beforeAll(async () => {
    up = await startUpstream((req, res) => {
      const url = req.url ?? '';
      if (url === '/204') {
        res.writeHead(204, { 'x-kind': 'no-content' });
        res.end();
      } else if (url === '/304') {
        res.writeHead(304, { etag: '"v1"' });
        res.end();
      } else if (url === '/chunked') {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-hop': 'drop-me', connection: 'x-hop' });
        res.write('part1-');
        setTimeout(() => res.end('part2'), 20);
      } else if (url === '/early-hints') {
        res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
        setTimeout(() => res.end('final answer'), 20);
      } else if (url === '/trailers') {
        res.writeHead(200, { trailer: 'x-checksum' });
        res.write('data');
        res.addTrailers({ 'x-checksum': 'abc' });
        res.end();
      } else {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '11' });
        res.end(req.method === 'HEAD' ? undefined : 'hello world');
      }
    });
    bw = await startBreakwater(simpleConfig(up.url));
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it('HEAD returns the headers (Content-Length included) and no body', async () => {
    const r = await rawRequest(bw.bw.listenerPort('main'), 'HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(r.text).toMatch(/^HTTP\/1.1 200 OK\r\n/);
    expect(r.text).toMatch(/content-length: 11\r\n/i);
    expect(r.text.endsWith('\r\n\r\n')).toBe(true);
  });

  it('204 and 304 have no body and the next request on the connection still works', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      'GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n',
    );
    const statuses = [...r.text.matchAll(/HTTP\/1.1 (\d{3})/g)].map((m) => m[1]);
    expect(statuses).toEqual(['204', '304', '200']);
    expect(r.text).toMatch(/x-kind: no-content/);
    expect(r.text).toMatch(/etag: "v1"/);
    expect(r.text.endsWith('hello world')).toBe(true);
  });

  it('relays a chunked response as chunked, without the upstream hop-by-hop headers', async () => {
    const r = await rawRequest(bw.bw.listenerPort('main'), 'GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(r.text).toMatch(/transfer-encoding: chunked/i);
    expect(r.text).not.toMatch(/x-hop/i);
    expect(r.text).toMatch(/6\r\npart1-\r\n/);
    expect(r.text).toMatch(/5\r\npart2\r\n0\r\n\r\n$/);
  });

  it('waits past interim 1xx responses (103 Early Hints) for the final response', async () => {
    const res = await request(`${bw.url()}/early-hints`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('final answer');
  });

  it('relays response trailers on a chunked response', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      'GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n',
    );
    expect(r.text).toMatch(/4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n$/);
  });
});

describe('routing', () => {
  let a: TestUpstream;
  let b: TestUpstream;
  let bw: Running;
  beforeAll(async () => {
    a = await startUpstream();
    b = await startUpstream();
    bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - { name: api-v2, match: { path_prefix: /api/v2 }, upstream: b, strip_prefix: true }
      - { name: admin-host, match: { host: "*.internal" }, upstream: b }
      - { name: canary, match: { headers: { x-canary: "yes" }, methods: [GET] }, upstream: b }
      - { name: api, match: { path_prefix: /api }, upstream: a }
upstreams:
  a: { endpoints: ["${a.url}"] }
  b: { endpoints: ["${b.url}"] }
admin: { port: 0 }
`);
  });
  afterAll(async () => {
    await bw.stop();
    await Promise.all([a.close(), b.close()]);
  });

  async function where(path: string, headers: Record<string, string> = {}, method = 'GET') {
    const res = await request(`${bw.url()}${path}`, { headers, method });
    const body = await res.body.text();
    return {
      status: res.statusCode,
      upstream:
        res.headers['x-upstream-url'] !== undefined
          ? b.received.length && b.received.at(-1)?.url === res.headers['x-upstream-url']
            ? 'b'
            : 'a'
          : undefined,
      url: res.headers['x-upstream-url'],
      body,
    };
  }

  it('tries routes in order, first match wins, and strips the prefix', async () => {
    const before = b.received.length;
    const r = await where('/api/v2/users?page=2');
    expect(r.url).toBe('/users?page=2');
    expect(b.received.length).toBe(before + 1);
    expect((await where('/api/v2')).url).toBe('/');
  });

  it('matches path prefixes by segment', async () => {
    const before = a.received.length;
    expect((await where('/api/users')).url).toBe('/api/users');
    expect(a.received.length).toBe(before + 1);
    const miss = await request(`${bw.url()}/apix`);
    expect(miss.statusCode).toBe(404);
    await miss.body.dump();
  });

  it('matches wildcard hosts, headers and methods', async () => {
    const before = b.received.length;
    await where('/anything', { host: 'billing.internal:8080' });
    await where('/anything', { 'x-canary': 'yes' });
    expect(b.received.length).toBe(before + 2);
    const post = await request(`${bw.url()}/anything`, { method: 'POST', headers: { 'x-canary': 'yes' } });
    expect(post.statusCode).toBe(404);
    await post.body.dump();
  });

  it('answers no route with 404 application/problem+json', async () => {
    const res = await request(`${bw.url()}/nowhere`);
    expect(res.statusCode).toBe(404);
    expect(res.headers['content-type']).toBe('application/problem+json');
    const body = (await res.body.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ type: 'urn:breakwater:problem:no-route', status: 404 });
    expect(body.detail).toMatch(/GET \/nowhere/);
  });
});
