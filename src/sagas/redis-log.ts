/**
 * The saga log on Redis (`saga_store.backend: redis`, through `stores.redis`): one log for a fleet,
 * so that a replica recovers the sagas of a replica that died.
 *
 * Keys (all under `key_prefix`, hash-tagged `{sagas}`: one Redis Cluster slot, so the scripts may
 * touch them together):
 *   saga:<id>:{sagas}           hash: rec (the record as JSON), state, saga, created, owner, lease
 *   sagas:lease:{sagas}         sorted set: sagas in flight, scored by lease expiry (ms, Redis time)
 *   sagas:all:{sagas}           sorted set: every saga, scored by creation (the admin list)
 *   sagas:state:<state>:{sagas} sorted set per state, scored by creation (list by state, retention sweep)
 *
 * Ownership: a saga in flight has an owner (the `instanceId` of the process driving it) and a lease.
 * Every write is a script that first checks the writer still owns the saga (fencing): a replica whose
 * lease lapsed and was taken over cannot overwrite the new owner's transitions. Its owner renews the
 * lease while the saga runs; a finished saga has no owner. Lease times are Redis's clock (TIME in
 * the scripts), so replicas' clocks may disagree without ending a lease early.
 */
import { type RedisStore, type StoreScript, script } from '../stores/redis.js';
import { SagaFenced, type SagaListOptions, type SagaLog, type SagaWrite } from './log.js';
import { SAGA_STATES, type SagaRecord } from './machine.js';

const NOW = `local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * KEYS: hash, lease set, all set, then one set per state (SAGA_STATES order).
 * ARGV: id, json, state, created, saga, owner, lease ms, how, then the state names.
 * Returns 'ok', 'exists', 'gone' or 'fenced'.
 */
const PUT = script(`${NOW}
local id, json, state, created, saga, owner, lease, how = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local cur = redis.call('HMGET', KEYS[1], 'owner', 'state')
if how == 'create' then
  if cur[2] then return 'exists' end
elseif how == 'transition' then
  if not cur[2] then return 'gone' end
  if cur[1] ~= owner then return 'fenced' end
else
  if not cur[2] then return 'gone' end
  if cur[2] ~= 'failed_to_compensate' then return 'fenced' end
end
for i = 1, #ARGV - 8 do
  local name = ARGV[8 + i]
  if name == state then redis.call('ZADD', KEYS[3 + i], created, id)
  elseif name == cur[2] then redis.call('ZREM', KEYS[3 + i], id) end
end
redis.call('ZADD', KEYS[3], created, id)
redis.call('HSET', KEYS[1], 'rec', json, 'state', state, 'saga', saga, 'created', created)
if state == 'running' or state == 'compensating' then
  redis.call('HSET', KEYS[1], 'owner', owner, 'lease', now + lease)
  redis.call('ZADD', KEYS[2], now + lease, id)
else
  redis.call('HDEL', KEYS[1], 'owner', 'lease')
  redis.call('ZREM', KEYS[2], id)
end
return 'ok'`);

/** KEYS: hash, lease set. ARGV: id, owner, lease ms. Returns 1 (renewed) or 0 (not the owner). */
const RENEW = script(`${NOW}
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
local until_ = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease', until_)
redis.call('ZADD', KEYS[2], until_, ARGV[1])
return 1`);

/** KEYS: hash, lease set. ARGV: id, owner. Ends this owner's lease now (the saga stays in flight). */
const RELEASE = script(`
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'lease', 0)
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1`);

/** KEYS: lease set. ARGV: how many, from where. The ids whose lease lapsed, earliest first. */
const LAPSED = script(`${NOW}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', tonumber(ARGV[2]), tonumber(ARGV[1]))`);

/**
 * KEYS: hash, lease set. ARGV: id, owner, lease ms, then the saga names this process defines.
 * Takes a saga in flight whose lease lapsed: returns its record; 0 when this process does not
 * define the saga (it stays lapsed, for a replica that does); otherwise false.
 */
const CLAIM = script(`${NOW}
local h = redis.call('HMGET', KEYS[1], 'state', 'lease', 'saga', 'rec')
if not h[1] or (h[1] ~= 'running' and h[1] ~= 'compensating') then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if h[2] and tonumber(h[2]) > now then return false end
local known = false
for i = 4, #ARGV do if ARGV[i] == h[3] then known = true end end
if not known then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease', now + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return h[4]`);

/**
 * KEYS: hash, lease set, all set, then one set per state. ARGV: id, owner.
 * Removes a saga unless another process holds a live lease on it: 1 removed (or absent), 0 held.
 */
const REMOVE = script(`${NOW}
local h = redis.call('HMGET', KEYS[1], 'owner', 'lease')
if h[1] and h[1] ~= ARGV[2] and tonumber(h[2] or '0') > now then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1`);

/** How many lapsed sagas one takeover round claims at most (the next round takes the rest). */
const TAKEOVER_BATCH = 100;
/** Pages of lapsed sagas one takeover round reads at most (sagas this process does not define stay lapsed). */
const TAKEOVER_PAGES = 10;
/** Records read per round trip when listing. */
const PAGE = 100;

/** The keys of the log on one store (its key_prefix). */
interface Keys {
  readonly store: RedisStore;
  /** The owner written on the sagas this process drives. */
  readonly owner: string;
  readonly lease: string;
  readonly all: string;
  readonly states: readonly string[];
}

export class RedisSagaLog implements SagaLog {
  readonly backend = 'redis';
  private cached: Keys | undefined;
  /** The first store's instanceId, kept when a reload replaces the store (the sagas stay this process's). */
  private owner: string | undefined;
  /**
   * Lapsed sagas this process does not define skipped so far: the next round reads on from there
   * (they stay in the lease set, earliest first, and would hide the rest). Back to 0 at the end.
   */
  private lapsedSkip = 0;

  constructor(
    /** The process's Redis store now (a reload may replace it). */
    private readonly store: () => RedisStore | undefined,
    readonly lease: number,
  ) {}

  /** The owner this process writes on its sagas (undefined until the log is first used). */
  get instance(): string | undefined {
    return this.owner ?? this.store()?.instanceId;
  }

  private keys(): Keys {
    const store = this.store();
    if (!store) throw new Error('stores.redis is not configured (saga_store.backend: redis needs it)');
    if (this.cached?.store !== store) {
      const k = (kind: string) => store.key(kind, 'sagas');
      this.owner ??= store.instanceId;
      this.cached = {
        store,
        owner: this.owner,
        lease: k('sagas:lease'),
        all: k('sagas:all'),
        states: SAGA_STATES.map((s) => k(`sagas:state:${s}`)),
      };
    }
    return this.cached;
  }

  private static hash(k: Keys, id: string): string {
    return k.store.key(`saga:${id}`, 'sagas');
  }

  private async run<T>(
    k: Keys,
    op: string,
    s: StoreScript,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<T> {
    return (await k.store.run(op, (client) => k.store.evalScript(client, s, keys, args))) as T;
  }

  async put(rec: SagaRecord, how: SagaWrite = 'transition'): Promise<void> {
    const k = this.keys();
    const r = await this.run<string>(
      k,
      'saga_write',
      PUT,
      [RedisSagaLog.hash(k, rec.id), k.lease, k.all, ...k.states],
      [
        rec.id,
        JSON.stringify(rec),
        rec.state,
        rec.createdAt,
        rec.saga,
        k.owner,
        this.lease,
        how,
        ...SAGA_STATES,
      ],
    );
    if (r === 'ok') return;
    if (r === 'exists') throw new Error(`saga ${rec.id} is in the log already`);
    if (r === 'gone') throw new SagaFenced(`saga ${rec.id} is no longer in the log (forgotten)`);
    throw new SagaFenced(
      how === 'retry'
        ? `saga ${rec.id} is no longer failed_to_compensate`
        : `saga ${rec.id} is owned by another replica now (its lease lapsed and was taken over)`,
    );
  }

  async get(id: string): Promise<SagaRecord | undefined> {
    const k = this.keys();
    const json = await k.store.run('saga_read', (c) => c.hget(RedisSagaLog.hash(k, id), 'rec'));
    return json === null ? undefined : (JSON.parse(json) as SagaRecord);
  }

  async *list(options: SagaListOptions = {}): AsyncIterable<SagaRecord> {
    const k = this.keys();
    const set =
      options.state === undefined ? k.all : (k.states[SAGA_STATES.indexOf(options.state)] as string);
    for (let at = 0; ; at += PAGE) {
      const ids = await k.store.run('saga_list', (c) =>
        options.reverse ? c.zrevrange(set, at, at + PAGE - 1) : c.zrange(set, at, String(at + PAGE - 1)),
      );
      if (ids.length === 0) return;
      const recs = await k.store.run('saga_read', (c) => {
        const p = c.pipeline();
        for (const id of ids) p.hget(RedisSagaLog.hash(k, id), 'rec');
        return p.exec();
      });
      for (const [err, json] of recs ?? []) {
        // A saga removed between the two reads is skipped.
        if (err || typeof json !== 'string') continue;
        const rec = JSON.parse(json) as SagaRecord;
        if (options.state === undefined || rec.state === options.state) yield rec;
      }
      if (ids.length < PAGE) return;
    }
  }

  async remove(id: string): Promise<boolean> {
    const k = this.keys();
    const r = await this.run<number>(
      k,
      'saga_write',
      REMOVE,
      [RedisSagaLog.hash(k, id), k.lease, k.all, ...k.states],
      [id, k.owner],
    );
    return r === 1;
  }

  async takeOver(names: readonly string[]): Promise<SagaRecord[]> {
    if (names.length === 0) return [];
    const k = this.keys();
    const out: SagaRecord[] = [];
    for (let page = 0; page < TAKEOVER_PAGES && out.length < TAKEOVER_BATCH; page++) {
      const ids = await this.run<string[]>(
        k,
        'saga_takeover',
        LAPSED,
        [k.lease],
        [TAKEOVER_BATCH, this.lapsedSkip],
      );
      for (const id of ids) {
        const r = await this.run<string | number | null>(
          k,
          'saga_takeover',
          CLAIM,
          [RedisSagaLog.hash(k, id), k.lease],
          [id, k.owner, this.lease, ...names],
        );
        // A claimed (or finished, or renewed) saga leaves the lapsed range; one not defined here stays.
        if (typeof r === 'string') out.push(JSON.parse(r) as SagaRecord);
        else if (r === 0) this.lapsedSkip++;
      }
      if (ids.length < TAKEOVER_BATCH) {
        this.lapsedSkip = 0;
        break;
      }
    }
    return out;
  }

  async renew(ids: readonly string[]): Promise<string[]> {
    const k = this.keys();
    const lost: string[] = [];
    await Promise.all(
      ids.map(async (id) => {
        const r = await this.run<number>(
          k,
          'saga_lease',
          RENEW,
          [RedisSagaLog.hash(k, id), k.lease],
          [id, k.owner, this.lease],
        );
        if (r !== 1) lost.push(id);
      }),
    );
    return lost;
  }

  async release(ids: readonly string[]): Promise<void> {
    const k = this.keys();
    await Promise.all(
      ids.map((id) => this.run(k, 'saga_lease', RELEASE, [RedisSagaLog.hash(k, id), k.lease], [id, k.owner])),
    );
  }
}
