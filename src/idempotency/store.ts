/**
 * Where Idempotency-Key records live. The interface is what a shared store (Redis, in the
 * distributed mode) implements too; `begin` is the atomic step: it either takes the key for this
 * request or reports what holds it.
 */
import { LRUCache } from 'lru-cache';
import { type Clock, systemClock } from '../clock.js';

export interface StoredResponse {
  readonly status: number;
  /** Flat [name, value, ...] as sent to the client the first time, minus per-request headers. */
  readonly headers: readonly string[];
  readonly body: Buffer;
}

export type BeginResult =
  | { readonly kind: 'acquired' }
  | { readonly kind: 'in_flight'; readonly fingerprint: string }
  | { readonly kind: 'completed'; readonly fingerprint: string; readonly response: StoredResponse };

export interface IdempotencyStore {
  /**
   * Takes `key` for a new request unless a record holds it; atomic. `inFlightMs` bounds how long
   * the claim may stay in flight (a shared store needs it: a replica that dies mid-request must not
   * hold the key for the whole TTL); a store of one process may ignore it. A shared store rejects
   * when it cannot be reached.
   */
  begin(key: string, fingerprint: string, ttlMs: number, inFlightMs?: number): Promise<BeginResult>;
  /** Stores the final response under `key` (replayed until the TTL passes). */
  complete(key: string, response: StoredResponse, ttlMs: number): Promise<void>;
  /**
   * Gives `key` up: the request certainly never reached the upstream (connect failure, a refusal
   * before sending), or the upstream's answer is one not to store (`store_server_errors: false`).
   */
  release(key: string): Promise<void>;
  /**
   * Leaves `key` claimed until its in-flight lease lapses: the request may have been processed
   * but its outcome is unknown (a timeout after it was sent, a cut or oversized answer). A retry
   * meanwhile gets 409, never a second call.
   */
  abandon(key: string): Promise<void>;
  /** Resolves when `key` is completed or released, or after `timeoutMs`. */
  settled(key: string, timeoutMs: number): Promise<void>;
}

interface Entry {
  fingerprint: string;
  response: StoredResponse | undefined;
}

/** The in-memory store: bounded by entries and bytes, records expire after their TTL. */
export class MemoryIdempotencyStore implements IdempotencyStore {
  private cache: LRUCache<string, Entry> | undefined;
  private readonly waiters = new Map<string, (() => void)[]>();

  private readonly clock: Clock;
  private readonly maxEntries: number;
  private readonly maxBytes: number;

  constructor(options: { maxEntries?: number; maxBytes?: number; clock?: Clock } = {}) {
    this.clock = options.clock ?? systemClock;
    this.maxEntries = options.maxEntries ?? 100_000;
    this.maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
  }

  /**
   * The records, made on first use: lru-cache allocates its index arrays for `max` entries at once
   * (some 3.5 MiB for 100 000), which a process whose routes use no Idempotency-Key never needs.
   */
  private get lru(): LRUCache<string, Entry> {
    this.cache ??= new LRUCache<string, Entry>({
      max: this.maxEntries,
      maxSize: this.maxBytes,
      sizeCalculation: (e, k) =>
        k.length + 128 + (e.response ? e.response.body.length + 64 * (e.response.headers.length / 2) : 0),
      ttlAutopurge: false,
    });
    return this.cache;
  }

  async begin(key: string, fingerprint: string, ttlMs: number, inFlightMs?: number): Promise<BeginResult> {
    const e = this.lru.get(key);
    if (e) {
      return e.response
        ? { kind: 'completed', fingerprint: e.fingerprint, response: e.response }
        : { kind: 'in_flight', fingerprint: e.fingerprint };
    }
    // A claim lives for its lease: one left behind by `abandon` lapses then.
    this.lru.set(key, { fingerprint, response: undefined }, { ttl: Math.min(ttlMs, inFlightMs ?? ttlMs) });
    return { kind: 'acquired' };
  }

  async complete(key: string, response: StoredResponse, ttlMs: number): Promise<void> {
    const e = this.lru.get(key);
    if (e) this.lru.set(key, { fingerprint: e.fingerprint, response }, { ttl: ttlMs });
    this.wake(key);
  }

  async release(key: string): Promise<void> {
    this.lru.delete(key);
    this.wake(key);
  }

  async abandon(key: string): Promise<void> {
    // The claim stays until its lease lapses; whoever waits for it (conflict: wait) gets 409 now.
    this.wake(key);
  }

  settled(key: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const list = this.waiters.get(key) ?? [];
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        this.clock.clearTimeout(timer);
        resolve();
      };
      const timer = this.clock.setTimeout(finish, timeoutMs);
      list.push(finish);
      this.waiters.set(key, list);
    });
  }

  get size(): number {
    return this.cache?.size ?? 0;
  }

  private wake(key: string): void {
    const list = this.waiters.get(key);
    if (!list) return;
    this.waiters.delete(key);
    for (const fn of list) fn();
  }
}
