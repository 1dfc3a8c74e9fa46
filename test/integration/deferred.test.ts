import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { startDedupUpstream } from '../kit/dedup-upstream.js';
import { type Child, freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { until } from '../kit/until.js';

/**
 * Deferred delivery end to end, with breakwater as users run it (dist/cli.js in a child process),
 * killed with SIGKILL where the issue says, and an upstream that deduplicates by Idempotency-Key.
 */

interface Setup {
  readonly port: number;
  readonly admin: number;
  readonly upPort: number;
  readonly dataDir: string;
}

async function setup(): Promise<Setup> {
  return {
    port: await freePort(),
    admin: await freePort(),
    upPort: await freePort(),
    dataDir: mkdtempSync(join(tmpdir(), 'bw-deferred-')),
  };
}

function config(s: Setup, extra = '', schedule = '[50ms, 100ms]'): string {
  return `
listeners:
  - name: main
    port: ${s.port}
    routes:
      - name: orders
        upstream: orders
        deferred:
          schedule: ${schedule}
          ordering_key: x-customer
admin:
  port: ${s.admin}
upstreams:
  orders:
    endpoints: [http://127.0.0.1:${s.upPort}]
    connect_timeout: 200ms
data_dir: ${s.dataDir}
logging: { level: info, access_log: false }
${extra}
`;
}

async function start(yaml: string, admin: number): Promise<Child> {
  const child = spawnBreakwater(yaml);
  try {
    await waitFor(`http://127.0.0.1:${admin}/health/ready`, 200, 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(
      `${(err as Error).message}\n${child.stderr.join('')}\n${child.stdout.slice(-20).join('\n')}`,
    );
  }
  return child;
}

async function stop(child: Child): Promise<void> {
  child.kill('SIGTERM');
  await child.exited;
}

function post(port: number, key: string, customer: string, body = `{"order":"${key}"}`) {
  return fetch(`http://127.0.0.1:${port}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key, 'x-customer': customer },
    body,
  });
}

async function items(
  admin: number,
  query: string,
): Promise<{ id: string; status: string; idempotency_key: string }[]> {
  const r = await fetch(`http://127.0.0.1:${admin}/deferred?${query}&limit=1000`);
  expect(r.status).toBe(200);
  return ((await r.json()) as { items: { id: string; status: string; idempotency_key: string }[] }).items;
}

describe('deferred delivery', () => {
  it('200 keyed POSTs to a down upstream get 202; SIGKILL mid-delivery and a restart deliver each key exactly once, in order per ordering key', async () => {
    const s = await setup();
    const yaml = config(s);
    let child = await start(yaml, s.admin);
    const customers = 20;
    const perCustomer = 10;
    const sent = new Map<string, string[]>();
    const t0 = performance.now();
    // Each customer's requests one after the other (their order is defined); customers at once.
    await Promise.all(
      Array.from({ length: customers }, async (_, c) => {
        const list: string[] = [];
        sent.set(`c-${c}`, list);
        for (let i = 0; i < perCustomer; i++) {
          const key = `k-${c}-${i}`;
          const r = await post(s.port, key, `c-${c}`);
          const body = (await r.json()) as { id: string; status: string; location: string };
          expect(r.status).toBe(202);
          expect(body.status).toBe('pending');
          expect(r.headers.get('location')).toBe(`http://127.0.0.1:${s.admin}/deferred/${body.id}`);
          list.push(key);
        }
      }),
    );
    const acceptMs = performance.now() - t0;
    // The client can poll its item.
    const one = (await (await post(s.port, 'k-0-0', 'c-0')).json()) as { id: string; location: string };
    const polled = await fetch(one.location);
    expect(polled.status).toBe(200);
    expect(((await polled.json()) as { idempotency_key: string }).idempotency_key).toBe('k-0-0');

    const up = await startDedupUpstream(s.upPort, { orderingHeader: 'x-customer', delayMs: 20 });
    try {
      const t1 = performance.now();
      await until(() => up.processed.size >= 40, 'deliveries under way', 30_000);
      child.kill('SIGKILL');
      await child.exited;
      const beforeKill = up.processed.size;
      expect(beforeKill).toBeLessThan(customers * perCustomer);
      child = await start(yaml, s.admin);
      await until(() => up.processed.size === customers * perCustomer, 'every key delivered', 60_000);
      const deliverMs = performance.now() - t1;
      for (const [key, n] of up.processed) expect(n, key).toBe(1);
      for (const [customer, keys] of sent) expect(up.order.get(customer), customer).toEqual(keys);
      await until(
        async () => (await items(s.admin, 'status=synced')).length === customers * perCustomer,
        'all synced',
        30_000,
      );
      expect(await items(s.admin, 'status=pending')).toEqual([]);
      console.log(
        `deferred: accepted 200 in ${Math.round(acceptMs)} ms; delivered 200 in ${Math.round(deliverMs)} ms (SIGKILL after ${beforeKill}, upstream 20 ms per request); ${up.received()} deliveries for 200 keys`,
      );
    } finally {
      await stop(child);
      await up.close();
    }
  }, 120_000);

  it('a request the upstream always answers 400 ends failed at its first answer without delaying other keys', async () => {
    const s = await setup();
    const yaml = config(s);
    const child = await start(yaml, s.admin);
    try {
      expect((await post(s.port, 'poison', 'c-1')).status).toBe(202);
      expect((await post(s.port, 'after-poison', 'c-1')).status).toBe(202);
      for (let i = 0; i < 10; i++) expect((await post(s.port, `other-${i}`, `o-${i}`)).status).toBe(202);
      const up = await startDedupUpstream(s.upPort, {
        orderingHeader: 'x-customer',
        poison: new Set(['poison']),
      });
      try {
        await until(() => up.processed.size === 11, 'the other keys delivered', 30_000);
        // The item queued behind the poison one on the same ordering key went through too.
        expect(up.order.get('c-1')).toEqual(['after-poison']);
        const failed = await items(s.admin, 'status=failed');
        expect(failed.map((i) => i.idempotency_key)).toEqual(['poison']);
        const detail = (await (
          await fetch(`http://127.0.0.1:${s.admin}/deferred/${failed[0]?.id}`)
        ).json()) as {
          history: { status: number | null }[];
          last_answer: string;
        };
        // (Attempts while the upstream was down count too; the first answer, a 400, ended it.)
        expect(detail.history.filter((h) => h.status !== null).map((h) => h.status)).toEqual([400]);
        expect(detail.history.at(-1)?.status).toBe(400);
        expect(detail.last_answer).toContain('invalid order');
        expect(up.seen.get('poison')).toBe(1);
        const metrics = await (await fetch(`http://127.0.0.1:${s.admin}/metrics`)).text();
        expect(metrics).toMatch(/breakwater_deferred_items\{state="failed"\} 1/);
        expect(metrics).toMatch(
          /breakwater_deferred_deliveries_total\{upstream="orders",outcome="failed"\} 1/,
        );
        expect(metrics).toMatch(/breakwater_deferred_enqueued_total\{route="orders",upstream="orders"\} 12/);
      } finally {
        await up.close();
      }
    } finally {
      await stop(child);
    }
  }, 60_000);

  it('a full store answers 503 deferred-store-full and loses nothing it accepted', async () => {
    const s = await setup();
    const yaml = config(s, 'deferred_store: { max_items: 5 }');
    const child = await start(yaml, s.admin);
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const r = await post(s.port, `full-${i}`, `c-${i}`);
        statuses.push(r.status);
        if (r.status === 503) {
          expect(r.headers.get('content-type')).toBe('application/problem+json');
          const p = (await r.json()) as { type: string; detail: string };
          expect(p.type).toBe('urn:breakwater:problem:deferred-store-full');
          expect(p.detail).toContain('max_items');
        } else await r.arrayBuffer();
      }
      expect(statuses).toEqual([202, 202, 202, 202, 202, 503, 503, 503]);
      const up = await startDedupUpstream(s.upPort);
      try {
        await until(() => up.processed.size === 5, 'the accepted five delivered', 30_000);
        expect([...up.processed.keys()].sort()).toEqual(['full-0', 'full-1', 'full-2', 'full-3', 'full-4']);
        await until(async () => (await items(s.admin, 'status=synced')).length === 5, 'synced', 10_000);
      } finally {
        await up.close();
      }
    } finally {
      await stop(child);
    }
  }, 60_000);

  it('SIGKILL right after a 202 loses no accepted item (the store is written with fsync before the answer)', async () => {
    const s = await setup();
    const yaml = config(s);
    const child = await start(yaml, s.admin);
    const accepted: string[] = [];
    let killed = false;
    // 60 at once; breakwater dies the moment the 20th 202 arrives, with others in flight.
    await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        try {
          const r = await post(s.port, `cut-${i}`, `c-${i}`);
          if (r.status === 202) {
            accepted.push(`cut-${i}`);
            if (accepted.length === 20 && !killed) {
              killed = true;
              child.kill('SIGKILL');
            }
          }
          await r.arrayBuffer().catch(() => undefined);
        } catch {
          // cut off by the kill: never acknowledged
        }
      }),
    );
    await child.exited;
    expect(accepted.length).toBeGreaterThanOrEqual(20);
    const up = await startDedupUpstream(s.upPort);
    const again = await start(yaml, s.admin);
    try {
      await until(
        () => accepted.every((k) => up.processed.has(k)),
        'every acknowledged request delivered',
        30_000,
      );
    } finally {
      await stop(again);
      await up.close();
    }
  }, 60_000);

  it('admin API: list with filters, get, cancel, replay, bulk by filter; errors as admin problems', async () => {
    const s = await setup();
    // Items stay pending (the first try is 10 minutes away) until replayed.
    const child = await start(config(s, '', '[10m]'), s.admin);
    const api = (path: string, method = 'GET', body?: string) =>
      fetch(`http://127.0.0.1:${s.admin}${path}`, { method, ...(body === undefined ? {} : { body }) });
    try {
      const ids: string[] = [];
      for (const k of ['a', 'b', 'c']) {
        const r = await post(s.port, `adm-${k}`, `c-${k}`);
        expect(r.status).toBe(202);
        ids.push(((await r.json()) as { id: string }).id);
      }
      expect((await items(s.admin, 'status=pending')).map((i) => i.idempotency_key)).toEqual([
        'adm-a',
        'adm-b',
        'adm-c',
      ]);
      expect(await items(s.admin, 'status=pending&upstream=nope')).toEqual([]);
      expect(await items(s.admin, 'older_than=1h')).toEqual([]);
      const cancel = await api(`/deferred/${ids[0]}/cancel`, 'POST');
      expect(cancel.status).toBe(200);
      expect(((await cancel.json()) as { status: string }).status).toBe('cancelled');
      const again = await api(`/deferred/${ids[0]}/cancel`, 'POST');
      expect(again.status).toBe(409);
      expect(((await again.json()) as { type: string }).type).toBe('urn:breakwater:problem:admin-conflict');
      const replay = await api(`/deferred/${ids[0]}/replay`, 'POST');
      expect(((await replay.json()) as { status: string }).status).toBe('pending');
      // The replayed item is tried at once (the upstream is down) and waits for its next try.
      await until(
        async () => {
          const i = (await (await api(`/deferred/${ids[0]}`)).json()) as {
            status: string;
            history: unknown[];
          };
          return i.status === 'pending' && i.history.length === 1;
        },
        'the replayed item tried',
        10_000,
      );
      const bare = await api('/deferred/cancel', 'POST', '{}');
      expect(bare.status).toBe(400);
      await bare.arrayBuffer();
      const bulk = await api('/deferred/cancel', 'POST', '{"status": "pending"}');
      expect(await bulk.json()).toEqual({ matched: 3, changed: 3 });
      expect((await api('/deferred?status=bogus')).status).toBe(400);
      const missing = await api('/deferred/no-such-id');
      expect(missing.status).toBe(404);
      expect(((await missing.json()) as { type: string }).type).toBe(
        'urn:breakwater:problem:admin-not-found',
      );
      const up = await startDedupUpstream(s.upPort);
      try {
        // Cancelled items are not delivered...
        await new Promise((r) => setTimeout(r, 500));
        expect(up.received()).toBe(0);
        // ...until replayed.
        expect(await (await api('/deferred/replay', 'POST', '{"status": "cancelled"}')).json()).toEqual({
          matched: 3,
          changed: 3,
        });
        await until(() => up.processed.size === 3, 'replayed items delivered', 30_000);
        await until(async () => (await items(s.admin, 'status=synced')).length === 3, 'synced', 10_000);
        const synced = await api(`/deferred/${ids[1]}/replay`, 'POST');
        expect(synced.status).toBe(409);
        await synced.arrayBuffer();
      } finally {
        await up.close();
      }
    } finally {
      await stop(child);
    }
  }, 60_000);

  it('SIGTERM during a delivery puts the item back to pending; the next start delivers it', async () => {
    const s = await setup();
    const yaml = config(s, 'shutdown: { drain_timeout: 300ms }');
    const child = await start(yaml, s.admin);
    expect((await post(s.port, 'slow-1', 'c-1')).status).toBe(202);
    const slow = await startDedupUpstream(s.upPort, { delayMs: 5_000 });
    try {
      await until(() => slow.seen.has('slow-1'), 'delivery started', 10_000);
      child.kill('SIGTERM');
      expect(await child.exited).toBe(0);
    } finally {
      await slow.close();
    }
    const lines = child.stdout.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(
      lines.some((l) => l.event === 'deferred_state' && l.from === 'delivering' && l.to === 'pending'),
    ).toBe(true);
    const up = await startDedupUpstream(s.upPort);
    const again = await start(yaml, s.admin);
    try {
      await until(() => up.processed.has('slow-1'), 'delivered after the restart', 30_000);
    } finally {
      await stop(again);
      await up.close();
    }
  }, 60_000);

  it("deferred wins over the route's fallback for the writes it covers; other requests get the fallback", async () => {
    const s = await setup();
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - name: orders
        upstream: orders
        deferred: { schedule: [10m] }
admin: { port: 0 }
upstreams:
  orders:
    endpoints: [http://127.0.0.1:${s.upPort}]
    fallback: { type: static_response, status: 200, body: "from the fallback" }
data_dir: ${s.dataDir}
`);
    try {
      const write = await fetch(`${bw.url()}/orders`, {
        method: 'POST',
        headers: { 'idempotency-key': 'fb-1' },
        body: 'x',
      });
      expect(write.status).toBe(202);
      expect(write.headers.get('x-breakwater-fallback')).toBeNull();
      expect(((await write.json()) as { status: string }).status).toBe('pending');
      const read = await fetch(`${bw.url()}/orders`);
      expect(read.status).toBe(200);
      expect(await read.text()).toBe('from the fallback');
      // Without an Idempotency-Key (require_idempotency_key: true) a write is not deferred.
      const unkeyed = await fetch(`${bw.url()}/orders`, { method: 'POST', body: 'x' });
      expect(await unkeyed.text()).toBe('from the fallback');
      const state = (await (await fetch(`${bw.adminUrl}/state`)).json()) as {
        deferred: { upstreams: Record<string, { pending: number }> };
      };
      expect(state.deferred.upstreams.orders?.pending).toBe(1);
    } finally {
      await bw.stop();
    }
  });

  it('a config without deferred never opens the store (data_dir is not made)', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'bw-nodefer-')), 'data');
    const bw = await startBreakwater(`
listeners:
  - { name: main, port: 0, routes: [{ upstream: app }] }
admin: { port: 0 }
upstreams:
  app: { endpoints: [http://127.0.0.1:1] }
data_dir: ${dir}
`);
    try {
      const r = await fetch(`${bw.adminUrl}/deferred`);
      expect(r.status).toBe(404);
      expect(((await r.json()) as { detail: string }).detail).toContain('deferred delivery is off');
      expect(existsSync(dir)).toBe(false);
    } finally {
      await bw.stop();
    }
  });

  it('a reload that adds deferred opens the store; one that moves data_dir keeps it and warns', async () => {
    const s = await setup();
    const dir2 = join(mkdtempSync(join(tmpdir(), 'bw-moved-')), 'data');
    const yaml = (deferred: boolean, dataDir: string) => `
listeners:
  - name: main
    port: 0
    routes:
      - name: orders
        upstream: orders
${deferred ? '        deferred: { schedule: [10m] }' : ''}
admin: { port: 0 }
upstreams:
  orders: { endpoints: [http://127.0.0.1:${s.upPort}] }
data_dir: ${dataDir}
`;
    const bw = await startBreakwater(yaml(false, s.dataDir));
    try {
      expect((await fetch(`${bw.adminUrl}/deferred`)).status).toBe(404);
      writeFileSync(bw.bw.config.file, yaml(true, s.dataDir));
      expect((await bw.bw.reload('test')).ok).toBe(true);
      const r = await fetch(`${bw.url()}/orders`, {
        method: 'POST',
        headers: { 'idempotency-key': 'rl-1' },
        body: 'x',
      });
      expect(r.status).toBe(202);
      await r.arrayBuffer();
      writeFileSync(bw.bw.config.file, yaml(true, dir2));
      expect((await bw.bw.reload('test')).ok).toBe(true);
      expect(bw.logs.some((l) => l.event === 'data_dir_changed')).toBe(true);
      expect(existsSync(dir2)).toBe(false);
      expect((await items(bw.bw.admin?.port ?? 0, 'status=pending')).map((i) => i.idempotency_key)).toEqual([
        'rl-1',
      ]);
    } finally {
      await bw.stop();
    }
  });

  it('an item not delivered within max_age ends expired; one out of max_attempts ends failed', async () => {
    const s = await setup();
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - name: short
        match: { path_prefix: /short }
        upstream: orders
        deferred: { schedule: [100ms], max_age: 400ms }
      - name: counted
        upstream: orders
        deferred: { schedule: [50ms], max_attempts: 2 }
admin: { port: 0 }
upstreams:
  orders: { endpoints: [http://127.0.0.1:${s.upPort}], retry: { max_attempts: 1 } }
data_dir: ${s.dataDir}
`);
    try {
      for (const [path, key] of [
        ['/short', 'exp-1'],
        ['/counted', 'cnt-1'],
      ] as const) {
        const r = await fetch(`${bw.url()}${path}`, {
          method: 'POST',
          headers: { 'idempotency-key': key },
          body: 'x',
        });
        expect(r.status).toBe(202);
        await r.arrayBuffer();
      }
      const admin = bw.bw.admin?.port ?? 0;
      await until(async () => (await items(admin, 'status=expired')).length === 1, 'expired', 10_000);
      await until(async () => (await items(admin, 'status=failed')).length === 1, 'failed', 10_000);
      expect((await items(admin, 'status=expired'))[0]?.idempotency_key).toBe('exp-1');
      const failed = (await items(admin, 'status=failed'))[0] as { id: string; idempotency_key: string };
      expect(failed.idempotency_key).toBe('cnt-1');
      const detail = (await (await fetch(`${bw.adminUrl}/deferred/${failed.id}`)).json()) as {
        attempts: number;
      };
      expect(detail.attempts).toBe(2);
      expect(
        bw.logs.some((l) => l.event === 'deferred_state' && l.to === 'expired' && l.level === 'warn'),
      ).toBe(true);
    } finally {
      await bw.stop();
    }
  });

  it('a second process on the same data_dir with a deferred route refuses to start, naming the directory', async () => {
    const s = await setup();
    const first = await start(config(s), s.admin);
    try {
      const other = { ...s, port: await freePort(), admin: await freePort() };
      const second = spawnBreakwater(config(other));
      const code = await second.exited;
      expect(code).not.toBe(0);
      expect(second.stderr.join('') + second.stdout.join('\n')).toContain(
        `another breakwater process delivers deferred requests from ${s.dataDir}`,
      );
    } finally {
      await stop(first);
    }
  }, 30_000);

  it('a body buffered in a temporary file is stored whole and delivered byte for byte', async () => {
    const s = await setup();
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    limits: { body_buffer_bytes: 1KiB }
    routes:
      - name: orders
        upstream: orders
        deferred: { schedule: [50ms] }
admin: { port: 0 }
upstreams:
  orders: { endpoints: [http://127.0.0.1:${s.upPort}] }
data_dir: ${s.dataDir}
`);
    const body = Buffer.alloc(200 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) % 251;
    const got: Buffer[] = [];
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        got.push(Buffer.concat(chunks));
        res.writeHead(201).end();
      });
    });
    try {
      const r = await fetch(`${bw.url()}/orders`, {
        method: 'POST',
        headers: { 'idempotency-key': 'big-1' },
        body,
      });
      expect(r.status).toBe(202);
      await r.arrayBuffer();
      await new Promise<void>((resolve) => server.listen(s.upPort, '127.0.0.1', resolve));
      await until(() => got.length === 1, 'delivered', 10_000);
      expect(got[0]?.equals(body)).toBe(true);
    } finally {
      await bw.stop();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
