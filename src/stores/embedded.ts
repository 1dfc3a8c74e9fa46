/**
 * The embedded store: one LMDB environment in `data_dir`, opened once per process by the first
 * feature that needs durable state (deferred deliveries, saga logs), each of which keeps its records
 * in a named sub-database of its own.
 *
 * Why LMDB (the `lmdb` package): a well-kept embedded B+tree store whose npm package ships prebuilt
 * N-API binaries for Linux, macOS and Windows (installs without a compiler on Node.js 20 and 24 and
 * in the slim image); ordered keys (a queue is a key range); reads are synchronous and cheap (a
 * memory map; the map grows as needed); writes are batched into transactions on a separate thread; a crash never corrupts
 * it (copy-on-write pages, two meta pages).
 *
 * Durability: the environment is opened with `overlappingSync: false`, so the promise a write
 * returns resolves only after its transaction is committed AND flushed (fsync) to disk. A caller
 * that awaits `put`/`transaction` before acknowledging has a record that survives SIGKILL and a
 * power cut (within what the disk and OS promise). Several processes may open the same directory
 * (LMDB locks its writer); features that must not run twice on one directory take `lockFile`.
 */
import { mkdir, open as openFile, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';

export class EmbeddedStore {
  private readonly dbs = new Map<string, Database>();

  private constructor(
    readonly dir: string,
    private readonly root: RootDatabase,
  ) {}

  /** Opens (making it if needed, mode 0700) the store in `dir`. */
  static async open(dir: string): Promise<EmbeddedStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Loaded here, not with this module: a process that stores nothing never maps LMDB (its native
    // module and msgpack cost some 8 MiB of resident memory).
    const { open } = await import('lmdb');
    const root = open({
      path: join(dir, 'store.mdb'),
      compression: false,
      overlappingSync: false,
    });
    return new EmbeddedStore(dir, root);
  }

  /**
   * The named sub-database (values encoded with msgpack, keys ordered: strings, numbers and arrays
   * of them). The same object for the same name.
   */
  db<K extends string | number | (string | number)[] = string, V = unknown>(name: string): Database<V, K> {
    let d = this.dbs.get(name);
    if (!d) {
      d = this.root.openDB({ name, encoding: 'msgpack' });
      this.dbs.set(name, d);
    }
    return d as unknown as Database<V, K>;
  }

  /** Runs `fn` in one write transaction; resolves once it is durable on disk. */
  transaction<T>(fn: () => T): Promise<T> {
    return this.root.transaction(fn);
  }

  /** Resolves when every write so far is durable. */
  async flushed(): Promise<void> {
    await this.root.flushed;
  }

  /** Bytes the store's file takes (for metrics and caps). */
  sizeBytes(): number {
    const s = this.root.getStats() as { lastPageNumber?: number; pageSize?: number };
    return (s.lastPageNumber ?? 0) * (s.pageSize ?? 4096);
  }

  async close(): Promise<void> {
    this.dbs.clear();
    await this.root.close();
  }
}

/**
 * An exclusive lock on `name` in `dir` for this process: a file holding the PID, taken with O_EXCL;
 * a file left by a process that no longer runs is taken over. Resolves to a release function, or
 * undefined when a live process holds it.
 */
export async function lockFile(dir: string, name: string): Promise<(() => Promise<void>) | undefined> {
  const path = join(dir, `${name}.lock`);
  for (let tries = 0; tries < 2; tries++) {
    try {
      const fh = await openFile(path, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => rm(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (pid > 0 && pid !== process.pid && isAlive(pid)) return undefined;
      await rm(path, { force: true });
    }
  }
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
