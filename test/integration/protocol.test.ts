/**
 * Protocol edges of the client side (RFC 9110, RFC 9112), checked on raw sockets and from the
 * upstream's side: request-line versions other than HTTP/1.0 and 1.1 (a crash once), pipelined
 * answers in order when a later request is malformed or refused, transfer codings breakwater does
 * not implement, `Expect`, TRACE, and breakwater's own answers to what Node's parser refuses.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sendTrailersOnly } from '../../src/attempt/grpc.js';
import { peerAddress, rememberPeer } from '../../src/listener/client-address.js';
import { problem, sendProblem } from '../../src/listener/problem.js';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { type CountingRelay, startCountingRelay } from '../kit/counting-relay.js';
import { parseResponses, type RawResult, rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('protocol edges', () => {
  let up: TestUpstream;
  let relay: CountingRelay;
  let bw: Running;
  /** Every process-level error while these tests run: there must be none. */
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  beforeAll(async () => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    up = await startUpstream((req, res, body) => {
      // /slow answers after a while, so that what is pipelined behind it arrives first.
      const delay = req.url === '/slow' ? 300 : 0;
      setTimeout(() => {
        res.setHeader('x-upstream-url', req.url ?? '');
        res.setHeader('x-upstream-xff', String(req.headers['x-forwarded-for']));
        res.end(body);
      }, delay);
    });
    relay = await startCountingRelay(up.port);
    const routes = `
    routes:
      - { name: traceable, match: { path_prefix: /traceable }, upstream: app, allow_trace: true }
      - { name: small, match: { path_prefix: /small }, upstream: app, max_body_bytes: 1000 }
      - { name: all, upstream: app }`;
    bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    limits: { header_timeout: 1s, body_idle_timeout: 1s }${routes}
  - name: h2c
    port: 0
    protocol: h2c
    limits: { header_timeout: 1s, body_idle_timeout: 1s }${routes}
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${relay.url}"], retry: { enabled: false } }
`);
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await bw.stop();
    await relay.close();
    await up.close();
  });
  beforeEach(() => {
    up.received.length = 0;
    relay.reset();
  });

  const port = (listener: string) => bw.bw.listenerPort(listener);
  const live = async () => (await request(`${bw.adminUrl}/health/live`)).statusCode;

  /** The one refusal a request gets, with nothing of it upstream and the connection closed. */
  async function refusedAlone(r: RawResult) {
    await settle(50);
    const { responses, rest } = parseResponses(r.text);
    return {
      statuses: responses.map((x) => x.status),
      contentType: responses[0]?.headers['content-type'],
      type: responses[0] ? (JSON.parse(responses[0].body) as { type: string }).type : undefined,
      rest,
      closed: r.end !== 'open',
      upstreamBytes: relay.seen(),
      uncaught,
    };
  }

  describe.each(['main', 'h2c'])('an HTTP/1 request line with another version (%s listener)', (listener) => {
    it('POST ... HTTP/2.0 with a body: 505, connection closed, nothing upstream, the process alive', async () => {
      const r = await rawRequest(
        port(listener),
        'POST /x HTTP/2.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello',
        1500,
      );
      expect(await refusedAlone(r)).toEqual({
        statuses: [505],
        contentType: 'application/problem+json',
        type: 'urn:breakwater:problem:http-version-not-supported',
        rest: '',
        closed: true,
        upstreamBytes: '',
        uncaught: [],
      });
      expect(await live()).toBe(200);
    });

    it('POST ... HTTP/2.0 whose body stops: 505 at once, not a connection left open', async () => {
      const r = await rawRequest(
        port(listener),
        'POST /x HTTP/2.0\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel',
        2500,
      );
      expect(await refusedAlone(r)).toMatchObject({ statuses: [505], closed: true, upstreamBytes: '' });
      expect(await live()).toBe(200);
    });

    it('a WebSocket handshake saying HTTP/2.0: 505, closed', async () => {
      const r = await rawRequest(
        port(listener),
        'GET /ws HTTP/2.0\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        1000,
      );
      expect(await refusedAlone(r)).toMatchObject({ statuses: [505], closed: true, upstreamBytes: '' });
    });

    it('GET ... HTTP/2.0: 505 at once (it used to hang)', async () => {
      const r = await rawRequest(port(listener), 'GET /x HTTP/2.0\r\nHost: x\r\n\r\n', 1500);
      expect(await refusedAlone(r)).toMatchObject({ statuses: [505], closed: true, upstreamBytes: '' });
      expect(await live()).toBe(200);
    });

    it.each([
      ['HTTP/0.9 (no version)', 'GET /x\r\n\r\n', 400],
      ['HTTP/0.9 (no version) with headers', 'GET /x\r\nHost: x\r\n\r\n', 400],
      ['HTTP/3.0', 'GET /x HTTP/3.0\r\nHost: x\r\n\r\n', 505],
      ['HTTP/1.2', 'GET /x HTTP/1.2\r\nHost: x\r\n\r\n', 505],
      ['HTTP/9.9', 'GET /x HTTP/9.9\r\nHost: x\r\n\r\n', 505],
      ['RTSP/1.0 (an RTSP method)', 'DESCRIBE /x RTSP/1.0\r\nCSeq: 1\r\n\r\n', 505],
    ])('%s: refused, never forwarded', async (_name, bytes, status) => {
      const r = await rawRequest(port(listener), bytes, 1500);
      expect(await refusedAlone(r)).toMatchObject({
        statuses: [status],
        contentType: 'application/problem+json',
        closed: true,
        upstreamBytes: '',
        uncaught: [],
      });
    });
  });

  describe('pipelining', () => {
    it('a valid request then a malformed one in the same packet: the first answer, then the 400, then close', async () => {
      const r = await rawRequest(
        port('main'),
        'GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /bad HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n',
        1500,
      );
      const { responses, rest } = parseResponses(r.text);
      expect({
        answers: responses.map((x) => [x.status, x.headers['x-upstream-url'] ?? x.headers['content-type']]),
        rest,
        closed: r.end !== 'open',
        // The socket was already gone when the first request went upstream: its address was not.
        forwarded: up.received.map((x) => [x.url, x.headers['x-forwarded-for']]),
      }).toEqual({
        answers: [
          [200, '/slow'],
          [400, 'application/problem+json'],
        ],
        rest: '',
        closed: true,
        forwarded: [['/slow', '127.0.0.1']],
      });
    });

    it('two valid requests then a malformed one: both answers in order, then the 400', async () => {
      const r = await rawRequest(
        port('main'),
        'GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
        1500,
      );
      const { responses } = parseResponses(r.text);
      expect(responses.map((x) => [x.status, x.headers['x-upstream-url']])).toEqual([
        [200, '/slow'],
        [200, '/second'],
        [400, undefined],
      ]);
      expect(r.end).not.toBe('open');
    });

    it('a request then a WebSocket handshake pipelined: the answer first, then the handshake', async () => {
      const r = await rawRequest(
        port('main'),
        'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
          'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        1500,
      );
      // (The test upstream does not speak WebSocket: it answers the handshake as a plain GET,
      // which breakwater relays as it came.)
      expect(parseResponses(r.text).responses.map((x) => [x.status, x.headers['x-upstream-url']])).toEqual([
        [200, '/slow'],
        [200, '/ws'],
      ]);
    });

    it('a valid request, a refused one, then another: the first answer, the refusal, close; the third never forwarded', async () => {
      const r = await rawRequest(
        port('main'),
        'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
          'GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' +
          'GET /third HTTP/1.1\r\nHost: x\r\n\r\n',
        1500,
      );
      await settle(50);
      const { responses, rest } = parseResponses(r.text);
      expect({
        answers: responses.map((x) => x.status),
        rest,
        closed: r.end !== 'open',
        forwarded: up.received.map((x) => x.url),
      }).toEqual({ answers: [200, 400], rest: '', closed: true, forwarded: ['/slow'] });
    });

    it('a client that keeps pipelining after a refusal is cut off; nothing it pipelined is forwarded', async () => {
      const r = await rawRequest(
        port('main'),
        'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
          'GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' +
          'GET /flood HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(100),
        1500,
      );
      await settle(400);
      expect({
        // Cut at once, before /slow was answered (unbounded, it would wait for /slow and the 400).
        answers: parseResponses(r.text).responses.map((x) => x.status),
        closed: r.end !== 'open',
        // (/slow itself may or may not have gone upstream before its client was cut.)
        floodForwarded: relay.seen().includes('/flood') || relay.seen().includes('/two-hosts'),
      }).toEqual({ answers: [], closed: true, floodForwarded: false });
      expect(await live()).toBe(200);
    });

    it('HTTP/1.0 with Transfer-Encoding: 400 and close; the request pipelined behind it is never forwarded', async () => {
      const r = await rawRequest(
        port('main'),
        'POST /te10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n' +
          'GET /behind HTTP/1.1\r\nHost: x\r\n\r\n',
        1000,
      );
      expect(await refusedAlone(r)).toMatchObject({ statuses: [400], closed: true, upstreamBytes: '' });
    });
  });

  describe('transfer codings', () => {
    it.each(['gzip, chunked', 'deflate,chunked', 'compress, chunked'])(
      'Transfer-Encoding: %s is 501, nothing forwarded',
      async (te) => {
        const r = await rawRequest(
          port('main'),
          `POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ${te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
          1000,
        );
        expect(await refusedAlone(r)).toEqual({
          statuses: [501],
          contentType: 'application/problem+json',
          type: 'urn:breakwater:problem:transfer-coding-not-implemented',
          rest: '',
          closed: true,
          upstreamBytes: '',
          uncaught: [],
        });
      },
    );

    it('Transfer-Encoding: Chunked (any case) is plain chunked, and forwarded', async () => {
      const r = await rawRequest(
        port('main'),
        'POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
        500,
      );
      expect(parseResponses(r.text).responses.map((x) => [x.status, x.body])).toEqual([[200, 'hello']]);
    });
  });

  describe('Expect', () => {
    it('100-continue with a Content-Length over the route limit: 413 and no 100 Continue before it', async () => {
      const r = await rawRequest(
        port('main'),
        'POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n',
        1000,
      );
      expect({ text: r.text.slice(0, 40), closed: r.end !== 'open', upstream: relay.seen() }).toEqual({
        text: expect.stringMatching(/^HTTP\/1\.1 413 /),
        closed: true,
        upstream: '',
      });
      expect(r.text).not.toContain('100 Continue');
    });

    it('100-continue within the limit: 100 Continue, then the body is forwarded', async () => {
      const socket = net.connect(port('main'), '127.0.0.1');
      const got: Buffer[] = [];
      socket.on('data', (d: Buffer) => got.push(d));
      socket.write('POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n');
      const deadline = Date.now() + 5000;
      while (!Buffer.concat(got).toString().includes('\r\n\r\n') && Date.now() < deadline) await settle(10);
      expect(Buffer.concat(got).toString()).toBe('HTTP/1.1 100 Continue\r\n\r\n');
      socket.write('abc');
      while (!Buffer.concat(got).toString().endsWith('abc') && Date.now() < deadline) await settle(10);
      socket.destroy();
      const { responses } = parseResponses(Buffer.concat(got).toString());
      expect(responses.map((x) => [x.status, x.body])).toEqual([
        [100, ''],
        [200, 'abc'],
      ]);
    });

    it('over HTTP/2: no 100 before a 413, a 100 before an accepted body, 417 for anything else', async () => {
      const client = http2.connect(bw.url('h2c'));
      client.on('error', () => undefined);
      const ask = (path: string, expectation: string, length: number) =>
        new Promise<{ continued: boolean; status: number; type: string | undefined }>((resolve, reject) => {
          const stream = client.request({
            ':method': 'POST',
            ':path': path,
            expect: expectation,
            'content-length': String(length),
          });
          let continued = false;
          stream.on('continue', () => {
            continued = true;
            stream.end('a'.repeat(length));
          });
          stream.on('response', (h) => {
            const status = Number(h[':status']);
            stream.resume();
            stream.on('end', () =>
              resolve({ continued, status, type: h['content-type'] as string | undefined }),
            );
          });
          stream.on('error', reject);
        });
      try {
        expect(await ask('/small', '100-continue', 2_000_000)).toEqual({
          continued: false,
          status: 413,
          type: 'application/problem+json',
        });
        expect(await ask('/small', '100-continue', 3)).toMatchObject({ continued: true, status: 200 });
        expect(await ask('/small', 'teapot', 3)).toEqual({
          continued: false,
          status: 417,
          type: 'application/problem+json',
        });
        expect(up.received.map((x) => x.body.toString())).toEqual(['aaa']);
      } finally {
        client.close();
      }
    });

    it('an unknown expectation: 417 problem, nothing forwarded', async () => {
      const r = await rawRequest(
        port('main'),
        'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: teapot\r\n\r\nabc',
        1000,
      );
      expect(await refusedAlone(r)).toEqual({
        statuses: [417],
        contentType: 'application/problem+json',
        type: 'urn:breakwater:problem:expectation-failed',
        rest: '',
        closed: true,
        upstreamBytes: '',
        uncaught: [],
      });
    });
  });

  describe('TRACE', () => {
    it('is refused with 405 by default, nothing forwarded', async () => {
      const r = await rawRequest(port('main'), 'TRACE /x HTTP/1.1\r\nHost: x\r\n\r\n', 500);
      await settle(50);
      const { responses } = parseResponses(r.text);
      expect({
        statuses: responses.map((x) => x.status),
        contentType: responses[0]?.headers['content-type'],
        allow: responses[0]?.headers.allow,
        upstream: relay.seen(),
      }).toEqual({
        statuses: [405],
        contentType: 'application/problem+json',
        allow: 'GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH',
        upstream: '',
      });
    });

    it('is forwarded on a route with allow_trace: true', async () => {
      const r = await rawRequest(port('main'), 'TRACE /traceable/x HTTP/1.1\r\nHost: x\r\n\r\n', 500);
      expect(parseResponses(r.text).responses.map((x) => x.status)).toEqual([200]);
      expect(up.received.map((x) => `${x.method} ${x.url}`)).toEqual(['TRACE /traceable/x']);
    });
  });

  describe("breakwater's own answers to what the parser refuses", () => {
    it('a malformed request: 400 problem, connection closed', async () => {
      const r = await rawRequest(port('main'), 'GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n', 500);
      expect(await refusedAlone(r)).toMatchObject({
        statuses: [400],
        contentType: 'application/problem+json',
        type: 'urn:breakwater:problem:bad-request',
        closed: true,
      });
    });

    it('the HTTP/2 preface on an HTTP/1.1 listener: 505 problem saying so', async () => {
      const r = await rawRequest(port('main'), 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 500);
      expect(await refusedAlone(r)).toMatchObject({
        statuses: [505],
        contentType: 'application/problem+json',
        closed: true,
      });
      expect(parseResponses(r.text).responses[0]?.body).toContain('protocol: h2c');
    });

    it('headers too large: 431 problem', async () => {
      const r = await rawRequest(
        port('main'),
        `GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
        500,
      );
      expect(await refusedAlone(r)).toMatchObject({
        statuses: [431],
        contentType: 'application/problem+json',
        type: 'urn:breakwater:problem:headers-too-large',
        closed: true,
      });
    });

    it('headers that never end: 408 problem within header_timeout (1 s), not at the next 30 s check', async () => {
      const started = Date.now();
      const r = await rawRequest(port('main'), 'GET /x HTTP/1.1\r\nHost: x\r\n', 10_000);
      const took = Date.now() - started;
      expect(await refusedAlone(r)).toMatchObject({
        statuses: [408],
        contentType: 'application/problem+json',
        type: 'urn:breakwater:problem:header-timeout',
        closed: true,
      });
      // Generous: the timeout is 1 s, checked every 250 ms.
      expect(took).toBeLessThan(5000);
    });
  });
});

describe('request and socket shapes', () => {
  /** A real HTTP/1 server whose handler is the test's. */
  async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void) {
    const server = http.createServer(handler);
    server.on('connection', (socket) => rememberPeer(socket, socket.remoteAddress));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
      port: (server.address() as AddressInfo).port,
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    };
  }

  it('sendProblem and sendTrailersOnly answer an HTTP/1 response whatever version its request claims', async () => {
    const errors: unknown[] = [];
    const s = await serve((req, res) => {
      // What a client writes in its request line must not decide which protocol code runs.
      req.httpVersionMajor = 2;
      try {
        if (req.url === '/grpc') sendTrailersOnly(res, 200, ['grpc-status', '14']);
        else sendProblem(res, problem('bad-request', 'refused'));
      } catch (err) {
        errors.push(err);
        res.destroy();
      }
    });
    const a = await rawRequest(s.port, 'GET /p HTTP/1.1\r\nHost: x\r\n\r\n', 300);
    const b = await rawRequest(s.port, 'GET /grpc HTTP/1.1\r\nHost: x\r\n\r\n', 300);
    await s.close();
    expect({
      errors: errors.map(String),
      problem: parseResponses(a.text).responses.map((x) => [x.status, x.headers['content-type']]),
      grpc: parseResponses(b.text).responses.map((x) => [x.status, x.headers['grpc-status']]),
    }).toEqual({
      errors: [],
      problem: [[400, 'application/problem+json']],
      grpc: [[200, '14']],
    });
  });

  it('peerAddress: the address captured when the connection was accepted outlives the socket', async () => {
    let after: string | undefined = 'unset';
    const s = await serve((req, res) => {
      req.socket.destroy();
      setImmediate(() => {
        after = peerAddress(req);
        res.destroy();
      });
    });
    await rawRequest(s.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', 300);
    await s.close();
    expect(after).toBe('127.0.0.1');
  });
});
