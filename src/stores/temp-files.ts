/**
 * Temporary files for buffered bodies: request bodies past `limits.body_buffer_bytes`, and
 * responses a slow client has fallen behind on (see spool.ts).
 *
 * Every file is made in a directory of this process, `<temp_dir>/breakwater-<pid>-<random>` (mode
 * 0700; files opened exclusively with mode 0600), and removed when its request ends, aborted or
 * not. `sweepLeftovers` (at start-up) removes the directories left by breakwater processes that are
 * gone (a crash, SIGKILL, an OOM kill): only names of that form, and only when their process is not
 * running, so another breakwater sharing the directory keeps its files and nothing else in
 * `temp_dir` is touched. All I/O is asynchronous (fs/promises).
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';

export type TempKind = 'request' | 'response';

const DIR_RE = /^breakwater-(\d+)-[0-9a-f]{8}$/;

/** Directories in use by this process (several breakwaters may run in one process, as tests do). */
const LIVE = new Set<string>();

/** A temporary file could not be made, written or read (ENOSPC, EACCES, ENOTDIR, ...). */
export class TempFileError extends Error {
  readonly code = 'BW_TEMP_FILE';
  /** The system error code (ENOSPC, EDQUOT, EACCES, ...), when there was one. */
  readonly errno: string | undefined;
  constructor(cause: unknown) {
    const errno = (cause as { code?: unknown }).code;
    super(`temporary file: ${(cause as Error).message}`);
    this.name = 'TempFileError';
    this.errno = typeof errno === 'string' ? errno : undefined;
  }
  /** The disk (or the user's quota) is full, or the file reached the size limit of the system. */
  get noSpace(): boolean {
    return this.errno === 'ENOSPC' || this.errno === 'EDQUOT' || this.errno === 'EFBIG';
  }
}

export class TempFiles {
  /** This process's directory of temporary files (made at the first file). */
  readonly dir: string;
  private made: Promise<unknown> | undefined;
  private seq = 0;
  /** Files open now, and the bytes in them, by kind (metrics). */
  readonly files: Record<TempKind, number> = { request: 0, response: 0 };
  readonly bytes: Record<TempKind, number> = { request: 0, response: 0 };

  constructor(
    readonly root: string,
    private readonly onFailure?: (kind: TempKind, err: TempFileError) => void,
  ) {
    this.dir = join(root, `breakwater-${process.pid}-${randomBytes(4).toString('hex')}`);
    LIVE.add(this.dir);
  }

  /** A new empty file; rejects with a TempFileError. */
  async create(kind: TempKind): Promise<TempFile> {
    try {
      this.made ??= mkdir(this.dir, { recursive: true, mode: 0o700 });
      const path = join(this.dir, `${kind}-${++this.seq}`);
      let fh: FileHandle;
      try {
        await this.made;
        fh = await open(path, 'wx+', 0o600);
      } catch (err) {
        // Made again next time: the directory may be fixed, or removed by a temp cleaner meanwhile.
        this.made = undefined;
        throw err;
      }
      this.files[kind]++;
      return new TempFile(this, kind, path, fh);
    } catch (err) {
      throw this.failed(kind, err);
    }
  }

  /** Counts and wraps an I/O failure. */
  failed(kind: TempKind, err: unknown): TempFileError {
    const e = err instanceof TempFileError ? err : new TempFileError(err);
    this.onFailure?.(kind, e);
    return e;
  }

  /** Removes the directory and whatever is left in it (at stop, once no request uses it). */
  async dispose(): Promise<void> {
    LIVE.delete(this.dir);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

export class TempFile {
  /** Bytes of the file in use (the highest offset written). */
  private extent = 0;
  private removed = false;

  constructor(
    private readonly owner: TempFiles,
    readonly kind: TempKind,
    readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  /** Writes `buffers` one after the other from `position`; rejects with a TempFileError. */
  async write(buffers: Buffer[], position: number): Promise<void> {
    let at = position;
    let rest = buffers;
    try {
      for (;;) {
        let total = 0;
        for (const b of rest) total += b.length;
        if (total === 0) break;
        const { bytesWritten } = await this.fh.writev(rest, at);
        if (bytesWritten === 0) throw Object.assign(new Error('no byte written'), { code: 'ENOSPC' });
        this.grow(at + bytesWritten);
        at += bytesWritten;
        if (bytesWritten === total) break;
        rest = skip(rest, bytesWritten);
      }
    } catch (err) {
      throw this.owner.failed(this.kind, err);
    }
  }

  /** Fills `buffer` from `position`; rejects with a TempFileError. */
  async read(buffer: Buffer, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < buffer.length) {
        const { bytesRead } = await this.fh.read(buffer, done, buffer.length - done, position + done);
        if (bytesRead === 0) throw Object.assign(new Error('the file ended early'), { code: 'EIO' });
        done += bytesRead;
      }
    } catch (err) {
      throw this.owner.failed(this.kind, err);
    }
  }

  /** A stream of the file from its start, on a descriptor of its own (a body read once per attempt). */
  stream(): Readable {
    return createReadStream(this.path, { highWaterMark: 64 * 1024 });
  }

  /** Closes and deletes the file; safe to call more than once. */
  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    this.owner.files[this.kind]--;
    this.owner.bytes[this.kind] -= this.extent;
    this.extent = 0;
    await this.fh.close().catch(() => undefined);
    await unlink(this.path).catch(() => undefined);
  }

  private grow(end: number): void {
    if (end <= this.extent || this.removed) return;
    this.owner.bytes[this.kind] += end - this.extent;
    this.extent = end;
  }
}

/** `buffers` without their first `n` bytes. */
function skip(buffers: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let left = n;
  for (const b of buffers) {
    if (left >= b.length) {
      left -= b.length;
      continue;
    }
    out.push(left > 0 ? b.subarray(left) : b);
    left = 0;
  }
  return out;
}

/**
 * Removes the temporary directories in `root` that breakwater processes which are no longer
 * running left behind; returns their paths. A directory of a running process (this one's
 * included) is kept.
 */
export async function sweepLeftovers(root: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = DIR_RE.exec(name);
    if (!m) continue;
    const path = join(root, name);
    if (LIVE.has(path)) continue;
    const pid = Number(m[1]);
    // This process's pid with a directory it did not make: an earlier process with the same pid
    // (a container's pid 1 after a restart).
    if (pid !== process.pid && running(pid)) continue;
    await rm(path, { recursive: true, force: true });
    removed.push(path);
  }
  return removed;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, as another user.
    return (err as { code?: string }).code === 'EPERM';
  }
}
