/**
 * The response spool as a property: whatever chunks are pushed and whenever they are taken, what
 * comes out is what went in, in order, byte for byte, across memory, the temporary file (written,
 * read back, reused from its start) and a file that cannot be made (memory alone). The spool says
 * "wait" only past its bounds, and leaves no file behind.
 */
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ResponseSpool } from '../../src/attempt/spool.js';
import { TempFiles } from '../../src/stores/temp-files.js';

type Op =
  | { readonly kind: 'push'; readonly len: number }
  | { readonly kind: 'take'; readonly n: number }
  /** Lets the disk catch up: blocks get written and their memory freed, so they are read back. */
  | { readonly kind: 'pause' };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 700 }).map((len) => ({ kind: 'push' as const, len })) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 6 }).map((n) => ({ kind: 'take' as const, n })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'pause' as const }) },
);

/** TempFiles that count the files asked for. */
class CountingTempFiles extends TempFiles {
  created = 0;
  override create(kind: 'request' | 'response') {
    this.created++;
    return super.create(kind);
  }
}

let seq = 0;
/** A chunk whose bytes say where it belongs (a running counter). */
function chunk(len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (seq++ * 31) & 0xff;
  return b;
}

function files(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((d) => d.startsWith('breakwater-'))
    .flatMap((d) => readdirSync(join(root, d)));
}

async function run(ops: readonly Op[], memory: number, maxFile: number, temp: TempFiles): Promise<void> {
  let wake: (() => void) | undefined;
  let lost: Error | undefined;
  const spool = new ResponseSpool(temp, memory, maxFile, {
    ready: () => wake?.(),
    lost: (err) => {
      lost = err;
      wake?.();
    },
  });
  const ready = () =>
    new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the spool never became ready')), 5000);
      wake = () => {
        clearTimeout(t);
        wake = undefined;
        resolve();
      };
    });
  /** The next chunk, waiting for the disk when it must. */
  const take = async (): Promise<Buffer | undefined> => {
    for (;;) {
      if (spool.empty) return undefined;
      const waiting = ready();
      const c = spool.shift();
      if (c !== undefined) {
        wake = undefined;
        waiting.catch(() => undefined);
        return c;
      }
      await waiting;
      if (lost) throw lost;
    }
  };
  const input: Buffer[] = [];
  const output: Buffer[] = [];
  for (const o of ops) {
    if (o.kind === 'push') {
      const c = chunk(o.len);
      input.push(c);
      const room = spool.push(c);
      // "Wait" only once memory is past its bound.
      if (!room) expect(spool.memoryHeld).toBeGreaterThanOrEqual(memory);
    } else if (o.kind === 'pause') {
      await new Promise((r) => setTimeout(r, 3));
    } else {
      for (let i = 0; i < o.n; i++) {
        const c = await take();
        if (c === undefined) break;
        output.push(c);
      }
    }
  }
  for (let c = await take(); c !== undefined; c = await take()) output.push(c);
  expect(Buffer.concat(output).equals(Buffer.concat(input))).toBe(true);
  spool.destroy();
}

describe('ResponseSpool', () => {
  it('hands out exactly what was pushed, in order, across memory and the temporary file', async () => {
    const root = mkdtempSync(join(tmpdir(), 'bw-spool-'));
    const temp = new CountingTempFiles(root);
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { minLength: 1, maxLength: 60 }),
        fc.integer({ min: 0, max: 2000 }),
        fc.integer({ min: 0, max: 20_000 }),
        async (ops, memory, maxFile) => run(ops, memory, maxFile, temp),
      ),
      { numRuns: 60 },
    );
    expect(temp.created).toBeGreaterThan(0);
    // Every file went with its spool.
    await new Promise((r) => setTimeout(r, 50));
    expect(files(root)).toEqual([]);
    await temp.dispose();
  });

  it('frees memory once blocks are on disk, and reads them back in order', async () => {
    const root = mkdtempSync(join(tmpdir(), 'bw-spool-'));
    const temp = new TempFiles(root);
    let wake: (() => void) | undefined;
    const spool = new ResponseSpool(temp, 2000, 1 << 20, { ready: () => wake?.(), lost: () => undefined });
    const input = Array.from({ length: 40 }, (_, i) => Buffer.alloc(1000, i));
    for (const c of input) spool.push(c);
    expect(spool.memoryHeld).toBe(40_000);
    for (let i = 0; i < 100 && spool.memoryHeld > 2000; i++) await new Promise((r) => setTimeout(r, 10));
    // Only what fit the memory bound is still in memory; the rest is in the file.
    expect(spool.memoryHeld).toBeLessThanOrEqual(2000);
    expect(spool.spilled).toBe(true);
    expect(files(root)).toHaveLength(1);
    const output: Buffer[] = [];
    while (!spool.empty) {
      const c = spool.shift();
      if (c) output.push(c);
      else await new Promise<void>((r) => (wake = r));
    }
    expect(Buffer.concat(output).equals(Buffer.concat(input))).toBe(true);
    spool.destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect(files(root)).toEqual([]);
    await temp.dispose();
  });

  it('carries on in memory alone when no file can be made', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'bw-spool-'));
    const notADir = join(parent, 'file');
    writeFileSync(notADir, 'x');
    let failures = 0;
    const temp = new TempFiles(notADir, () => failures++);
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (ops) =>
        run(ops, 500, 1 << 20, temp),
      ),
      { numRuns: 20 },
    );
    await new Promise((r) => setTimeout(r, 50));
    expect(failures).toBeGreaterThan(0);
  });
});
