import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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

function config(s: Setup, extra = '', deferredExtra = ''): string {
  return `
listeners:
  - name: main
    port: ${s.port}
    routes:
      - name: orders
        upstream: orders
        deferred:
          schedule: [50ms, 100ms]
          ordering_key: x-customer
${deferredExtra}
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
});
