/**
 * Request smuggling and malformed framing: ambiguous or broken client requests must be refused with
 * 400 and a closed connection, and nothing of them may reach the upstream (RFC 9112 sections 2.2,
 * 3, 3.2, 5.2, 6.1, 6.3, 7.1). A byte-counting TCP relay sits between breakwater and the recording
 * upstream, so even a request whose headers were forwarded but whose body then failed to parse
 * shows up as bytes the upstream received.
 */

import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

/** A TCP relay to `target` that counts the bytes it passes towards the target. */
interface CountingRelay {
  readonly url: string;
  /** Bytes relayed towards the upstream since the last reset, as latin1 text. */
  seen(): string;
  reset(): void;
  close(): Promise<void>;
}

async function startCountingRelay(targetPort: number): Promise<CountingRelay> {
  let chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.on('data', (d: Buffer) => {
      chunks.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', done);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    seen: () => Buffer.concat(chunks).toString('latin1'),
    reset: () => {
      chunks = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every vector carries a smuggled follow-up request to this path where it can. */
const SMUGGLED = '/smuggled';
const smuggled = `GET ${SMUGGLED} HTTP/1.1\r\nHost: x\r\n\r\n`;

const vectors: [name: string, bytes: string][] = [
  [
    'Content-Length together with Transfer-Encoding: chunked (CL.TE / TE.CL)',
    `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'Transfer-Encoding: chunked together with Content-Length (TE first)',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n${smuggled}\r\n0\r\n\r\n`,
  ],
  [
    'two Content-Length headers with different values',
    `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: ${5 + smuggled.length}\r\n\r\nhello${smuggled}`,
  ],
  ['Content-Length: +5', `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello${smuggled}`],
  ['Content-Length: 5a', `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\nhello${smuggled}`],
  ['Content-Length: -1', `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello${smuggled}`],
  [
    'Transfer-Encoding: xchunked',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'Transfer-Encoding with a space before the colon',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'Transfer-Encoding: chunked, identity (chunked not last)',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'Transfer-Encoding on an HTTP/1.0 request',
    `POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'obs-fold header continuation line',
    `GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: first\r\n  second\r\n\r\n${smuggled}`,
  ],
  ['bare LF line endings', `GET /a HTTP/1.1\nHost: x\nX-A: 1\n\n${smuggled}`],
  ['a bare CR inside a header value', `GET /a HTTP/1.1\r\nHost: x\r\nX-A: one\rtwo\r\n\r\n${smuggled}`],
  [
    'a bad chunk size (zz)',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${smuggled}`,
  ],
  [
    'a chunk extension with invalid characters',
    `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e\x01x\x7ft="a"\r\nhello\r\n0\r\n\r\n${smuggled}`,
  ],
  ['a request line without a version (GET /)', `GET /a\r\nHost: x\r\n\r\n${smuggled}`],
  ['two Host headers', `GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n${smuggled}`],
  ['a Host header with a list', `GET /a HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n${smuggled}`],
];

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

  it.each(vectors)('refuses %s: 400, connection closed, nothing upstream', async (_name, bytes) => {
    const r = await rawRequest(port, bytes, 400);
    await settle(50);
    const statusLines = r.text.match(/HTTP\/1\.[01] \d{3} [^\r\n]*/g) ?? [];
    // One combined object, so a failure shows everything breakwater did at once.
    expect({
      firstStatusLine: r.text.slice(0, r.text.indexOf('\r\n')),
      // Exactly one response: the smuggled follow-up was not answered either.
      responses: statusLines.length,
      connectionEnded: r.end !== 'open',
      smuggledReachedUpstream: up.received.some((x) => x.url.includes(SMUGGLED)),
      upstreamRequests: up.received.map((x) => `${x.method} ${x.url} host=${String(x.headers.host)}`),
      upstreamBytes: relay.seen(),
    }).toEqual({
      firstStatusLine: expect.stringMatching(/^HTTP\/1\.1 400 /),
      responses: 1,
      connectionEnded: true,
      smuggledReachedUpstream: false,
      upstreamRequests: [],
      upstreamBytes: '',
    });
  });

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
