/**
 * The saga log: one record per saga in the embedded store's sub-database `sagas`, keyed by saga
 * id, rewritten whole at every transition. A write resolves only once it is on disk (the store
 * fsyncs every commit), and the engine acts on a transition only after its write resolved, so a
 * crash at any point leaves the last transition acted on, or one not yet acted on, never less.
 * A record is a few KiB (the step answers the templates may read, bounded by max_response_bytes).
 */
import type { Database } from 'lmdb';
import type { EmbeddedStore } from '../stores/embedded.js';
import type { SagaLog } from './engine.js';
import type { SagaRecord } from './machine.js';

export const SAGA_DB = 'sagas';

export class EmbeddedSagaLog implements SagaLog {
  private readonly db: Database<SagaRecord, string>;

  constructor(store: EmbeddedStore) {
    this.db = store.db<string, SagaRecord>(SAGA_DB);
  }

  async put(rec: SagaRecord): Promise<void> {
    const ok = await this.db.put(rec.id, rec);
    if (!ok) throw new Error(`the write of saga ${rec.id} was not committed`);
  }

  get(id: string): SagaRecord | undefined {
    return this.db.get(id);
  }

  *list(options: { readonly reverse?: boolean } = {}): Iterable<SagaRecord> {
    for (const { value } of this.db.getRange({ reverse: options.reverse === true })) yield value;
  }

  async remove(id: string): Promise<void> {
    await this.db.remove(id);
  }
}

/** The same log in memory (tests): records are copied in and out, as a store would. */
export class MemorySagaLog implements SagaLog {
  readonly records = new Map<string, SagaRecord>();
  writes = 0;

  async put(rec: SagaRecord): Promise<void> {
    this.writes++;
    this.records.set(rec.id, structuredClone(rec));
  }
  get(id: string): SagaRecord | undefined {
    const r = this.records.get(id);
    return r && structuredClone(r);
  }
  list(options: { readonly reverse?: boolean } = {}): SagaRecord[] {
    const ids = [...this.records.keys()].sort();
    if (options.reverse) ids.reverse();
    return ids.map((id) => structuredClone(this.records.get(id) as SagaRecord));
  }
  async remove(id: string): Promise<void> {
    this.records.delete(id);
  }
}
