/**
 * The saga log: the durable record of every saga, written before each transition is acted on.
 * The engine, the service and the admin API see only the `SagaLog` interface; two backends
 * implement it (`saga_store.backend`):
 *
 * - embedded (here): one record per saga in the embedded store's sub-database `sagas`, keyed by
 *   saga id, rewritten whole at every transition. A write resolves only once it is on disk (the
 *   store fsyncs every commit). One process drives a data_dir's sagas (the sagas lock), so every
 *   saga in flight is its own, and it recovers them all at start.
 * - redis (redis-log.ts): records shared by a fleet, each with an owner and a lease; a write is
 *   refused when the writer no longer owns the saga (fencing), and any replica takes over the
 *   sagas whose lease lapsed.
 *
 * The engine acts on a transition only after its write resolved, so a crash at any point leaves the
 * last transition acted on, or one not yet acted on, never less. A record is a few KiB (the step
 * answers the templates may read, bounded by max_response_bytes).
 */
import type { Database } from 'lmdb';
import type { EmbeddedStore } from '../stores/embedded.js';
import { inFlight, type SagaRecord, type SagaState } from './machine.js';

export const SAGA_DB = 'sagas';

/**
 * How a write relates to ownership: `create` a new saga (this process owns it), `transition` of a
 * saga this process drives (refused when another owns it now), `retry` an operator's retry of a
 * parked saga (this process becomes its owner; refused unless it is still failed_to_compensate).
 */
export type SagaWrite = 'create' | 'transition' | 'retry';

export interface SagaListOptions {
  /** Newest first (ids and creation times are ordered) instead of oldest first. */
  readonly reverse?: boolean;
  /** Only sagas in this state (read through the backend's index when it has one). */
  readonly state?: SagaState;
}

/** The durable record of every saga. */
export interface SagaLog {
  /** Where the records live (logs, /state). */
  readonly backend: 'embedded' | 'redis';
  /** Leases of sagas in flight (ms), or undefined when one process owns every saga (embedded). */
  readonly lease: number | undefined;
  /**
   * Writes the record; resolves once it is durable. Rejects with SagaFenced when this process may
   * not write it (another owns the saga), with another error when the store cannot be written.
   */
  put(rec: SagaRecord, how?: SagaWrite): Promise<void>;
  get(id: string): Promise<SagaRecord | undefined>;
  /** Records in creation order (oldest first, or newest first with `reverse`), read lazily. */
  list(options?: SagaListOptions): AsyncIterable<SagaRecord>;
  /** Removes a record; false when another process drives it now (nothing removed). */
  remove(id: string): Promise<boolean>;
  /**
   * The sagas in flight this process is to drive now, of the sagas named: embedded, every one (at
   * start, under the data_dir lock); redis, those whose lease lapsed, now owned by this process.
   */
  takeOver(names: readonly string[]): Promise<SagaRecord[]>;
  /** Extends the leases of the sagas this process drives; resolves with those it no longer owns. */
  renew(ids: readonly string[]): Promise<string[]>;
  /** Gives up the leases of these sagas (at stop): other replicas take them over at once. */
  release(ids: readonly string[]): Promise<void>;
}

/** A write refused because the saga is owned by another process (or no longer in that state). */
export class SagaFenced extends Error {
  override readonly name = 'SagaFenced';
}

export class EmbeddedSagaLog implements SagaLog {
  readonly backend = 'embedded';
  readonly lease = undefined;
  private readonly db: Database<SagaRecord, string>;

  constructor(store: EmbeddedStore) {
    this.db = store.db<string, SagaRecord>(SAGA_DB);
  }

  async put(rec: SagaRecord): Promise<void> {
    const ok = await this.db.put(rec.id, rec);
    if (!ok) throw new Error(`the write of saga ${rec.id} was not committed`);
  }

  async get(id: string): Promise<SagaRecord | undefined> {
    return this.db.get(id);
  }

  async *list(options: SagaListOptions = {}): AsyncIterable<SagaRecord> {
    for (const { value } of this.db.getRange({ reverse: options.reverse === true }))
      if (options.state === undefined || value.state === options.state) yield value;
  }

  async remove(id: string): Promise<boolean> {
    await this.db.remove(id);
    return true;
  }

  async takeOver(names: readonly string[]): Promise<SagaRecord[]> {
    const out: SagaRecord[] = [];
    for (const { value } of this.db.getRange())
      if (inFlight(value.state) && names.includes(value.saga)) out.push(value);
    return out;
  }

  async renew(): Promise<string[]> {
    return [];
  }

  async release(): Promise<void> {}
}

/** The same log in memory (tests): records are copied in and out, as a store would. */
export class MemorySagaLog implements SagaLog {
  readonly backend = 'embedded';
  readonly lease = undefined;
  readonly records = new Map<string, SagaRecord>();
  writes = 0;

  async put(rec: SagaRecord, _how?: SagaWrite): Promise<void> {
    this.writes++;
    this.records.set(rec.id, structuredClone(rec));
  }
  /** The record now (tests). */
  peek(id: string): SagaRecord | undefined {
    const r = this.records.get(id);
    return r && structuredClone(r);
  }
  /** Every record, oldest first (tests). */
  all(): SagaRecord[] {
    return [...this.records.keys()].sort().map((id) => this.peek(id) as SagaRecord);
  }
  async get(id: string): Promise<SagaRecord | undefined> {
    return this.peek(id);
  }
  async *list(options: SagaListOptions = {}): AsyncIterable<SagaRecord> {
    const all = this.all();
    if (options.reverse) all.reverse();
    for (const r of all) if (options.state === undefined || r.state === options.state) yield r;
  }
  async remove(id: string): Promise<boolean> {
    this.records.delete(id);
    return true;
  }
  async takeOver(names: readonly string[]): Promise<SagaRecord[]> {
    return this.all().filter((r) => inFlight(r.state) && names.includes(r.saga));
  }
  async renew(): Promise<string[]> {
    return [];
  }
  async release(): Promise<void> {}
}
