/**
 * Slow readers cannot take the upstream's connections (issue 21 item 2): 140 clients that read
 * 10 MB responses a few bytes at a time, beside normal traffic, through a breakwater process
 * (`dist/cli.js`, so its memory is its own) whose upstream has 16 connections.
 *
 * The responses are buffered (a little memory, then temporary files), so the upstream finishes
 * every one at its own speed and its connections go back to the pool: normal requests keep their
 * latency, the pool is never exhausted, breakwater's memory stays far below what passes through,
 * and the temporary files go when their clients do.
 */
import { mkdtempSync, readdirSync } from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, spawnBreakwater, waitFor } from '../kit/process.js';

const READERS = 140;
const SIZE = 10 * 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function responseFiles(root: string): number {
  let n = 0;
  for (const d of readdirSync(root)) {
    if (!d.startsWith('breakwater-')) continue;
    try {
      n += readdirSync(join(root, d)).filter((f) => f.startsWith('response-')).length;
    } catch {
      // removed meanwhile
    }
  }
  return n;
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

describe('slow readers', () => {
  const cleanup: (() => void | Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  it(`${READERS} clients reading ${SIZE / 1024 / 1024} MB a few bytes at a time hold no upstream connection; normal requests keep their latency`, async () => {
    const big = Buffer.alloc(SIZE, 'z');
    const state = { open: 0, maxOpen: 0, bigActive: 0, bigFinished: 0 };
    const upstream = http.createServer((req, res) => {
      if (req.url !== '/big') {
        res.end('ok');
        return;
      }
      state.bigActive++;
      res.on('close', () => {
        state.bigActive--;
        if (res.writableFinished) state.bigFinished++;
      });
      res.writeHead(200, { 'content-length': String(SIZE), 'content-type': 'application/octet-stream' });
      let at = 0;
      const pump = () => {
        while (at < SIZE) {
          const part = big.subarray(at, at + 64 * 1024);
          at += part.length;
          if (!res.write(part)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    upstream.on('connection', (s) => {
      state.open++;
      state.maxOpen = Math.max(state.maxOpen, state.open);
      s.on('close', () => state.open--);
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    cleanup.push(
      () =>
        new Promise<void>((r) => {
          upstream.closeAllConnections();
          upstream.close(() => r());
        }),
    );
    const upUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    const tempDir = mkdtempSync(join(tmpdir(), 'bw-slow-readers-'));
    const [port, admin] = [await freePort(), await freePort()];
    const child = spawnBreakwater(`
listeners:
  - name: main
    port: ${port}
    routes: [{ upstream: app }]
admin: { port: ${admin} }
upstreams:
  app: { endpoints: ["${upUrl}"], max_connections: 16, timeout: 60s, request_timeout: 60s }
buffering: { temp_dir: "${tempDir}" }
logging: { level: warn, access_log: false }
`);
    cleanup.push(() => child.kill('SIGKILL'));
    await waitFor(`http://127.0.0.1:${admin}/health/ready`);
    const base = `http://127.0.0.1:${port}`;
    const agent = new Agent({ connections: 8 });
    cleanup.push(() => agent.close());

    /** `n` sequential GET /normal per worker; latencies in ms, and any status but 200. */
    const normal = async (workers: number, n: number) => {
      const latencies: number[] = [];
      const failures: number[] = [];
      await Promise.all(
        Array.from({ length: workers }, async () => {
          for (let i = 0; i < n; i++) {
            const t0 = performance.now();
            const res = await request(`${base}/normal`, { dispatcher: agent });
            await res.body.dump();
            latencies.push(performance.now() - t0);
            if (res.statusCode !== 200) failures.push(res.statusCode);
            await sleep(20);
          }
        }),
      );
      return { latencies, failures };
    };

    await normal(2, 10); // warm-up: connections, JIT
    const unloaded = await normal(4, 40);
    expect(unloaded.failures).toEqual([]);

    // The slow readers: each reads 16 bytes every 200 ms.
    const readers: net.Socket[] = [];
    for (let i = 0; i < READERS; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => undefined);
      s.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
      s.pause();
      readers.push(s);
    }
    const sip = setInterval(() => {
      for (const s of readers) s.read(16);
    }, 200);
    cleanup.push(() => {
      clearInterval(sip);
      for (const s of readers) s.destroy();
    });

    // While the upstream's responses stream in (1.4 GB through 16 connections, at the upstream's
    // speed), normal requests queue for a connection with them: they are all served.
    const ingest = normal(2, 20);
    // Every big response reaches the upstream and is read whole at the upstream's speed...
    await until(
      () => state.bigFinished === READERS,
      120_000,
      'every big response to be read from the upstream',
    );
    const during = await ingest;
    // ...while every reader is still reading, slowly: what it has not read is in a temporary file.
    expect(readers.filter((s) => s.destroyed).length).toBe(0);
    expect(state.bigActive).toBe(0);
    expect(state.maxOpen).toBeLessThanOrEqual(16);
    expect(responseFiles(tempDir)).toBe(READERS);
    // The attack goes on (140 readers sipping): normal requests keep their latency.
    const loaded = await normal(4, 40);
    expect(readers.filter((s) => s.destroyed).length).toBe(0);
    const peak = await child.peakRss();

    const p99 = (xs: number[]) => quantile(xs, 0.99);
    const summary = {
      unloaded_p50: quantile(unloaded.latencies, 0.5).toFixed(1),
      unloaded_p99: p99(unloaded.latencies).toFixed(1),
      during_ingest_p50: quantile(during.latencies, 0.5).toFixed(1),
      during_ingest_max: Math.max(...during.latencies).toFixed(1),
      loaded_p50: quantile(loaded.latencies, 0.5).toFixed(1),
      loaded_p99: p99(loaded.latencies).toFixed(1),
      peak_rss_mb: (peak / 1024 / 1024).toFixed(0),
      upstream_max_open: state.maxOpen,
    };
    console.log(`slow readers: ${JSON.stringify(summary)}`);
    expect(during.failures).toEqual([]);
    expect(loaded.failures).toEqual([]);
    expect(p99(loaded.latencies)).toBeLessThan(p99(unloaded.latencies) + 100);
    // 1.4 GB went through; breakwater held a small part of it in memory.
    expect(peak).toBeLessThan(400 * 1024 * 1024);

    // The readers leave: their files go with them.
    clearInterval(sip);
    for (const s of readers) s.destroy();
    await until(() => responseFiles(tempDir) === 0, 15_000, 'the temporary files to be removed');
    child.kill('SIGTERM');
    expect(await child.exited).toBe(0);
  }, 180_000);
});
