/**
 * Slow and stalled clients: a body that stops arriving is 408 (and its upstream request aborted), a
 * slow upstream is not mistaken for a slow client, and a flood of slowloris and slow-POST
 * connections leaves breakwater serving everyone else without touching the upstream's pool.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';

interface CountingUpstream {
  readonly url: string;
  /** TCP connections ever accepted, and open now. */
  connections: number;
  open: number;
  maxOpen: number;
  /** Requests whose body ended, and requests whose body was cut off. */
  completed: number;
  aborted: number;
  close(): Promise<void>;
}

/** An upstream that reads each body whole (after `readDelayMs`), then answers 200 with its size. */
async function countingUpstream(readDelayMs = 0): Promise<CountingUpstream> {
  const server = http.createServer((req, res) => {
    let size = 0;
    const read = () => {
      req.on('data', (c: Buffer) => {
        size += c.length;
      });
      req.on('end', () => {
        state.completed++;
        res.end(String(size));
      });
      req.resume();
    };
    req.on('close', () => {
      if (!req.complete) state.aborted++;
    });
    if (readDelayMs > 0) {
      req.pause();
      setTimeout(read, readDelayMs);
    } else read();
  });
  server.on('connection', (socket) => {
    state.connections++;
    state.open++;
    state.maxOpen = Math.max(state.maxOpen, state.open);
    socket.on('close', () => {
      state.open--;
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const state: CountingUpstream = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: 0,
    open: 0,
    maxOpen: 0,
    completed: 0,
    aborted: 0,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  return state;
}

/** A raw connection that collects what it is sent and notes when it is closed. */
function rawConnection(port: number): { socket: net.Socket; text: () => string; closed: Promise<void> } {
  const socket = net.connect(port, '127.0.0.1');
  let text = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => {
    text += d;
  });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  return { socket, text: () => text, closed };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('slow clients', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function proxy(
    up: CountingUpstream,
    limits: string,
    upstreamExtra = '',
    routeExtra = '',
  ): Promise<Running> {
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    limits: { ${limits} }
    routes: [{ upstream: app ${routeExtra} }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], max_connections: 8 ${upstreamExtra} }
logging: { level: warn }
`);
    cleanup.push(() => bw.stop());
    return bw;
  }

  it('answers 408 to a small body that stops arriving, and sends nothing upstream', async () => {
    const up = await countingUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up, 'body_idle_timeout: 300ms');
    const c = rawConnection(bw.bw.listenerPort('main'));
    c.socket.write('POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789');
    const t0 = performance.now();
    await c.closed;
    const waited = performance.now() - t0;
    expect(c.text()).toMatch(/^HTTP\/1.1 408 /);
    expect(c.text()).toContain('urn:breakwater:problem:body-timeout');
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(up.connections).toBe(0);
  });

  it('answers 408 to a streamed body that stalls, and aborts its upstream request', async () => {
    const up = await countingUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(
      up,
      'body_idle_timeout: 300ms, max_body_bytes: 1MiB',
      '',
      ', request_buffering: false',
    );
    const c = rawConnection(bw.bw.listenerPort('main'));
    // request_buffering: false: it streams to the upstream as it arrives.
    c.socket.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n');
    c.socket.write(Buffer.alloc(100_000, 'a'));
    await c.closed;
    expect(c.text()).toMatch(/^HTTP\/1.1 408 /);
    for (let i = 0; i < 20 && up.aborted === 0; i++) await sleep(50);
    expect(up.aborted).toBe(1);
    expect(up.completed).toBe(0);
    // Its upstream connection went with it; the next request is served.
    const next = await request(`${bw.url()}/next`, { method: 'POST', body: 'x' });
    expect(next.statusCode).toBe(200);
    expect(await next.body.text()).toBe('1');
  });

  it('does not take an upstream that reads slowly for a client that sends slowly', async () => {
    // The upstream does not read for 800 ms; the client sent everything at once.
    const up = await countingUpstream(800);
    cleanup.push(() => up.close());
    const bw = await proxy(up, 'body_idle_timeout: 300ms, max_body_bytes: 8MiB');
    const body = Buffer.alloc(4 * 1024 * 1024, 'b');
    const res = await request(`${bw.url()}/upload`, { method: 'PUT', body });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(String(body.length));
  });

  it('holds 150 slow 100 KB uploads, 150 slow 900 KB uploads and 200 slowloris connections away from the upstream until their bodies are whole; normal requests keep their latency', async () => {
    const up = await countingUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(up, 'header_timeout: 30s, body_idle_timeout: 30s, max_body_bytes: 1MiB');
    const port = bw.bw.listenerPort('main');
    const normal = async (workers: number, n: number) => {
      const latencies: number[] = [];
      let failed = 0;
      await Promise.all(
        Array.from({ length: workers }, async () => {
          for (let i = 0; i < n; i++) {
            const t0 = performance.now();
            const res = await request(`${bw.url()}/normal`, {
              method: i % 2 ? 'GET' : 'POST',
              body: i % 2 ? null : 'hi',
            });
            await res.body.dump();
            latencies.push(performance.now() - t0);
            if (res.statusCode !== 200) failed++;
            await sleep(20);
          }
        }),
      );
      return { latencies, failed };
    };
    const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(0.99 * (xs.length - 1))] as number;
    await normal(2, 10); // warm-up
    const unloaded = await normal(4, 30);
    const served = up.completed;

    const uploads: { c: ReturnType<typeof rawConnection>; size: number; sent: number; done: boolean }[] = [];
    const loris: ReturnType<typeof rawConnection>[] = [];
    for (let i = 0; i < 150; i++) {
      for (const size of [100_000, 900_000]) {
        const c = rawConnection(port);
        c.socket.write(
          `POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${size}\r\nConnection: close\r\n\r\nx`,
        );
        uploads.push({ c, size, sent: 1, done: false });
      }
    }
    for (let i = 0; i < 200; i++) {
      const c = rawConnection(port);
      c.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n');
      loris.push(c);
    }
    // One byte a second from each.
    const drip = setInterval(() => {
      for (const u of uploads)
        if (!u.done && !u.c.socket.destroyed) {
          u.c.socket.write('x');
          u.sent++;
        }
      for (const l of loris) if (!l.socket.destroyed) l.socket.write('X');
    }, 1000);
    try {
      await sleep(500);
      const loaded = await normal(4, 30);
      expect(loaded.failed).toBe(0);
      expect(p99(loaded.latencies)).toBeLessThan(p99(unloaded.latencies) + 100);
      console.log(
        `slow uploads: unloaded p99 ${p99(unloaded.latencies).toFixed(1)} ms, loaded p99 ${p99(loaded.latencies).toFixed(1)} ms`,
      );
      // The upstream saw only the normal requests, on its few connections.
      expect(up.completed).toBe(served + 120);
      expect(up.aborted).toBe(0);
      expect(up.maxOpen).toBeLessThanOrEqual(8);
      // Five of each finish their bodies at once: only now do they reach the upstream, whole.
      const finishing = [
        ...uploads.filter((u) => u.size === 100_000).slice(0, 5),
        ...uploads.filter((u) => u.size === 900_000).slice(0, 5),
      ];
      for (const u of finishing) {
        u.done = true;
        u.c.socket.write(Buffer.alloc(u.size - u.sent, 'y'));
      }
      await Promise.all(finishing.map((u) => u.c.closed));
      for (const u of finishing) {
        expect(u.c.text()).toMatch(/^HTTP\/1.1 200 /);
        expect(u.c.text().endsWith(`\r\n\r\n${u.size}`)).toBe(true);
      }
      expect(up.completed).toBe(served + 130);
      expect(up.aborted).toBe(0);
    } finally {
      clearInterval(drip);
      for (const c of [...uploads.map((u) => u.c), ...loris]) c.socket.destroy();
    }
  }, 60_000);

  it('keeps serving normal clients through 300 slowloris and 300 slow-POST connections', async () => {
    const up = await countingUpstream();
    cleanup.push(() => up.close());
    const bw = await proxy(
      up,
      'header_timeout: 10s, body_idle_timeout: 10s',
      ', timeout: 1s, request_timeout: 2s, bulkhead: { max_concurrent: 20 }',
    );
    const port = bw.bw.listenerPort('main');
    const attackers: ReturnType<typeof rawConnection>[] = [];
    const slowPosts: ReturnType<typeof rawConnection>[] = [];
    for (let i = 0; i < 300; i++) {
      const loris = rawConnection(port);
      loris.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n');
      attackers.push(loris);
      const post = rawConnection(port);
      post.socket.write('POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n');
      slowPosts.push(post);
    }
    // Every 300 ms each attacker sends one more byte: never idle, never done.
    const drip = setInterval(() => {
      for (const a of attackers) if (!a.socket.destroyed) a.socket.write('X');
      for (const p of slowPosts) if (!p.socket.destroyed) p.socket.write('x');
    }, 300);
    try {
      await sleep(300);
      // Normal clients meanwhile: 200 requests, 10 at a time, for about 2.5 s.
      let ok = 0;
      let failed = 0;
      const worker = async () => {
        for (let i = 0; i < 20; i++) {
          const res = await request(`${bw.url()}/normal`, {
            method: i % 2 ? 'GET' : 'POST',
            body: i % 2 ? null : 'hi',
          });
          await res.body.dump();
          if (res.statusCode === 200) ok++;
          else failed++;
          await sleep(100);
        }
      };
      await Promise.all(Array.from({ length: 10 }, worker));
      expect(failed).toBe(0);
      expect(ok).toBe(200);
      // The slow POSTs were answered 408 at the route's request_timeout (2 s) and closed.
      await Promise.all(slowPosts.map((p) => p.closed));
      expect(slowPosts.every((p) => /^HTTP\/1.1 408 /.test(p.text()))).toBe(true);
      // None of them reached the upstream: it saw only the normal requests, on a few connections.
      expect(up.completed).toBe(200);
      expect(up.aborted).toBe(0);
      expect(up.maxOpen).toBeLessThanOrEqual(8);
      // The slowloris connections are still held open, harmlessly, until header_timeout.
      expect(attackers.filter((a) => !a.socket.destroyed).length).toBe(300);
    } finally {
      clearInterval(drip);
      for (const a of [...attackers, ...slowPosts]) a.socket.destroy();
    }
  });
});
