import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedStore, lockFile } from '../../src/stores/embedded.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bw-embedded-'));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

describe('embedded store (LMDB in data_dir)', () => {
  it('keeps named sub-databases apart, ordered by key, across a close and reopen', async () => {
    const dir = await tempDir();
    const s = await EmbeddedStore.open(join(dir, 'data'));
    const a = s.db<[string, number], { n: number }>('a');
    const b = s.db<string, string>('b');
    await s.transaction(() => {
      for (const n of [3, 1, 2]) a.put(['k', n], { n });
      b.put('x', 'y');
    });
    await s.close();
    const again = await EmbeddedStore.open(join(dir, 'data'));
    const keys = [
      ...again.db<[string, number], { n: number }>('a').getRange({ start: ['k'], end: ['k', Infinity] }),
    ];
    expect(keys.map((e) => e.value.n)).toEqual([1, 2, 3]);
    expect(again.db<string, string>('b').get('x')).toBe('y');
    expect(again.db('a').get('x')).toBeUndefined();
    expect(again.sizeBytes()).toBeGreaterThan(0);
    await again.close();
  });

  it('a write whose promise resolved survives SIGKILL of the writer', async () => {
    const dir = await tempDir();
    const script = join(dir, 'writer.mjs');
    const storeUrl = new URL('../../src/stores/embedded.ts', import.meta.url).href;
    // The child writes 200 records one by one, prints each key once its write resolved, and is
    // killed mid-stream; every printed key must be in the store afterwards.
    await writeFile(
      script,
      `const { EmbeddedStore } = await import(${JSON.stringify(storeUrl)});
       const s = await EmbeddedStore.open(${JSON.stringify(join(dir, 'data'))});
       const db = s.db('q');
       for (let i = 0; i < 200; i++) { await db.put('k' + String(i).padStart(4, '0'), { i }); process.stdout.write('k' + String(i).padStart(4, '0') + '\\n'); }
       setInterval(() => {}, 1000);`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const acked: string[] = [];
    let buf = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop() ?? '';
        acked.push(...lines);
        if (acked.length >= 50 && child.exitCode === null) child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
    });
    expect(acked.length).toBeGreaterThanOrEqual(50);
    const s = await EmbeddedStore.open(join(dir, 'data'));
    const db = s.db<string, { i: number }>('q');
    for (const k of acked) expect(db.get(k), k).toBeDefined();
    await s.close();
  });

  it('lockFile: one holder at a time; a lock left by a dead process is taken over', async () => {
    const dir = await tempDir();
    const release = await lockFile(dir, 'deliverer');
    expect(release).toBeDefined();
    // Held by a live process (the test runner's parent stands in for another breakwater).
    await writeFile(join(dir, 'other.lock'), String(process.ppid));
    expect(await lockFile(dir, 'other')).toBeUndefined();
    // Left by a process that is gone.
    await writeFile(join(dir, 'stale.lock'), '999999999');
    expect(await lockFile(dir, 'stale')).toBeDefined();
    await release?.();
    expect(await lockFile(dir, 'deliverer')).toBeDefined();
  });
});
