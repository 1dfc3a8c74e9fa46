/**
 * Request and response buffering, temporary files, the streaming share and send_timeout.
 *
 * - A request body past `body_buffer_bytes` is read whole into a temporary file before anything
 *   goes upstream; retries and Idempotency-Key fingerprints read it back byte for byte; the file is
 *   removed when the request ends, also when the client aborts; a temporary directory that cannot
 *   be used answers 503/507 problem+json; leftovers of dead processes are swept at start-up.
 * - A response the client falls behind on is read on into memory, then a file, so the upstream is
 *   done at its own speed; an upstream cut mid-body still aborts the client; event streams, the
 *   opt-out header and `response_buffering: false` are not buffered and count against the share.
 * - `request_buffering: false` uploads take a place of the streaming share (503 beyond, after a
 *   wait); `send_timeout` cuts a client that stops reading and aborts its upstream request.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { TempFile, TempFileError, TempFiles } from '../../src/stores/temp-files.js';
import { type Running, startBreakwater } from '../kit/breakwater.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function until(check: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

interface Upstream {
  readonly url: string;
  readonly seen: Seen[];
  /** TCP connections open now and at most; requests whose response has not finished. */
  open: number;
  maxOpen: number;
  connections: number;
  active: number;
  /** Requests whose response the upstream finished writing, and those cut before (aborted). */
  finished: number;
  aborted: number;
  close(): Promise<void>;
}

/**
 * An upstream that reads each body whole, then calls `answer`. It counts connections, requests in
 * progress, responses finished and responses cut off.
 */
async function upstream(answer: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void) {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    state.active++;
    let over = false;
    const done = (cut: boolean) => {
      if (over) return;
      over = true;
      state.active--;
      if (cut) state.aborted++;
      else state.finished++;
    };
    res.on('finish', () => done(false));
    res.on('close', () => done(!res.writableFinished));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      state.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      answer(req, res, body);
    });
  });
  server.on('connection', (socket) => {
    state.connections++;
    state.open++;
    state.maxOpen = Math.max(state.maxOpen, state.open);
    socket.on('close', () => state.open--);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const state: Upstream = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen: [],
    open: 0,
    maxOpen: 0,
    connections: 0,
    active: 0,
    finished: 0,
    aborted: 0,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  cleanup.push(() => state.close());
  return state;
}

/** Writes a large response with backpressure (as a real server does), ending it unless `cut`. */
function sendLarge(res: http.ServerResponse, body: Buffer, headers: Record<string, string> = {}): void {
  res.writeHead(200, { 'content-length': String(body.length), ...headers });
  let at = 0;
  const pump = () => {
    while (at < body.length) {
      const part = body.subarray(at, at + 64 * 1024);
      at += part.length;
      if (!res.write(part)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

/** A raw client connection: sends a request, then reads only when told to. */
function rawClient(port: number, head: string) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.write(head);
  socket.pause();
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  return { socket, closed };
}

/** The client is still connected (it has read nothing yet). */
function stillConnected(socket: net.Socket): boolean {
  return !socket.destroyed && socket.readable;
}

/** Reads everything a paused raw socket receives until it closes; the bytes and how it ended. */
async function drain(socket: net.Socket): Promise<{ bytes: Buffer; ended: 'end' | 'error' }> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const ended = await new Promise<'end' | 'error'>((resolve) => {
    socket.once('end', () => resolve('end'));
    socket.once('error', () => resolve('error'));
    socket.once('close', (hadError) => resolve(hadError ? 'error' : 'end'));
    socket.resume();
  });
  return { bytes: Buffer.concat(chunks), ended };
}

/** The body of a raw HTTP/1.1 response with Content-Length (undefined if the head is incomplete). */
function bodyOf(raw: Buffer): { status: number; headers: string; body: Buffer } {
  const end = raw.indexOf('\r\n\r\n');
  const headers = raw.subarray(0, end).toString('latin1');
  return { status: Number(headers.slice(9, 12)), headers, body: raw.subarray(end + 4) };
}

/** The temporary files (by kind prefix) in breakwater's directories under `root`. */
function tempFiles(root: string, kind?: 'request' | 'response'): string[] {
  if (!existsSync(root)) return [];
  const out: string[] = [];
  for (const d of readdirSync(root)) {
    if (!d.startsWith('breakwater-')) continue;
    try {
      for (const f of readdirSync(join(root, d))) if (!kind || f.startsWith(kind)) out.push(join(root, d, f));
    } catch {
      // removed meanwhile
    }
  }
  return out;
}

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function proxy(opts: {
  up: Upstream;
  tempDir?: string;
  limits?: string;
  route?: string;
  upstream?: string;
  buffering?: string;
}): Promise<Running> {
  const tempDir = opts.tempDir ?? mkdtempSync(join(tmpdir(), 'bw-buf-'));
  const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    limits: { ${opts.limits ?? ''} }
    routes: [{ upstream: app ${opts.route ?? ''} }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${opts.up.url}"] ${opts.upstream ?? ''} }
buffering: { temp_dir: "${tempDir}" ${opts.buffering ?? ''} }
logging: { level: info }
`);
  cleanup.push(() => bw.stop());
  return bw;
}

async function metrics(bw: Running): Promise<string> {
  return (await request(`${bw.adminUrl}/metrics`)).body.text();
}

describe('request buffering', () => {
  it('reads a body past body_buffer_bytes into a temporary file, sends nothing upstream until it is whole, then removes the file', async () => {
    const up = await upstream((_req, res, body) => res.end(sha(body)));
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const bw = await proxy({ up, tempDir, limits: 'body_buffer_bytes: 16KiB' });
    const body = randomBytes(300_000);
    const c = rawClient(
      bw.bw.listenerPort('main'),
      `POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
    );
    c.socket.write(body.subarray(0, 200_000));
    await until(() => tempFiles(tempDir, 'request').length === 1, 5000, 'the request body file');
    await sleep(200);
    expect(up.connections).toBe(0);
    c.socket.write(body.subarray(200_000));
    const r = bodyOf((await drain(c.socket)).bytes);
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(sha(body));
    expect(up.seen[0]?.body.equals(body)).toBe(true);
    await until(() => tempFiles(tempDir, 'request').length === 0, 5000, 'the file to be removed');
  });

  it('sends a chunked body it buffered to a file with a Content-Length, byte for byte', async () => {
    const up = await upstream((_req, res, body) => res.end(sha(body)));
    const bw = await proxy({ up, limits: 'body_buffer_bytes: 1KiB' });
    const body = randomBytes(200_000);
    const res = await request(`${bw.url()}/chunked`, {
      method: 'POST',
      body: Readable.from(
        (function* () {
          for (let i = 0; i < body.length; i += 10_000) yield body.subarray(i, i + 10_000);
        })(),
      ),
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(sha(body));
    expect(up.seen[0]?.headers['content-length']).toBe(String(body.length));
    expect(up.seen[0]?.headers['transfer-encoding']).toBeUndefined();
  });

  it('answers 413 to a chunked body past max_body_bytes while buffering it, and leaves no file', async () => {
    const up = await upstream((_req, res) => res.end('no'));
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const bw = await proxy({ up, tempDir, limits: 'body_buffer_bytes: 1KiB, max_body_bytes: 100KiB' });
    const res = await request(`${bw.url()}/too-big`, {
      method: 'POST',
      body: Readable.from(
        (function* () {
          for (let i = 0; i < 30; i++) yield Buffer.alloc(10_000, 1);
        })(),
      ),
    }).catch((e: Error) => e);
    if (!(res instanceof Error)) {
      expect(res.statusCode).toBe(413);
      await res.body.dump();
    }
    expect(up.connections).toBe(0);
    await until(() => tempFiles(tempDir).length === 0, 5000, 'no file left');
  });

  it('retries a body it buffered to a file, byte for byte on every attempt', async () => {
    let n = 0;
    const up = await upstream((_req, res, body) => {
      n++;
      res.statusCode = n <= 2 ? 503 : 200;
      res.end(sha(body));
    });
    const bw = await proxy({
      up,
      limits: 'body_buffer_bytes: 8KiB',
      upstream: ', retry: { initial_wait: 1ms, max_body_bytes: 1024 }',
    });
    const body = randomBytes(500_000);
    const res = await request(`${bw.url()}/put`, { method: 'PUT', body });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(sha(body));
    expect(res.headers['x-breakwater-attempts']).toBe('3');
    expect(up.seen).toHaveLength(3);
    for (const s of up.seen) expect(s.body.equals(body)).toBe(true);
  });

  it('fingerprints a body in a file for Idempotency-Key: the same body replays, another is 422', async () => {
    const up = await upstream((_req, res, body) => {
      res.statusCode = 201;
      res.end(sha(body));
    });
    const bw = await proxy({
      up,
      limits: 'body_buffer_bytes: 8KiB, max_body_bytes: 2MiB',
      route: ', idempotency: {}',
    });
    const body = randomBytes(400_000);
    const send = (b: Buffer) =>
      request(`${bw.url()}/pay`, { method: 'POST', body: b, headers: { 'idempotency-key': 'k-file-1' } });
    const first = await send(body);
    expect(first.statusCode).toBe(201);
    expect(await first.body.text()).toBe(sha(body));
    const again = await send(body);
    expect(again.statusCode).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(await again.body.text()).toBe(sha(body));
    const other = await send(randomBytes(400_000));
    expect(other.statusCode).toBe(422);
    await other.body.dump();
    expect(up.seen).toHaveLength(1);
  });

  it('removes the file of a body whose client goes away mid-upload, and sends nothing upstream', async () => {
    const up = await upstream((_req, res) => res.end('no'));
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const bw = await proxy({ up, tempDir, limits: 'body_buffer_bytes: 4KiB' });
    const c = rawClient(
      bw.bw.listenerPort('main'),
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n',
    );
    c.socket.write(randomBytes(100_000));
    await until(() => tempFiles(tempDir, 'request').length === 1, 5000, 'the request body file');
    c.socket.destroy();
    await until(() => tempFiles(tempDir, 'request').length === 0, 5000, 'the file to be removed');
    expect(up.connections).toBe(0);
  });

  it('answers 503 problem+json when the temporary directory cannot be made (a file stands in its place), and stays up', async () => {
    const up = await upstream((_req, res, body) => res.end(String(body.length)));
    const parent = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const notADir = join(parent, 'not-a-dir');
    writeFileSync(notADir, 'a file where the temporary directory should be');
    const bw = await proxy({ up, tempDir: notADir, limits: 'body_buffer_bytes: 4KiB' });
    const res = await request(`${bw.url()}/upload`, { method: 'POST', body: Buffer.alloc(50_000, 2) });
    expect(res.statusCode).toBe(503);
    expect(res.headers['content-type']).toBe('application/problem+json');
    const p = (await res.body.json()) as { type: string; detail: string };
    expect(p.type).toBe('urn:breakwater:problem:body-storage-failed');
    expect(p.detail).toContain('ENOTDIR');
    expect(up.connections).toBe(0);
    // Bodies that fit in memory, and requests without a body, are still served.
    const small = await request(`${bw.url()}/small`, { method: 'POST', body: 'hi' });
    expect(small.statusCode).toBe(200);
    expect(await small.body.text()).toBe('2');
    expect(await metrics(bw)).toMatch(/breakwater_temp_file_errors_total\{kind="request"\} 1/);
  });

  it('classes a full disk as no space (507): a write to /dev/full', async () => {
    const temp = new TempFiles(mkdtempSync(join(tmpdir(), 'bw-buf-')));
    const fh = await open('/dev/full', 'w');
    const file = new TempFile(temp, 'request', '/dev/full', fh);
    const err = await file.write([Buffer.alloc(4096)], 0).catch((e: unknown) => e);
    await fh.close().catch(() => undefined);
    expect(err).toBeInstanceOf(TempFileError);
    expect((err as TempFileError).errno).toBe('ENOSPC');
    expect((err as TempFileError).noSpace).toBe(true);
  });

  it('removes, at start-up, only the temporary directories of breakwater processes that are gone', async () => {
    const up = await upstream((_req, res) => res.end('ok'));
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    // A pid that is not running (beyond the kernel's pid_max) and one that is (the test runner's parent).
    const dead = join(tempDir, 'breakwater-4194305-0a1b2c3d');
    const alive = join(tempDir, `breakwater-${process.ppid}-0a1b2c3d`);
    for (const d of [dead, alive]) {
      mkdirSync(d);
      writeFileSync(join(d, 'response-1'), 'left behind');
    }
    writeFileSync(join(tempDir, 'someone-else.txt'), 'not ours');
    mkdirSync(join(tempDir, 'breakwater-notes'));
    const bw = await proxy({ up, tempDir });
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(join(alive, 'response-1'))).toBe(true);
    expect(existsSync(join(tempDir, 'someone-else.txt'))).toBe(true);
    expect(existsSync(join(tempDir, 'breakwater-notes'))).toBe(true);
    expect(bw.logs.some((l) => l.event === 'temp_files_swept')).toBe(true);
  });
});

describe('response buffering', () => {
  it('reads the upstream on while the client is paused: the upstream is done at once, the file goes when the client has it all', async () => {
    const big = randomBytes(32 * 1024 * 1024);
    const up = await upstream((_req, res) => sendLarge(res, big));
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const bw = await proxy({ up, tempDir });
    const c = rawClient(
      bw.bw.listenerPort('main'),
      'GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    // The client reads nothing; the upstream still finishes its response.
    await until(() => up.finished === 1, 10_000, 'the upstream to finish');
    expect(tempFiles(tempDir, 'response').length).toBe(1);
    const r = await drain(c.socket);
    const { status, body } = bodyOf(r.bytes);
    expect(status).toBe(200);
    expect(body.length).toBe(big.length);
    expect(sha(body)).toBe(sha(big));
    await until(() => tempFiles(tempDir).length === 0, 5000, 'the file to be removed');
    const line = bw.logs.find((l) => l.path === '/big');
    expect(line?.response_buffered).toBe('file');
    expect(line?.complete).toBe(true);
  });

  it('gives the bulkhead slot back when the upstream is done, while the slow client still reads the buffered rest', async () => {
    const big = randomBytes(32 * 1024 * 1024);
    const up = await upstream((req, res) => (req.url === '/big' ? sendLarge(res, big) : res.end('next')));
    const bw = await proxy({ up, upstream: ', bulkhead: { max_concurrent: 1 }' });
    const c = rawClient(
      bw.bw.listenerPort('main'),
      'GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    await until(() => up.finished === 1, 10_000, 'the upstream to finish');
    // (The upstream's last bytes may still be on their way to breakwater: a few tries.)
    let answer = '';
    for (let i = 0; i < 50 && answer !== '200 next'; i++) {
      const next = await request(`${bw.url()}/next`);
      answer = `${next.statusCode} ${await next.body.text()}`;
      if (answer !== '200 next') await sleep(100);
    }
    expect(answer).toBe('200 next');
    expect(stillConnected(c.socket)).toBe(true);
    const r = await drain(c.socket);
    expect(sha(bodyOf(r.bytes).body)).toBe(sha(big));
  });

  it('aborts the client, never ends it cleanly, when the upstream fails mid-body after buffering began', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-length': String(20 * 1024 * 1024) });
      const part = Buffer.alloc(64 * 1024, 3);
      let sent = 0;
      const pump = () => {
        while (sent < 4 * 1024 * 1024) {
          sent += part.length;
          if (!res.write(part)) {
            res.once('drain', pump);
            return;
          }
        }
        setTimeout(() => res.socket?.destroy(), 100);
      };
      pump();
    });
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
    const bw = await proxy({ up, tempDir });
    const c = rawClient(bw.bw.listenerPort('main'), 'GET /cut HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => up.aborted === 1, 10_000, 'the upstream to be cut');
    const r = await drain(c.socket);
    const { body } = bodyOf(r.bytes);
    expect(body.length).toBeLessThan(20 * 1024 * 1024);
    await until(() => tempFiles(tempDir).length === 0, 5000, 'the file to be removed');
    const line = bw.logs.find((l) => l.path === '/cut');
    expect(line?.complete).toBe(false);
  });

  it('relays trailers after a buffered chunked body', async () => {
    const big = randomBytes(3 * 1024 * 1024);
    const up = await upstream((_req, res) => {
      res.writeHead(200, { trailer: 'x-sum' });
      res.write(big);
      res.addTrailers({ 'x-sum': sha(big) });
      res.end();
    });
    const bw = await proxy({ up });
    const c = rawClient(
      bw.bw.listenerPort('main'),
      'GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    await until(() => up.finished === 1, 10_000, 'the upstream to finish');
    const raw = (await drain(c.socket)).bytes.toString('latin1');
    expect(raw.toLowerCase()).toContain('transfer-encoding: chunked');
    expect(raw).toMatch(new RegExp(`\r\nx-sum: ${sha(big)}\r\n\r\n$`));
  });

  for (const [name, headers, route] of [
    ['an event stream', { 'content-type': 'text/event-stream' }, ''],
    ['a response with X-Accel-Buffering: no', { 'x-accel-buffering': 'no' }, ''],
    ['a route with response_buffering: false', {}, ', response_buffering: false'],
  ] as const) {
    it(`does not buffer ${name}: the upstream waits for the client`, async () => {
      const big = randomBytes(32 * 1024 * 1024);
      const up = await upstream((_req, res) => sendLarge(res, big, headers));
      const tempDir = mkdtempSync(join(tmpdir(), 'bw-buf-'));
      const bw = await proxy({ up, tempDir, route });
      const c = rawClient(
        bw.bw.listenerPort('main'),
        'GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      );
      await until(() => up.seen.length === 1, 5000, 'the request');
      await sleep(800);
      expect(up.finished).toBe(0);
      expect(tempFiles(tempDir).length).toBe(0);
      const r = await drain(c.socket);
      expect(sha(bodyOf(r.bytes).body)).toBe(sha(big));
      expect(up.finished).toBe(1);
    });
  }
});

describe('the streaming share', () => {
  it('lets request_buffering: false uploads hold at most streaming_connections of the pool; the next waits, then 503', async () => {
    const up = await upstream((_req, res, body) => res.end(String(body.length)));
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - { match: { path_prefix: /slow }, upstream: app, request_buffering: false, timeout: 10s }
      - { upstream: app, request_buffering: false, timeout: 600ms }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], max_connections: 4, streaming_connections: 50% }
`);
    cleanup.push(() => bw.stop());
    const port = bw.bw.listenerPort('main');
    // Two uploads that stream slowly hold the two places (50% of 4 connections).
    const slow = [0, 1].map(() =>
      rawClient(port, 'POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\nab'),
    );
    await until(() => up.open === 2, 5000, 'two upstream connections');
    // A third waits for a place within its attempt timeout, then gets 503 streaming-limit.
    const t0 = performance.now();
    const third = await request(`${bw.url()}/up3`, { method: 'POST', body: 'xyz' });
    const waited = performance.now() - t0;
    expect(third.statusCode).toBe(503);
    expect(third.headers['retry-after']).toBe('1');
    expect(((await third.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:streaming-limit',
    );
    expect(waited).toBeGreaterThanOrEqual(500);
    // A buffered request (no body or a buffered one) is not held back by the share.
    const normal = await request(`${bw.url()}/get`);
    expect(normal.statusCode).toBe(200);
    await normal.body.dump();
    // A waiting upload gets the place when one ends.
    const fourth = request(`${bw.url()}/up4`, { method: 'POST', body: 'four' });
    await sleep(100);
    slow[0]?.socket.write('x'.repeat(98));
    const r4 = await fourth;
    expect(r4.statusCode).toBe(200);
    expect(await r4.body.text()).toBe('4');
    expect(await metrics(bw)).toMatch(
      /breakwater_upstream_attempts_total\{upstream="app",outcome="streaming_limit"\} 1/,
    );
    for (const s of slow) s.socket.destroy();
  });

  it('refuses an event stream with 503 when the share is in use, and buffers an opted-out response instead', async () => {
    const up = await upstream((req, res) => {
      if (req.url === '/sse') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: hello\n\n');
        return; // an endless stream
      }
      sendLarge(res, Buffer.alloc(4 * 1024 * 1024, 5), { 'x-accel-buffering': 'no' });
    });
    const bw = await proxy({ up, upstream: ', max_connections: 2, streaming_connections: 50%' });
    const port = bw.bw.listenerPort('main');
    const first = rawClient(port, 'GET /sse HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => up.seen.length === 1, 5000, 'the first stream');
    await sleep(100);
    const second = await request(`${bw.url()}/sse`);
    expect(second.statusCode).toBe(503);
    expect(((await second.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:streaming-limit',
    );
    // The opt-out header is a hint: with the share in use, the response is buffered and the upstream freed.
    const c = rawClient(port, 'GET /optout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await until(() => up.finished === 1, 10_000, 'the opted-out response to be read whole');
    expect(bodyOf((await drain(c.socket)).bytes).body.length).toBe(4 * 1024 * 1024);
    first.socket.destroy();
  });
});

describe('send_timeout', () => {
  it('disconnects a client that stops reading and aborts its upstream request; counted and logged', async () => {
    // An endless response: the upstream writes as long as it may.
    let stopped = false;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const part = Buffer.alloc(64 * 1024, 9);
      const pump = () => {
        while (!res.destroyed) if (!res.write(part)) return void res.once('drain', pump);
      };
      res.on('close', () => {
        stopped = true;
      });
      pump();
    });
    const bw = await proxy({
      up,
      limits: 'send_timeout: 500ms',
      buffering: ', response_buffer_bytes: 64KiB, max_temp_file_bytes: 1MiB',
    });
    const c = rawClient(bw.bw.listenerPort('main'), 'GET /endless HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => up.seen.length === 1, 5000, 'the request');
    const t0 = performance.now();
    // (A paused socket does not see its connection close: breakwater's access log says when it did.)
    await until(() => bw.logs.some((l) => l.path === '/endless'), 10_000, 'the client to be cut');
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(400);
    expect(took).toBeLessThan(5000);
    await until(() => stopped, 5000, 'the upstream request to be aborted');
    expect(up.aborted).toBe(1);
    const r = await drain(c.socket);
    expect(r.bytes.length).toBeGreaterThan(0);
    expect(await metrics(bw)).toMatch(/breakwater_send_timeouts_total\{listener="main"\} 1/);
    const line = bw.logs.find((l) => l.path === '/endless');
    expect(line?.close_reason).toBe('send_timeout');
    expect(line?.complete).toBe(false);
  });

  it('does not cut a client that keeps reading, however slow the upstream is', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200);
      let n = 0;
      const t = setInterval(() => {
        res.write('tick\n');
        if (++n === 8) {
          clearInterval(t);
          res.end();
        }
      }, 150);
    });
    const bw = await proxy({ up, limits: 'send_timeout: 300ms' });
    const res = await request(`${bw.url()}/slow-upstream`);
    expect(await res.body.text()).toBe('tick\n'.repeat(8));
  });
});
