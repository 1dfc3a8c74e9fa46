import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { indent, type Running, startBreakwater } from '../kit/breakwater.js';
import { type FaultUpstream, startFaultUpstream } from '../kit/fault-upstream.js';
import { freePort } from '../kit/process.js';
import { rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';
import { startWsUpstream, type WsUpstream } from '../kit/ws-upstream.js';

/** One listener whose routes are written out, one upstream `app` with `upstreamExtra`. */
function config(upstreamUrl: string, routes: string, upstreamExtra = ''): string {
  return `
listeners:
  - name: main
    port: 0
    routes:
${indent(routes, 6)}
admin:
  port: 0
upstreams:
  app:
    endpoints: [${upstreamUrl}]
${indent(upstreamExtra, 4)}
`;
}

const ONE_ROUTE = '- { name: all, upstream: app }';

function wsUrl(bw: Running, path = '/'): string {
  return `${bw.url().replace('http:', 'ws:')}${path}`;
}

interface Message {
  readonly data: Buffer;
  readonly binary: boolean;
}

interface Client {
  readonly ws: WebSocket;
  /** The 101 response. */
  readonly res: IncomingMessage;
  /** The next message, in order (messages are queued from the start: one may come with the 101). */
  next(): Promise<Message>;
}

/** Opens a WebSocket through breakwater. */
function connect(url: string, headers?: Record<string, string>): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    const queue: Message[] = [];
    const waiting: ((m: Message) => void)[] = [];
    ws.on('message', (data, binary) => {
      const m = { data: data as Buffer, binary };
      const w = waiting.shift();
      if (w) w(m);
      else queue.push(m);
    });
    const next = () => {
      const m = queue.shift();
      return m ? Promise.resolve(m) : new Promise<Message>((r) => waiting.push(r));
    };
    let res: IncomingMessage | undefined;
    ws.once('upgrade', (r) => {
      res = r;
    });
    ws.once('open', () => resolve({ ws, res: res as IncomingMessage, next }));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, r) => {
      req.destroy();
      reject(new Error(`handshake answered ${r.statusCode}`));
    });
  });
}

interface Refusal {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly ms: number;
}

/** A handshake expected to fail: what the client got instead of a 101. */
function refused(url: string, headers?: Record<string, string>): Promise<Refusal> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on('error', () => undefined);
    ws.once('open', () => {
      ws.terminate();
      reject(new Error('the handshake succeeded'));
    });
    ws.once('unexpected-response', (req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          ms: performance.now() - t0,
        });
        req.destroy();
      });
    });
  });
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string; at: number }> {
  return new Promise((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString(), at: performance.now() })),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, ms = 1500): Promise<void> {
  const end = performance.now() + ms;
  while (!check()) {
    if (performance.now() > end) throw new Error('condition not met in time');
    await sleep(10);
  }
}

async function metrics(bw: Running): Promise<string> {
  return (await request(`${bw.adminUrl}/metrics`)).body.text();
}

function problemType(r: Refusal): string {
  expect(r.headers['content-type']).toBe('application/problem+json');
  return (JSON.parse(r.body) as { type: string }).type;
}

/** A client-to-server text frame (masked, as a client must send it). */
function maskedText(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ (mask[i % 4] as number)));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

const HANDSHAKE =
  'Host: bw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';

describe('WebSocket pass-through', () => {
  let up: WsUpstream;
  let bw: Running;
  beforeAll(async () => {
    up = await startWsUpstream((ws) => ws.send('welcome'));
    bw = await startBreakwater(
      config(
        up.url,
        `
- { name: idle, match: { path_prefix: /idle }, upstream: app, websocket_idle_timeout: 300ms }
- { name: max, match: { path_prefix: /max }, upstream: app, websocket_max_duration: 400ms }
- { name: plain, match: { path_prefix: /plain }, upstream: app, websocket: false }
- { name: strip, match: { path_prefix: /ws }, strip_prefix: true, upstream: app }
- { name: all, upstream: app }
`,
      ),
    );
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it('relays text and binary frames both ways, untouched', async () => {
    const { ws, next } = await connect(wsUrl(bw, '/chat'));
    expect(await next()).toEqual({ data: Buffer.from('welcome'), binary: false });
    ws.send('héllo wörld');
    const text = await next();
    expect(text.data.toString()).toBe('héllo wörld');
    expect(text.binary).toBe(false);
    const blob = randomBytes(100 * 1024);
    ws.send(blob);
    const got = await next();
    expect(got.binary).toBe(true);
    expect(got.data.equals(blob)).toBe(true);
    ws.close();
    await closed(ws);
  });

  it('passes close codes and reasons both ways', async () => {
    const a = await connect(wsUrl(bw, '/a'));
    const serverClose = closed(a.ws);
    a.ws.send('close-me');
    expect(await serverClose).toMatchObject({ code: 4001, reason: 'server says bye' });

    const b = await connect(wsUrl(bw, '/b'));
    const seen = up.closes.length;
    b.ws.close(1000, 'client done');
    await closed(b.ws);
    await until(() => up.closes.length > seen);
    expect(up.closes.at(-1)).toEqual({ code: 1000, reason: 'client done' });
    await until(() => bw.bw.listeners[0]?.openWebSockets === 0);
  });

  it('sends X-Forwarded-*, the request id and the endpoint Host upstream; returns the id on the 101', async () => {
    const before = up.handshakes.length;
    const { ws, res } = await connect(wsUrl(bw, '/ws/room?id=7'), {
      'x-request-id': 'ws-req-1',
      'x-forwarded-for': '10.1.2.3',
    });
    const hs = up.handshakes[before] as IncomingMessage;
    expect(hs.url).toBe('/room?id=7');
    expect(hs.headers['x-request-id']).toBe('ws-req-1');
    expect(hs.headers['x-forwarded-for']).toBe('10.1.2.3, 127.0.0.1');
    expect(hs.headers['x-forwarded-proto']).toBe('http');
    expect(hs.headers['x-forwarded-host']).toBe(new URL(bw.url()).host);
    expect(hs.headers.host).toBe(new URL(up.url).host);
    expect(hs.headers.upgrade).toBe('websocket');
    expect(res.statusCode).toBe(101);
    expect(res.headers['x-request-id']).toBe('ws-req-1');
    expect(res.headers['sec-websocket-accept']).toBeDefined();
    ws.close();
    await closed(ws);
  });

  it('forwards a frame the client sent together with its request head', async () => {
    const r = await rawRequest(
      bw.bw.listenerPort('main'),
      Buffer.concat([Buffer.from(`GET /early HTTP/1.1\r\n${HANDSHAKE}`), maskedText('early bird')]),
      300,
    );
    expect(r.text).toMatch(/^HTTP\/1.1 101 Switching Protocols\r\n/);
    // The upstream's welcome, then its echo of the frame sent with the request head.
    expect(r.bytes.includes(Buffer.from('welcome'))).toBe(true);
    expect(r.bytes.includes(Buffer.from('early bird'))).toBe(true);
  });

  it('closes both sides after websocket_idle_timeout without traffic, not while bytes flow', async () => {
    const before = up.closes.length;
    const { ws } = await connect(wsUrl(bw, '/idle'));
    const opened = performance.now();
    const end = closed(ws);
    // 6 x 100 ms of traffic: twice the idle timeout, and still open.
    let last = 0;
    for (let i = 0; i < 6; i++) {
      ws.send(`tick ${i}`);
      last = performance.now();
      await sleep(100);
    }
    expect(ws.readyState).toBe(WebSocket.OPEN);
    const c = await end;
    expect(c.code).toBe(1006); // cut, no close frame: breakwater does not parse frames
    // The echo of the last tick is the last byte through: the idle time counts from about then.
    expect(c.at - last).toBeGreaterThanOrEqual(280);
    expect(c.at - last).toBeLessThan(900);
    expect(c.at - opened).toBeGreaterThan(600);
    await until(() => up.closes.length > before);
    expect(up.closes.at(-1)?.code).toBe(1006);
    expect(await metrics(bw)).toMatch(
      /breakwater_websocket_closed_total\{upstream="app",reason="idle_timeout"\} 1/,
    );
  });

  it('closes both sides after websocket_max_duration, traffic or not', async () => {
    const before = up.closes.length;
    const { ws } = await connect(wsUrl(bw, '/max'));
    const opened = performance.now();
    const end = closed(ws);
    const ticker = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('tick'), 50);
    const c = await end;
    clearInterval(ticker);
    expect(c.code).toBe(1006);
    expect(c.at - opened).toBeGreaterThanOrEqual(350);
    expect(c.at - opened).toBeLessThan(1000);
    await until(() => up.closes.length > before);
    expect(await metrics(bw)).toMatch(
      /breakwater_websocket_closed_total\{upstream="app",reason="max_duration"\} 1/,
    );
  });

  it('refuses an upgrade on a route with websocket: false (403), nothing reaches the upstream', async () => {
    const before = up.handshakes.length;
    const r = await refused(wsUrl(bw, '/plain/x'));
    expect(r.status).toBe(403);
    expect(problemType(r)).toBe('urn:breakwater:problem:upgrade-refused');
    expect(JSON.parse(r.body).detail).toMatch(/route plain .*websocket: false/);
    expect(up.handshakes.length).toBe(before);
  });

  it('counts upgrades and open connections; a client that closes its connection is logged as closed_by client', async () => {
    const series = [
      'breakwater_websocket_upgrades_total{upstream="app",outcome="upgraded"}',
      'breakwater_websocket_upgrades_total{upstream="app",outcome="refused"}',
      'breakwater_requests_total{listener="main",route="all",upstream="app",method="GET",code="101"}',
      'breakwater_websocket_closed_total{upstream="app",reason="client"}',
      'breakwater_websocket_closed_total{upstream="app",reason="upstream"}',
    ];
    const values = async () => {
      const text = await metrics(bw);
      return series.map((s) => {
        const line = text.split('\n').find((l) => l.startsWith(`${s} `));
        return line === undefined ? 0 : Number(line.slice(s.length + 1));
      });
    };
    const before = await values();
    const { ws } = await connect(wsUrl(bw, '/count'));
    expect(await metrics(bw)).toMatch(/breakwater_websocket_connections\{upstream="app"\} 1\n/);
    const upstreamCloses = up.closes.length;
    // The client drops its TCP connection (no close handshake): breakwater passes the close on.
    ws.terminate();
    await closed(ws);
    await until(() => bw.bw.listeners[0]?.openWebSockets === 0);
    await until(() => up.closes.length > upstreamCloses);
    expect(await metrics(bw)).toMatch(/breakwater_websocket_connections\{upstream="app"\} 0\n/);
    const after = await values();
    expect(after.map((v, i) => v - (before[i] as number))).toEqual([1, 0, 1, 1, 0]);
    await until(() => bw.logs.some((l) => l.msg === 'websocket' && l.path === '/count'));
    const line = bw.logs.find((l) => l.msg === 'websocket' && l.path === '/count');
    expect(line).toMatchObject({
      status: 101,
      upgrade: 'websocket',
      route: 'all',
      upstream: 'app',
      closed_by: 'client',
    });
  });
});

describe('upgrades that are not WebSocket are refused, never forwarded', () => {
  let up: TestUpstream;
  let bw: Running;
  beforeAll(async () => {
    up = await startUpstream();
    bw = await startBreakwater(config(up.url, ONE_ROUTE));
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it.each([
    [
      'h2c',
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n',
    ],
    ['a list', 'GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n'],
    ['TLS/1.0', 'GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: TLS/1.0\r\n\r\n'],
  ])('Upgrade: %s -> 403 upgrade-refused, connection closed', async (_name, raw) => {
    const r = await rawRequest(bw.bw.listenerPort('main'), raw, 1000);
    expect(r.text).toMatch(/^HTTP\/1.1 403 Forbidden\r\n/);
    expect(r.text).toMatch(/\r\nconnection: close\r\n/i);
    expect(r.text).toContain('"type":"urn:breakwater:problem:upgrade-refused"');
    expect(r.end).toBe('closed');
    expect(up.received.length).toBe(0);
  });

  it('a handshake with a body, or not a GET, or without Host -> 400, connection closed', async () => {
    const port = bw.bw.listenerPort('main');
    for (const raw of [
      `POST / HTTP/1.1\r\nContent-Length: 5\r\n${HANDSHAKE}hello`,
      `GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n${HANDSHAKE}0\r\n\r\n`,
      `GET / HTTP/1.1\r\n${HANDSHAKE.replace('Host: bw.test\r\n', '')}`,
    ]) {
      const r = await rawRequest(port, raw, 1000);
      expect(r.text).toMatch(/^HTTP\/1.1 400 Bad Request\r\n/);
      expect(r.end).toBe('closed');
    }
    expect(up.received.length).toBe(0);
  });

  it('the same path refusals as any request (.. above the root)', async () => {
    const r = await rawRequest(bw.bw.listenerPort('main'), `GET /../etc HTTP/1.1\r\n${HANDSHAKE}`, 1000);
    expect(r.text).toMatch(/^HTTP\/1.1 400 Bad Request\r\n/);
    expect(r.end).toBe('closed');
    expect(up.received.length).toBe(0);
  });

  it('an upstream that answers the handshake with 200 is relayed as it came', async () => {
    const r = await refused(wsUrl(bw, '/not-ws'));
    expect(r.status).toBe(200);
    expect(r.headers['x-upstream-url']).toBe('/not-ws');
    expect(r.headers.connection).toBe('close');
  });
});

describe('failed handshakes', () => {
  it('a down upstream -> 502 at once; the breaker opens after failure_threshold -> 503', async () => {
    const port = await freePort();
    const bw = await startBreakwater(
      config(`http://127.0.0.1:${port}`, ONE_ROUTE, 'circuit_breaker: { failure_threshold: 3 }'),
    );
    try {
      for (let i = 0; i < 3; i++) {
        const r = await refused(wsUrl(bw, '/down'));
        expect(r.status).toBe(502);
        expect(problemType(r)).toBe('urn:breakwater:problem:upstream-connect-failed');
        expect(r.ms).toBeLessThan(500);
      }
      const open = await refused(wsUrl(bw, '/down'));
      expect(open.status).toBe(503);
      expect(problemType(open)).toBe('urn:breakwater:problem:circuit-open');
      // The default reset_timeout is 30 s, just begun.
      expect(Number(open.headers['retry-after'])).toBeGreaterThanOrEqual(29);
      expect(Number(open.headers['retry-after'])).toBeLessThanOrEqual(30);
      const text = await metrics(bw);
      expect(text).toMatch(
        /breakwater_websocket_upgrades_total\{upstream="app",outcome="connect_failure"\} 3/,
      );
      expect(text).toMatch(/breakwater_websocket_upgrades_total\{upstream="app",outcome="circuit_open"\} 1/);
    } finally {
      await bw.stop();
    }
  });

  it('an upstream answering 503 is relayed as-is and counts as a failure for the breaker', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(503, { 'content-type': 'text/plain', 'x-upstream': 'busy' });
      res.end('try later');
    });
    const bw = await startBreakwater(config(up.url, ONE_ROUTE, 'circuit_breaker: { failure_threshold: 2 }'));
    try {
      for (let i = 0; i < 2; i++) {
        const r = await refused(wsUrl(bw, '/busy'));
        expect(r).toMatchObject({ status: 503, body: 'try later' });
        expect(r.headers['x-upstream']).toBe('busy');
        expect(r.headers['content-type']).toBe('text/plain');
      }
      expect(up.received.length).toBe(2);
      const open = await refused(wsUrl(bw, '/busy'));
      expect(open.status).toBe(503);
      expect(problemType(open)).toBe('urn:breakwater:problem:circuit-open');
      expect(up.received.length).toBe(2);
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('failed handshakes feed outlier detection: the endpoint is ejected', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(500);
      res.end();
    });
    const bw = await startBreakwater(
      config(up.url, ONE_ROUTE, 'outlier_detection: { consecutive_failures: 2, max_ejection_percent: 100% }'),
    );
    try {
      expect((await refused(wsUrl(bw))).status).toBe(500);
      expect((await refused(wsUrl(bw))).status).toBe(500);
      const r = await refused(wsUrl(bw));
      expect(r.status).toBe(503);
      expect(problemType(r)).toBe('urn:breakwater:problem:no-healthy-endpoint');
      expect(up.received.length).toBe(2);
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('an upstream that never answers the handshake -> 504 after timeout', async () => {
    const fault: FaultUpstream = await startFaultUpstream({ kind: 'hang' });
    const bw = await startBreakwater(config(fault.url, ONE_ROUTE, 'timeout: 300ms'));
    try {
      const r = await refused(wsUrl(bw));
      expect(r.status).toBe(504);
      expect(problemType(r)).toBe('urn:breakwater:problem:upstream-timeout');
      expect(r.ms).toBeGreaterThanOrEqual(290);
      expect(r.ms).toBeLessThan(1500);
      await until(() => fault.busyOpen === 0);
    } finally {
      await bw.stop();
      await fault.close();
    }
  });

  it('a frame the client sent while the upstream was slow to answer reaches it after the 101', async () => {
    const slow = await startWsUpstream(undefined, { handshakeDelayMs: 150 });
    const bw = await startBreakwater(config(slow.url, ONE_ROUTE));
    try {
      const socket = net.connect(bw.bw.listenerPort('main'), '127.0.0.1');
      const chunks: Buffer[] = [];
      socket.on('data', (d: Buffer) => chunks.push(d));
      await new Promise<void>((r) => socket.once('connect', () => r()));
      socket.write(`GET / HTTP/1.1\r\n${HANDSHAKE}`);
      await sleep(50);
      socket.write(maskedText('while you wait'));
      await until(() => Buffer.concat(chunks).includes(Buffer.from('while you wait')));
      expect(Buffer.concat(chunks).toString('latin1')).toMatch(/^HTTP\/1.1 101 Switching Protocols\r\n/);
      socket.destroy();
    } finally {
      await bw.stop();
      await slow.close();
    }
  });

  it('bytes the upstream sent right behind its 101 reach the client', async () => {
    const fault = await startFaultUpstream({
      kind: 'raw',
      bytes: Buffer.concat([
        Buffer.from(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n',
        ),
        Buffer.from([0x81, 0x05]),
        Buffer.from('hello'),
      ]),
    });
    const bw = await startBreakwater(config(fault.url, ONE_ROUTE));
    try {
      const r = await rawRequest(bw.bw.listenerPort('main'), `GET / HTTP/1.1\r\n${HANDSHAKE}`, 300);
      const [head, rest] = [
        r.text.slice(0, r.text.indexOf('\r\n\r\n')),
        r.bytes.subarray(r.text.indexOf('\r\n\r\n') + 4),
      ];
      expect(head).toMatch(/^HTTP\/1.1 101 Switching Protocols\r\n/);
      expect(head).toMatch(/\r\nconnection: upgrade\r\n/i);
      expect(head).toMatch(/\r\nupgrade: websocket/i);
      expect(head).toContain('Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
      expect(head).not.toMatch(/keep-alive:/i);
      expect(rest.equals(Buffer.concat([Buffer.from([0x81, 0x05]), Buffer.from('hello')]))).toBe(true);
    } finally {
      await bw.stop();
      await fault.close();
    }
  });

  it('an upstream that switches to another protocol -> 502, never a tunnel', async () => {
    const fault = await startFaultUpstream({
      kind: 'raw',
      bytes: 'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n',
    });
    const bw = await startBreakwater(config(fault.url, ONE_ROUTE));
    try {
      const r = await refused(wsUrl(bw));
      expect(r.status).toBe(502);
      expect(problemType(r)).toBe('urn:breakwater:problem:upstream-bad-response');
    } finally {
      await bw.stop();
      await fault.close();
    }
  });
});

describe('policies', () => {
  it('bulkhead max_concurrent 1: a second WebSocket gets 503 while the first is open', async () => {
    const up = await startWsUpstream();
    const bw = await startBreakwater(config(up.url, ONE_ROUTE, 'bulkhead: { max_concurrent: 1 }'));
    try {
      const first = await connect(wsUrl(bw, '/one'));
      const second = await refused(wsUrl(bw, '/two'));
      expect(second.status).toBe(503);
      expect(problemType(second)).toBe('urn:breakwater:problem:bulkhead-full');
      // The slot is held by the open connection, not by its handshake.
      first.ws.send('still here');
      expect((await first.next()).data.toString()).toBe('still here');
      first.ws.close();
      await closed(first.ws);
      const bulkhead = bw.bw.policies.get('app')?.bulkhead;
      await until(() => bulkhead?.inFlight === 0);
      const third = await connect(wsUrl(bw, '/three'));
      third.ws.close();
      await closed(third.ws);
      expect(up.handshakes.length).toBe(2);
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('the rate limiter counts a handshake as a request (429)', async () => {
    // One token, and the next only in 100 s: a slow machine cannot earn one during the test.
    const up = await startWsUpstream();
    const bw = await startBreakwater(
      config(up.url, ONE_ROUTE, 'rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1 }'),
    );
    try {
      const first = await connect(wsUrl(bw));
      const second = await refused(wsUrl(bw));
      expect(second.status).toBe(429);
      expect(problemType(second)).toBe('urn:breakwater:problem:rate-limited');
      expect(second.headers['retry-after']).toBeDefined();
      first.ws.close();
      await closed(first.ws);
      expect(up.handshakes.length).toBe(1);
    } finally {
      await bw.stop();
      await up.close();
    }
  });
});

describe('handshakes pass the same admission layers as requests', () => {
  it('a shaping limiter (mode: shape) answers a handshake without a token 429 at once, never queued', async () => {
    // One token, the next in 100 s; the shaper would hold a request up to 200 s.
    const up = await startWsUpstream();
    const bw = await startBreakwater(
      config(
        up.url,
        ONE_ROUTE,
        'rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1, mode: shape, max_delay: 200s }',
      ),
    );
    try {
      const first = await connect(wsUrl(bw, '/one'));
      const second = await refused(wsUrl(bw, '/two'));
      expect(second.status).toBe(429);
      expect(problemType(second)).toBe('urn:breakwater:problem:rate-limited');
      expect(up.handshakes.length).toBe(1);
      expect(await metrics(bw)).not.toMatch(/breakwater_rate_limiter_delayed_total\{upstream="app"\} [1-9]/);
      first.ws.close();
      await closed(first.ws);
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('a client that leaves while queued in the bulkhead frees its queue place at once', async () => {
    const up = await startWsUpstream();
    const bw = await startBreakwater(
      config(up.url, ONE_ROUTE, 'bulkhead: { max_concurrent: 1, max_queue: 1, queue_timeout: 30s }'),
    );
    try {
      const first = await connect(wsUrl(bw, '/one'));
      const bulkhead = bw.bw.policies.get('app')?.bulkhead;
      // Queued behind the open WebSocket; the client gives up after 150 ms.
      const r = await rawRequest(bw.bw.listenerPort('main'), `GET /queued HTTP/1.1\r\n${HANDSHAKE}`, 150);
      expect(r.end).toBe('open');
      // Long before queue_timeout (30 s): the place is free and the open WebSocket still holds the slot.
      await until(() => bulkhead?.queueLength === 0, 5000);
      expect(bulkhead?.inFlight).toBe(1);
      expect(up.handshakes.length).toBe(1);
      first.ws.send('still here');
      expect((await first.next()).data.toString()).toBe('still here');
      first.ws.close();
      await closed(first.ws);
    } finally {
      await bw.stop();
      await up.close();
    }
  });
});

describe('a client that leaves during the handshake', () => {
  it('aborts the upstream handshake, gives the bulkhead slot back, and is no failure for the breaker', async () => {
    const fault = await startFaultUpstream({ kind: 'hang' });
    const bw = await startBreakwater(
      config(
        fault.url,
        ONE_ROUTE,
        'timeout: 10s\nbulkhead: { max_concurrent: 1 }\ncircuit_breaker: { failure_threshold: 1 }',
      ),
    );
    try {
      const r = await rawRequest(bw.bw.listenerPort('main'), `GET /gone HTTP/1.1\r\n${HANDSHAKE}`, 150);
      expect(r.end).toBe('open');
      expect(fault.requests).toBe(1);
      const policies = bw.bw.policies.get('app');
      await until(() => policies?.bulkhead?.inFlight === 0 && fault.busyOpen === 0);
      expect(policies?.breaker?.state).toBe('closed');
      expect(await metrics(bw)).toMatch(
        /breakwater_websocket_upgrades_total\{upstream="app",outcome="client_gone"\} 1/,
      );
      await until(() => bw.logs.some((l) => l.msg === 'websocket'));
      expect(bw.logs.find((l) => l.msg === 'websocket')).toMatchObject({ path: '/gone', status: 499 });
    } finally {
      await bw.stop();
      await fault.close();
    }
  });
});

describe('shutdown', () => {
  it('open WebSockets are cut when the drain timeout passes; stop does not hang', async () => {
    const up = await startWsUpstream();
    const bw = await startBreakwater(config(up.url, ONE_ROUTE));
    try {
      const { ws } = await connect(wsUrl(bw));
      const end = closed(ws);
      const t0 = performance.now();
      await bw.bw.stop(300);
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(250);
      expect(took).toBeLessThan(1500);
      expect((await end).code).toBe(1006);
      await until(() => up.closes.length === 1);
      expect(bw.logs.find((l) => l.msg === 'websocket')).toMatchObject({ closed_by: 'shutdown' });
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('a listener a reload moved drains its WebSockets and cuts them after the drain timeout', async () => {
    const up = await startWsUpstream();
    // A port-0 listener is bound again on every reload: the old one is retired.
    const yaml = `${config(up.url, ONE_ROUTE)}\nshutdown: { drain_timeout: 300ms }\n`;
    const dir = mkdtempSync(join(tmpdir(), 'bw-ws-reload-'));
    const file = join(dir, 'breakwater.yaml');
    writeFileSync(file, yaml);
    const bw = await startBreakwater(yaml, { file });
    try {
      const { ws } = await connect(wsUrl(bw));
      const end = closed(ws);
      expect((await bw.bw.reload('test')).ok).toBe(true);
      const t0 = performance.now();
      expect((await end).code).toBe(1006);
      expect(performance.now() - t0).toBeLessThan(1500);
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('a handshake while draining is refused 503 shutting-down (it would be cut at the drain timeout)', async () => {
    const up = await startWsUpstream();
    const bw = await startBreakwater(
      `${config(up.url, ONE_ROUTE)}\nshutdown: { delay: 500ms, drain_timeout: 1s }\n`,
    );
    try {
      const stopping = bw.bw.stop();
      await sleep(50);
      const r = await refused(wsUrl(bw));
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body).type).toBe('urn:breakwater:problem:shutting-down');
      expect(r.headers['retry-after']).toBe('1');
      expect(up.handshakes).toHaveLength(0);
      await stopping;
    } finally {
      await bw.stop();
      await up.close();
    }
  });

  it('connect_timeout 0 is no connect timeout for a handshake, as for requests', async () => {
    const up = await startWsUpstream();
    const bw = await startBreakwater(config(up.url, ONE_ROUTE, 'connect_timeout: 0'));
    try {
      let opened = 0;
      for (let i = 0; i < 3; i++) {
        const { ws, res } = await connect(wsUrl(bw));
        if (res.statusCode === 101) opened++;
        ws.close();
      }
      expect(opened).toBe(3);
    } finally {
      await bw.stop();
      await up.close();
    }
  });
});
