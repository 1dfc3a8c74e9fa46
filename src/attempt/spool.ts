/**
 * What a slow client has not taken yet of a response: a first-in first-out queue of the upstream's
 * chunks, in memory up to `memory` bytes and beyond that in a temporary file of at most `maxFile`
 * bytes (nginx's proxy buffers and proxy_max_temp_file_size), so the upstream can be read at its
 * own speed while memory stays bounded.
 *
 * Each queued block is either in memory or in the file; the queue keeps their order whichever tier
 * holds them. A block bound for the file keeps its bytes in memory until they are written (and
 * then frees them); a file block at the head is read back (in reads of up to READ_BLOCK bytes)
 * before it is handed out. Writes are one at a time, in offset order; reads only touch bytes
 * already written. When the queue is empty the file is written again from its start. If the file
 * cannot be made or written, the spool carries on in memory alone (the producer is then paused at
 * `memory`), so a full disk slows a slow client's response down but never corrupts it.
 *
 * `push` says false when the producer should stop until `hasRoom()`: memory is full and the file
 * cannot take more (full, failed, or writes not keeping up: unwritten bytes count as memory, up to
 * `memory` more).
 */
import type { TempFile, TempFileError, TempFiles } from '../stores/temp-files.js';

interface Block {
  /** The bytes, while they are in memory. */
  buf: Buffer | undefined;
  readonly len: number;
  /** Offset in the file; -1 for a block kept in memory only. */
  readonly pos: number;
  written: boolean;
  /** Handed out (its memory no longer counts). */
  shifted: boolean;
}

/** Largest read from the file at once. */
const READ_BLOCK = 64 * 1024;

export interface SpoolEvents {
  /** Something waited for (a read, a write) is done: data may be handed out, room may have come. */
  ready(): void;
  /** The file could not be read back: what was in it is lost (the response cannot be completed). */
  lost(err: TempFileError): void;
}

export class ResponseSpool {
  /** Blocks from `head` on are queued (those before it were handed out). */
  private queue: (Block | undefined)[] = [];
  private head = 0;
  /** Bytes of queued blocks held in memory (memory blocks, unwritten and read-back file blocks). */
  private memBytes = 0;
  /** File blocks waiting to be written, in offset order. */
  private unwritten: Block[] = [];
  private fileEnd = 0;
  private file: TempFile | undefined;
  private fileState: 'none' | 'opening' | 'open' | 'failed' = 'none';
  private writing = false;
  private reading = false;
  private destroyed = false;

  constructor(
    private readonly temp: TempFiles,
    private readonly memory: number,
    private readonly maxFile: number,
    private readonly events: SpoolEvents,
  ) {
    if (maxFile <= 0) this.fileState = 'failed';
  }

  /** Nothing queued. */
  get empty(): boolean {
    return this.head === this.queue.length;
  }

  /** Bytes held in memory now. */
  get memoryHeld(): number {
    return this.memBytes;
  }

  /** Whether a file has been used (metrics, tests). */
  get spilled(): boolean {
    return this.file !== undefined;
  }

  /** The producer may go on (see the module comment). */
  hasRoom(): boolean {
    return this.fileState === 'failed' || this.fileEnd >= this.maxFile
      ? this.memBytes < this.memory
      : this.memBytes < 2 * this.memory;
  }

  /** Queues a chunk; false when the producer should wait for `hasRoom()`. */
  push(chunk: Buffer): boolean {
    if (this.destroyed) return true;
    if (this.empty && !this.writing && this.unwritten.length === 0) this.fileEnd = 0;
    const len = chunk.length;
    const toFile =
      this.memBytes + len > this.memory && this.fileState !== 'failed' && this.fileEnd + len <= this.maxFile;
    const block: Block = { buf: chunk, len, pos: toFile ? this.fileEnd : -1, written: false, shifted: false };
    this.queue.push(block);
    this.memBytes += len;
    if (toFile) {
      this.fileEnd += len;
      this.unwritten.push(block);
      this.flush();
    }
    return this.hasRoom();
  }

  /** The next chunk when one is in memory now; undefined when empty or while it is read back. */
  shift(): Buffer | undefined {
    const b = this.queue[this.head];
    if (b === undefined) return undefined;
    const buf = b.buf;
    if (buf === undefined) {
      this.readBack();
      return undefined;
    }
    this.queue[this.head] = undefined;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    b.shifted = true;
    this.memBytes -= b.len;
    // A block still being written keeps its bytes until the write is done (the client has them).
    if (b.written || b.pos < 0) b.buf = undefined;
    return buf;
  }

  /** Drops everything and removes the file. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.queue = [];
    this.head = 0;
    this.unwritten = [];
    this.memBytes = 0;
    void this.file?.remove();
  }

  /** Writes the blocks waiting for the file, one write at a time. */
  private flush(): void {
    if (this.writing || this.destroyed || this.unwritten.length === 0) return;
    if (this.fileState === 'none') {
      this.fileState = 'opening';
      this.temp.create('response').then(
        (f) => {
          if (this.destroyed) {
            void f.remove();
            return;
          }
          this.file = f;
          this.fileState = 'open';
          this.flush();
        },
        () => this.fileFailed(),
      );
      return;
    }
    if (this.fileState !== 'open') return;
    const blocks = this.unwritten;
    this.unwritten = [];
    const first = blocks[0] as Block;
    this.writing = true;
    (this.file as TempFile)
      .write(
        blocks.map((b) => b.buf as Buffer),
        first.pos,
      )
      .then(
        () => {
          this.writing = false;
          if (this.destroyed) return;
          for (const b of blocks) {
            b.written = true;
            if (b.shifted) b.buf = undefined;
            else {
              b.buf = undefined;
              this.memBytes -= b.len;
            }
          }
          this.flush();
          this.events.ready();
        },
        () => {
          this.writing = false;
          // The blocks keep their bytes: they are served from memory.
          this.fileFailed();
        },
      );
  }

  /** The file cannot be used: what waits to be written stays in memory, and nothing more goes to it. */
  private fileFailed(): void {
    this.fileState = 'failed';
    this.unwritten = [];
    if (!this.destroyed) this.events.ready();
  }

  /** Reads the head run of written file blocks back into memory. */
  private readBack(): void {
    if (this.reading || this.destroyed) return;
    const run: Block[] = [];
    let total = 0;
    for (let i = this.head; i < this.queue.length; i++) {
      const b = this.queue[i];
      if (b === undefined || b.buf !== undefined || (run.length > 0 && total + b.len > READ_BLOCK)) break;
      if (run.length > 0 && b.pos !== (run[run.length - 1] as Block).pos + (run[run.length - 1] as Block).len)
        break;
      run.push(b);
      total += b.len;
    }
    const buf = Buffer.allocUnsafe(total);
    this.reading = true;
    (this.file as TempFile).read(buf, (run[0] as Block).pos).then(
      () => {
        this.reading = false;
        if (this.destroyed) return;
        let at = 0;
        for (const b of run) {
          b.buf = buf.subarray(at, at + b.len);
          at += b.len;
          this.memBytes += b.len;
        }
        this.events.ready();
      },
      (err: TempFileError) => {
        this.reading = false;
        if (!this.destroyed) this.events.lost(err);
      },
    );
  }
}
