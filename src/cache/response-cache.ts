/**
 * The response cache behind `cache` fallbacks and `cache_only` degradation: the last good response
 * per request key, bounded by total bytes (least recently used evicted; lru-cache).
 *
 * Responses are stored by a tee while they stream to the client (never delaying it): GET only,
 * a status in `cache.statuses`, no `Cache-Control: no-store` / `private`, no `Set-Cookie`, and a
 * body of at most `cache.max_entry_bytes` that arrived whole.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { LRUCache } from 'lru-cache';

export interface CachedResponse {
  readonly status: number;
  /** Flat [name, value, ...] as sent to the client, without per-request headers. */
  readonly headers: readonly string[];
  readonly body: Buffer;
  /** Wall-clock ms when stored. */
  readonly storedAt: number;
}

export interface CacheEvents {
  evicted(): void;
}

const PER_REQUEST = new Set(['x-request-id', 'x-breakwater-attempts', 'connection', 'date', 'age']);

export class ResponseCache {
  private readonly lru: LRUCache<string, CachedResponse>;

  constructor(
    readonly maxBytes: number,
    readonly maxEntryBytes: number,
    readonly statuses: ReadonlySet<number>,
    events: CacheEvents,
  ) {
    this.lru = new LRUCache<string, CachedResponse>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (v, k) => Math.max(1, v.body.length + k.length + 64 * (v.headers.length / 2)),
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') events.evicted();
      },
    });
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }
  get entries(): number {
    return this.lru.size;
  }

  /** The key of a request: upstream, path with query, and the values of the `vary` headers. */
  static key(upstream: string, path: string, headers: IncomingHttpHeaders, vary: readonly string[]): string {
    let k = `${upstream} ${path}`;
    for (const h of vary) {
      const v = headers[h];
      k += `\n${h}:${Array.isArray(v) ? v.join(',') : (v ?? '')}`;
    }
    return k;
  }

  get(key: string): CachedResponse | undefined {
    return this.lru.get(key);
  }

  /** Whether a response may be stored, judged from its status and headers. */
  cacheable(status: number, rawHeaders: readonly Buffer[]): boolean {
    if (!this.statuses.has(status)) return false;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = (rawHeaders[i] as Buffer).toString('latin1').toLowerCase();
      if (name === 'set-cookie') return false;
      if (name === 'cache-control') {
        const v = (rawHeaders[i + 1] as Buffer).toString('latin1').toLowerCase();
        if (v.includes('no-store') || v.includes('private')) return false;
      }
      if (
        name === 'content-length' &&
        Number((rawHeaders[i + 1] as Buffer).toString('latin1')) > this.maxEntryBytes
      )
        return false;
    }
    return true;
  }

  /** Starts collecting a response's body; `end()` stores it if it stayed within bounds. */
  tee(key: string, status: number, headers: readonly string[], wallNow: () => number): Tee {
    return new Tee(this, key, status, headers, wallNow);
  }

  store(key: string, entry: CachedResponse): void {
    this.lru.set(key, entry);
  }

  static storedHeaders(headers: readonly string[]): string[] {
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i] as string;
      if (!PER_REQUEST.has(name.toLowerCase())) out.push(name, headers[i + 1] as string);
    }
    return out;
  }
}

export class Tee {
  private chunks: Buffer[] | undefined = [];
  private size = 0;

  constructor(
    private readonly cache: ResponseCache,
    private readonly key: string,
    private readonly status: number,
    private readonly headers: readonly string[],
    private readonly wallNow: () => number,
  ) {}

  data(chunk: Buffer): void {
    if (!this.chunks) return;
    this.size += chunk.length;
    if (this.size > this.cache.maxEntryBytes) this.chunks = undefined;
    else this.chunks.push(chunk);
  }

  /** The body arrived whole: store it. */
  end(): void {
    if (!this.chunks) return;
    this.cache.store(this.key, {
      status: this.status,
      headers: ResponseCache.storedHeaders(this.headers),
      body: Buffer.concat(this.chunks, this.size),
      storedAt: this.wallNow(),
    });
    this.chunks = undefined;
  }
}
