/**
 * Request smuggling and malformed framing: ambiguous or broken client requests must be refused with
 * 400 (501 for a transfer coding breakwater does not implement, 505 for an HTTP version it does not
 * speak) as a problem, and a closed connection, and nothing of them may reach the upstream (RFC 9112
 * sections 2.2, 2.3, 3, 3.2, 5.2, 6.1, 6.3, 7.1). Every vector is sent twice: alone, so it must be
 * refused on its own account, and with a smuggled request behind it, which must not be forwarded or
 * answered either. A byte-counting TCP relay sits between breakwater and the recording upstream, so
 * even a request whose headers were forwarded but whose body then failed to parse shows up as bytes
 * the upstream received.
 */

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { type CountingRelay, startCountingRelay } from '../kit/counting-relay.js';
import { parseResponses, rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Each vector is sent alone, then with this request smuggled behind it (in its body where it can be). */
const SMUGGLED = '/smuggled';
const smuggled = `GET ${SMUGGLED} HTTP/1.1\r\nHost: x\r\n\r\n`;

/** name, the request with `tail` where the smuggled request goes, and the status it must get. */
const vectors: [name: string, bytes: (tail: string) => string, status: number][] = [
  [
    'Content-Length together with Transfer-Encoding: chunked (CL.TE / TE.CL)',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: ${5 + t.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'Transfer-Encoding: chunked together with Content-Length (TE first)',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${t ? `${t.length.toString(16)}\r\n${t}\r\n` : ''}0\r\n\r\n`,
    400,
  ],
  [
    'two Content-Length headers with different values',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: ${5 + (t || '!').length}\r\n\r\nhello${t || '!'}`,
    400,
  ],
  ['Content-Length: +5', (t) => `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello${t}`, 400],
  ['Content-Length: 5a', (t) => `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\nhello${t}`, 400],
  ['Content-Length: -1', (t) => `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello${t}`, 400],
  [
    'Transfer-Encoding: xchunked',
    (t) => `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'Transfer-Encoding with a space before the colon',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'Transfer-Encoding: chunked, identity (chunked not last)',
    (t) => `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'Transfer-Encoding on an HTTP/1.0 request',
    (t) => `POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'a transfer coding other than chunked (gzip, chunked)',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${t}`,
    501,
  ],
  [
    'obs-fold header continuation line',
    (t) => `GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: first\r\n  second\r\n\r\n${t}`,
    400,
  ],
  ['bare LF line endings', (t) => `GET /a HTTP/1.1\nHost: x\nX-A: 1\n\n${t}`, 400],
  ['a bare CR inside a header value', (t) => `GET /a HTTP/1.1\r\nHost: x\r\nX-A: one\rtwo\r\n\r\n${t}`, 400],
  [
    'a bad chunk size (zz)',
    (t) => `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${t}`,
    400,
  ],
  [
    'a chunk extension with invalid characters',
    (t) =>
      `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e\x01x\x7ft="a"\r\nhello\r\n0\r\n\r\n${t}`,
    400,
  ],
  ['a request line without a version (GET /, HTTP/0.9)', (t) => `GET /a\r\nHost: x\r\n\r\n${t}`, 400],
  [
    'a request line saying HTTP/2.0',
    (t) => `POST /a HTTP/2.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello${t}`,
    505,
  ],
  ['an HTTP/1.1 request without Host', (t) => `GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n${t}`, 400],
  ['two Host headers', (t) => `GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n${t}`, 400],
  ['a Host header with a list', (t) => `GET /a HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n${t}`, 400],
];

/** Each vector alone, then with the smuggled request behind it. */
const cases = vectors.flatMap(([name, bytes, status]) => [
  [`${name}, alone`, bytes(''), status] as const,
  [`${name}, with a smuggled request behind it`, bytes(smuggled), status] as const,
]);

describe('request smuggling and malformed requests', () => {
  let up: TestUpstream;
  let relay: CountingRelay;
  let bw: Running;
  let port: number;
  beforeAll(async () => {
    up = await startUpstream();
    relay = await startCountingRelay(up.port);
    bw = await startBreakwater(simpleConfig(relay.url, 'retry: { enabled: false }'));
    port = bw.bw.listenerPort('main');
  });
  afterAll(async () => {
    await bw.stop();
    await relay.close();
    await up.close();
  });
  beforeEach(() => {
    up.received.length = 0;
    relay.reset();
  });

  it.each(cases)(
    'refuses %s: its own status, connection closed, nothing upstream',
    async (_name, bytes, status) => {
      const r = await rawRequest(port, bytes, 400);
      await settle(50);
      const { responses, rest } = parseResponses(r.text);
      // One combined object, so a failure shows everything breakwater did at once.
      expect({
        firstStatusLine: r.text.slice(0, r.text.indexOf('\r\n')),
        contentType: responses[0]?.headers['content-type'],
        // Exactly one response: the smuggled follow-up was not answered either.
        responses: responses.length,
        rest,
        connectionEnded: r.end !== 'open',
        smuggledReachedUpstream: up.received.some((x) => x.url.includes(SMUGGLED)),
        upstreamRequests: up.received.map((x) => `${x.method} ${x.url} host=${String(x.headers.host)}`),
        upstreamBytes: relay.seen(),
      }).toEqual({
        firstStatusLine: expect.stringMatching(new RegExp(`^HTTP/1\\.1 ${status} `)),
        contentType: 'application/problem+json',
        responses: 1,
        rest: '',
        connectionEnded: true,
        smuggledReachedUpstream: false,
        upstreamRequests: [],
        upstreamBytes: '',
      });
    },
  );

  describe('positive controls', () => {
    it('passes a normal chunked POST', async () => {
      const r = await rawRequest(
        port,
        'POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
        300,
      );
      expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
      expect(r.text).toMatch(/\r\n\r\nhello world$/);
      expect(up.received.map((x) => [x.method, x.url, x.body.toString()])).toEqual([
        ['POST', '/chunked', 'hello world'],
      ]);
      // The relay sees what the upstream sees: the refusals' empty byte count means something.
      expect(relay.seen()).toMatch(/^POST \/chunked HTTP\/1\.1\r\n/);
    });

    it('passes a normal Content-Length POST', async () => {
      const r = await rawRequest(port, 'POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello', 300);
      expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
      expect(r.text).toMatch(/\r\n\r\nhello$/);
      expect(up.received.map((x) => [x.method, x.url, x.body.toString()])).toEqual([
        ['POST', '/cl', 'hello'],
      ]);
    });

    it('answers both requests of a body-less keep-alive pipeline', async () => {
      const r = await rawRequest(
        port,
        'GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n',
        300,
      );
      expect(r.text.match(/HTTP\/1\.1 200 /g)?.length).toBe(2);
      expect(r.text.indexOf('x-upstream-url: /first')).toBeGreaterThan(-1);
      expect(r.text.indexOf('x-upstream-url: /second')).toBeGreaterThan(
        r.text.indexOf('x-upstream-url: /first'),
      );
      expect(r.end).toBe('open');
      expect(up.received.map((x) => `${x.method} ${x.url}`)).toEqual(['GET /first', 'GET /second']);
    });
  });
});
