/**
 * The deferred queue on Redis Streams (`deferred_store.backend: redis`), shared by every replica
 * that points at the same `stores.redis`:
 *
 * - accept: one script checks the caps and the Idempotency-Key, XADDs the whole request (id, the
 *   item's fields as JSON, the body) to the stream and writes the item's state hash, its lane
 *   (a sorted set by arrival per upstream and ordering key) and the counters; the 202 follows;
 * - claim: each replica is a consumer of the group `deliverers` (its name: stores.redis's
 *   instanceId, hostname-pid-random). XREADGROUP (no BLOCK: polled on the clock) hands new
 *   entries to one replica; the entry stays in that consumer's pending list (PEL) until XACK;
 * - lease: the owner renews its entries (XCLAIM to itself, JUSTID) every third of
 *   `deferred_store.lease`; entries of a replica that died are idle for a lease and another takes
 *   them with XAUTOCLAIM (min-idle = lease). A replica that stops cleanly marks its entries idle
 *   for a lease so the others take them at once;
 * - deliver: the owner delivers an item when it is due and the head of its lane (the lane's set
 *   is shared, so a lane's items are delivered in order whichever replica holds them); a script
 *   marks it `delivering` only if the entry is still the caller's;
 * - settle: a script records the result (if the entry is still the caller's: a replica that lost
 *   its lease does not overwrite the new owner), and on synced/failed/expired/cancelled XACKs the
 *   entry and moves the lane on. A synced item's entry (its body) is deleted at once, the others'
 *   when the retention sweep removes the item. A replay adds a new entry (the acknowledged one
 *   cannot return to the group).
 *
 * Every call goes through the store's breaker and command timeout: with Redis away, nothing is
 * accepted (the intake answers 503) and delivery waits, it never hangs.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { every } from '../clock.js';
import type { InternalResult } from '../pipeline/internal-call.js';
import { type RedisStore, StoreUnavailableError, script } from '../stores/redis.js';
import {
  type ChangeResult,
  type DeferredBackend,
  type EnqueueResult,
  type Filter,
  logState,
  matches,
  type NewItem,
  type QueueDeps,
  requestBytes,
  type UpstreamQueues,
} from './backend.js';
import { type Item, isFinished, recordDelivery, STATES, type State } from './model.js';

const GROUP = 'deliverers';
/** Entries read (or reclaimed) per call: bounds the bodies one reply carries. */
const READ_COUNT = 16;
/** Longest wait between two looks at the stream (items accepted by other replicas, lanes moving on). */
const POLL = 250;
/** A lane whose head another item is: looked at again after this (sooner when this replica moves it on). */
const BLOCKED_WAIT = POLL;
/** Scripts run per take at most (a tick's work stays bounded). */
const MAX_TRIES = 64;
/** Entries renewed per script call. */
const RENEW_CHUNK = 200;
/** Items read per call when listing. */
const LIST_PAGE = 200;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A consumer (a past process) idle this long with nothing pending is deleted from the group. */
const CONSUMER_GONE = 3_600_000;
/** How often the counters are read for metrics, /state and the status page. */
const SNAPSHOT_EVERY = 1_000;
/**
 * The queue's own connection waits this long for an answer (stores.redis.command_timeout, 20 ms
 * by default, is sized for a rate-limit check on the request path; a write carrying a request
 * body on a busy host can take longer, and a timeout would refuse a request that could be kept).
 * At least command_timeout.
 */
const QUEUE_COMMAND_TIMEOUT = 1_000;

/**
 * What the item's hash keeps as `doc` (JSON): the item without its body, seq and state. (An empty
 * body is delivered as none.)
 */
type Doc = Omit<Item, 'body' | 'seq' | 'state'>;

/** An entry in this replica's pending list. */
interface Owned {
  readonly entry: string;
  readonly id: string;
  readonly upstream: string;
  readonly orderingKey: string | undefined;
  /** When to try it next (0: as soon as possible; corrected by the take script). */
  nextAt: number;
}

/** Cap check, Idempotency-Key, XADD, state, lane, counters: one atomic step. */
const ENQUEUE = script(`
if ARGV[2] ~= '' then
  local had = redis.call('HGET', KEYS[2], ARGV[2])
  if had then return {'existing', had} end
end
local items = tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
if items + 1 > tonumber(ARGV[3]) then return {'items', tostring(items)} end
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local b = tonumber(ARGV[5])
if bytes + b > tonumber(ARGV[4]) then return {'bytes', tostring(bytes)} end
local seq = redis.call('INCR', KEYS[3])
local entry = redis.call('XADD', KEYS[4], '*', 'id', ARGV[1], 'doc', ARGV[6], 'body', ARGV[7])
redis.call('HSET', KEYS[6], 'doc', ARGV[6], 'state', 'pending', 'seq', seq, 'entry', entry,
  'next', ARGV[10], 'bytes', ARGV[5], 'kref', ARGV[2], 'updated', ARGV[9])
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'items', 1)
redis.call('HINCRBY', KEYS[1], 'bytes', b)
redis.call('HINCRBY', KEYS[1], 'n:pending', 1)
redis.call('HINCRBY', KEYS[1], 'p:' .. ARGV[8], 1)
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[1])
redis.call('SADD', KEYS[9], ARGV[8])
if ARGV[11] == '1' then redis.call('ZADD', KEYS[7], seq, ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) end
return {'stored', tostring(seq), entry}
`);

/**
 * The owner's claim of one entry: still its, due, the lane's head and no other item of the lane in
 * flight (KEYS[5], the lane's busy key: the id being delivered; a replay can put an older item at
 * the head while the one before it is delivered) -> delivering, with its request.
 */
const TAKE = script(`
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'next', 'seq')
local st = f[1]
if not st then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[2])
  return {'gone'}
end
if f[2] ~= ARGV[2] then return {'stale'} end
if st ~= 'pending' and st ~= 'delivering' then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[2])
  return {'gone'}
end
local p = redis.call('XPENDING', KEYS[2], ARGV[4], ARGV[2], ARGV[2], 1)
if not p[1] or p[1][2] ~= ARGV[3] then return {'lost'} end
if ARGV[6] == '1' then
  -- The lane's item in flight goes on (a new owner after a lease) even if a replay put an older
  -- item at the head; with none in flight, only the head goes.
  local busy = redis.call('GET', KEYS[5])
  if busy then
    if busy ~= ARGV[1] then return {'blocked'} end
  else
    local head = redis.call('ZRANGE', KEYS[3], 0, 0)
    if head[1] ~= ARGV[1] then return {'blocked'} end
  end
end
if tonumber(f[3]) > tonumber(ARGV[5]) then return {'later', f[3]} end
local e = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])
if not e[1] then return {'gone'} end
if st == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'delivering', 'updated', ARGV[5])
  redis.call('HINCRBY', KEYS[4], 'n:pending', -1)
  redis.call('HINCRBY', KEYS[4], 'n:delivering', 1)
  redis.call('HINCRBY', KEYS[4], 'p:' .. ARGV[7], -1)
  redis.call('HINCRBY', KEYS[4], 'd:' .. ARGV[7], 1)
end
if ARGV[6] == '1' then redis.call('SET', KEYS[5], ARGV[1]) end
local fields = e[1][2]
local body = ''
for i = 1, #fields, 2 do
  if fields[i] == 'body' then body = fields[i + 1] end
end
return {'ok', redis.call('HGET', KEYS[1], 'doc'), f[4], body, st}
`);

/**
 * A state change: checked against the states it may come from (and, for the deliverer, that the
 * entry is still the caller's), with the counters, lane, Idempotency-Key and entry kept in step.
 */
const MOVE = script(`
local f = redis.call('HMGET', KEYS[1], 'state', 'entry', 'seq', 'bytes', 'kref')
local st = f[1]
if not st then return {'gone'} end
if not string.find(ARGV[2], ' ' .. st .. ' ', 1, true) then return {'conflict', st} end
local entry = f[2]
if ARGV[7] ~= '' then
  local p = redis.call('XPENDING', KEYS[2], ARGV[8], entry, entry, 1)
  if not p[1] or p[1][2] ~= ARGV[7] then return {'lost', st} end
end
local to = ARGV[3]
local function live(s) return s == 'pending' or s == 'delivering' end
local reentry = (not live(st) and live(to)) or ARGV[12] == '1'
local copy
if reentry then
  if entry == '' then return {'nobody', st} end
  local e = redis.call('XRANGE', KEYS[2], entry, entry)
  if not e[1] then return {'nobody', st} end
  copy = e[1][2]
end
local up = ARGV[9]
local bytes = tonumber(f[4])
local nextHead = false
-- The lane's item in flight is this one no longer.
if st == 'delivering' and ARGV[10] == '1' and redis.call('GET', KEYS[8]) == ARGV[1] then redis.call('DEL', KEYS[8]) end
redis.call('HINCRBY', KEYS[3], 'n:' .. st, -1)
redis.call('HINCRBY', KEYS[3], 'n:' .. to, 1)
if st == 'pending' then redis.call('HINCRBY', KEYS[3], 'p:' .. up, -1) end
if st == 'delivering' then redis.call('HINCRBY', KEYS[3], 'd:' .. up, -1) end
if to == 'pending' then redis.call('HINCRBY', KEYS[3], 'p:' .. up, 1) end
if to == 'delivering' then redis.call('HINCRBY', KEYS[3], 'd:' .. up, 1) end
if live(st) and not live(to) then
  redis.call('HINCRBY', KEYS[3], 'items', -1)
  redis.call('HINCRBY', KEYS[3], 'bytes', -bytes)
  redis.call('ZREM', KEYS[7], ARGV[1])
  if ARGV[10] == '1' then
    local was = redis.call('ZRANGE', KEYS[6], 0, 0)
    redis.call('ZREM', KEYS[6], ARGV[1])
    -- The lane moves on only when its head finished: the next item is named to the caller, whose
    -- NUDGE (a script that declares that item's key) lets it go at once.
    if was[1] == ARGV[1] then
      local head = redis.call('ZRANGE', KEYS[6], 0, 0)
      if head[1] then nextHead = head[1] end
    end
  end
  if f[5] ~= '' and redis.call('HGET', KEYS[5], f[5]) == ARGV[1] then redis.call('HDEL', KEYS[5], f[5]) end
  if entry ~= '' then redis.call('XACK', KEYS[2], ARGV[8], entry) end
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
  if to == 'synced' and entry ~= '' then
    redis.call('XDEL', KEYS[2], entry)
    entry = ''
  end
elseif not live(st) and live(to) then
  redis.call('HINCRBY', KEYS[3], 'items', 1)
  redis.call('HINCRBY', KEYS[3], 'bytes', bytes)
  redis.call('ZADD', KEYS[7], ARGV[11], ARGV[1])
  if ARGV[10] == '1' then redis.call('ZADD', KEYS[6], f[3], ARGV[1]) end
  redis.call('ZREM', KEYS[4], ARGV[1])
  if f[5] ~= '' and not redis.call('HGET', KEYS[5], f[5]) then redis.call('HSET', KEYS[5], f[5], ARGV[1]) end
end
if reentry then
  redis.call('XACK', KEYS[2], ARGV[8], entry)
  redis.call('XDEL', KEYS[2], entry)
  entry = redis.call('XADD', KEYS[2], '*', unpack(copy))
end
redis.call('HSET', KEYS[1], 'state', to, 'doc', ARGV[4], 'next', ARGV[5], 'entry', entry, 'updated', ARGV[6])
if nextHead then return {'ok', st, nextHead} end
return {'ok', st}
`);

/**
 * A lane's new head (KEYS[2], the lane KEYS[1]) may go now (ARGV[2]) when it still is the head and
 * pending: it waited only for the item before it.
 */
const NUDGE = script(`
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
if head[1] ~= ARGV[1] then return 0 end
local f = redis.call('HMGET', KEYS[2], 'state', 'next')
if f[1] ~= 'pending' or tonumber(f[2] or '0') <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'next', ARGV[2])
return 1
`);

/** The owner's entries that are still its own get their idle time set to ARGV[3]; the others are named. */
const RENEW = script(`
local lost = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
`);

/** Removes finished items past retention (their entries, state, and place in the indexes). */
const SWEEP = script(`
local n = 0
for i = 1, #ARGV do
  local k = KEYS[4 + i]
  local f = redis.call('HMGET', k, 'state', 'entry')
  if f[1] and f[1] ~= 'pending' and f[1] ~= 'delivering' then
    if f[2] and f[2] ~= '' then redis.call('XDEL', KEYS[1], f[2]) end
    redis.call('DEL', k)
    redis.call('HINCRBY', KEYS[4], 'n:' .. f[1], -1)
    n = n + 1
  end
  if not f[1] or (f[1] ~= 'pending' and f[1] ~= 'delivering') then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('ZREM', KEYS[3], ARGV[i])
  end
end
return n
`);

interface Snapshot {
  readonly counts: Record<State, number>;
  readonly bytes: number;
  readonly upstreams: Record<string, { pending: number; delivering: number; oldest: number | null }>;
}

export class RedisDeferredQueue implements DeferredBackend {
  readonly backend = 'redis' as const;
  onDue: () => void = () => {};
  /** This replica's consumer name (kept for the process's life, across reloads of stores.redis). */
  private readonly me: string;
  private readonly owned = new Map<string, Owned>();
  /** Items handed to the deliverer and not settled (entry -> item). */
  private readonly handed = new Map<string, Item>();
  private groupReady = false;
  private claimCursor = '0-0';
  private nextClaim = 0;
  private nextRenew = 0;
  private nextSnapshot = 0;
  private snapshot: Snapshot | undefined;
  private outage = false;
  private stopSweep: () => void = () => undefined;
  private readonly k: {
    readonly stream: string;
    readonly all: string;
    readonly finished: string;
    readonly stats: string;
    readonly keys: string;
    readonly seq: string;
    readonly ups: string;
  };

  private constructor(
    /** The current stores.redis client (a reload may replace it). */
    private readonly store: () => RedisStore,
    private readonly deps: QueueDeps,
  ) {
    const s = store();
    this.me = s.instanceId;
    const key = (kind: string) => s.key(`deferred-${kind}`, 'deferred');
    this.k = {
      stream: key('stream'),
      all: key('all'),
      finished: key('finished'),
      stats: key('stats'),
      keys: key('keys'),
      seq: key('seq'),
      ups: key('upstreams'),
    };
  }

  /** Opens the queue; Redis being away does not stop it (the group is made when Redis answers). */
  static async open(store: () => RedisStore, deps: QueueDeps): Promise<RedisDeferredQueue> {
    const q = new RedisDeferredQueue(store, deps);
    const s = store();
    const c = q.connection(s);
    if (c.status !== 'ready')
      await new Promise<void>((resolve) => {
        const done = () => {
          deps.clock.clearTimeout(timer);
          c.off('ready', done);
          resolve();
        };
        const timer = deps.clock.setTimeout(done, s.model.connectTimeout);
        c.once('ready', done);
      });
    await q.ensureGroup().catch(() => undefined);
    q.collect();
    q.stopSweep = every(deps.clock, 60_000, () => void q.sweep().catch(() => undefined));
    return q;
  }

  private itemKey(id: string): string {
    return this.store().key(`deferred-item:${id}`, 'deferred');
  }

  private laneKey(upstream: string, orderingKey: string | undefined): string | undefined {
    if (orderingKey === undefined) return undefined;
    const h = createHash('sha1').update(`${upstream}\0${orderingKey}`).digest('hex');
    return this.store().key(`deferred-lane:${h}`, 'deferred');
  }

  private liveKey(upstream: string): string {
    return this.store().key(`deferred-live:${encodeURIComponent(upstream)}`, 'deferred');
  }

  private connection(s: RedisStore): Redis {
    return s.connection('deferred', Math.max(QUEUE_COMMAND_TIMEOUT, s.model.commandTimeout));
  }

  private run<T>(op: string, fn: (c: Redis, s: RedisStore) => Promise<T>): Promise<T> {
    const s = this.store();
    return s.run(`deferred_${op}`, (c) => fn(c, s), this.connection(s));
  }

  private async ensureGroup(): Promise<void> {
    if (this.groupReady) return;
    await this.run('group', async (c) => {
      try {
        await c.call('XGROUP', 'CREATE', this.k.stream, GROUP, '0', 'MKSTREAM');
      } catch (err) {
        if (!String((err as Error).message).startsWith('BUSYGROUP')) throw err;
      }
    });
    this.groupReady = true;
  }

  async laneWaiting(upstream: string, orderingKey: string | undefined): Promise<boolean> {
    const lane = this.laneKey(upstream, orderingKey);
    if (lane === undefined) return false;
    return (await this.run('lane', (c) => c.exists(lane))) > 0;
  }

  async enqueue(n: NewItem, firstDelay: number): Promise<EnqueueResult> {
    const bytes = requestBytes(n);
    const caps = this.deps.caps();
    const now = this.deps.clock.wall();
    const id = randomUUID();
    const keyRef = n.idempotencyKey === undefined ? '' : `${n.route}\0${n.idempotencyKey}`;
    const { body, ...rest } = n;
    const doc: Doc = {
      ...rest,
      id,
      bytes,
      bodyBytes: body?.length ?? 0,
      createdAt: now,
      updatedAt: now,
      expiresAt: now + n.maxAge,
      nextAt: now + firstDelay,
      attempts: 0,
      history: [],
      lastBody: undefined,
    };
    const lane = this.laneKey(n.upstream, n.orderingKey);
    const itemKey = this.itemKey(id);
    const r = (await this.run('enqueue', (c, s) =>
      s.evalScript(
        c,
        ENQUEUE,
        [
          this.k.stats,
          this.k.keys,
          this.k.seq,
          this.k.stream,
          this.k.all,
          itemKey,
          lane ?? itemKey,
          this.liveKey(n.upstream),
          this.k.ups,
        ],
        [
          id,
          keyRef,
          caps.maxItems,
          caps.maxBytes,
          bytes,
          JSON.stringify(doc),
          body ?? '',
          n.upstream,
          now,
          doc.nextAt,
          lane === undefined ? '0' : '1',
        ],
      ),
    )) as string[];
    switch (r[0]) {
      case 'existing': {
        const item = await this.get(r[1] as string);
        if (item) return { kind: 'existing', item };
        throw new Error(`deferred item ${r[1]} vanished while read`);
      }
      case 'items':
        return {
          kind: 'full',
          detail: `the deferred queue holds ${r[1]} items waiting for delivery (deferred_store.max_items: ${caps.maxItems})`,
        };
      case 'bytes':
        return {
          kind: 'full',
          detail: `the deferred queue holds ${r[1]} bytes waiting for delivery; this request needs ${bytes} more (deferred_store.max_bytes: ${caps.maxBytes})`,
        };
    }
    const item: Item = { ...doc, body, seq: Number(r[1]), state: 'pending' };
    this.deps.metrics.deferredEnqueued.labels(item.route, item.upstream).inc();
    logState(this.deps.logger, item, undefined);
    this.onDue();
    return { kind: 'stored', item };
  }

  async get(id: string): Promise<Item | undefined> {
    // Ids are UUIDs; anything else (an admin URL's text) never becomes part of a key.
    if (!UUID.test(id)) return undefined;
    const f = await this.run('get', (c) => c.hmget(this.itemKey(id), 'doc', 'state', 'seq'));
    return itemOf(f[0] ?? null, f[1] ?? null, f[2] ?? null, null);
  }

  async list(filter: Filter, limit: number): Promise<{ items: Item[]; truncated: boolean }> {
    const items: Item[] = [];
    const now = this.deps.clock.wall();
    for (let start = 0; ; start += LIST_PAGE) {
      const ids = await this.run('list', (c) =>
        c.zrange(this.k.all, String(start), String(start + LIST_PAGE - 1)),
      );
      if (ids.length === 0) return { items, truncated: false };
      const rows = await this.run('list', async (c) => {
        const p = c.pipeline();
        for (const id of ids) p.hmget(this.itemKey(id), 'doc', 'state', 'seq');
        return (await p.exec()) ?? [];
      });
      for (const [err, f] of rows) {
        if (err) throw new StoreUnavailableError(err.message, 'error');
        const v = f as (string | null)[];
        const item = itemOf(v[0] ?? null, v[1] ?? null, v[2] ?? null, null);
        if (!item || !matches(item, filter, now)) continue;
        if (items.length >= limit) return { items, truncated: true };
        items.push(item);
      }
    }
  }

  /**
   * Reads new entries and those of replicas whose lease ran out, renews this replica's, and claims
   * the due lane heads among them (one script each: still ours, due, head of its lane).
   */
  async take(room: (upstream: string) => number): Promise<{ items: Item[]; nextAt: number }> {
    const now = this.deps.clock.wall();
    try {
      await this.ensureGroup();
      await this.refreshSnapshot(now);
      if (now >= this.nextRenew) {
        await this.renew(0);
        this.nextRenew = now + Math.floor(this.deps.caps().lease / 3);
      }
      if (now >= this.nextClaim) {
        await this.autoclaim();
        this.nextClaim = now + Math.min(1_000, Math.floor(this.deps.caps().lease / 2));
      }
      // Enough due work in hand: new entries are left to the other replicas meanwhile.
      let dueHere = 0;
      for (const o of this.owned.values()) if (o.nextAt <= now && !this.handed.has(o.entry)) dueHere++;
      const full = dueHere < READ_COUNT ? await this.readNew() : false;
      const { items, more } = await this.claimDue(now, room);
      if (this.outage) {
        this.outage = false;
        this.deps.logger.info({ event: 'deferred_store_back' }, 'deferred queue: Redis answers again');
      }
      // Due items left for want of room wait for a delivery to end (the deliverer pokes then).
      let nextAt = full || more ? now : now + POLL;
      for (const o of this.owned.values())
        if (!this.handed.has(o.entry) && o.nextAt > now && o.nextAt < nextAt) nextAt = o.nextAt;
      return { items, nextAt };
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      if (/NOGROUP/.test(err.message)) this.groupReady = false;
      if (!this.outage) {
        this.outage = true;
        this.deps.logger.warn(
          { event: 'deferred_store_unavailable', error: err.message },
          `deferred queue: ${err.message}; delivery waits for Redis`,
        );
      }
      return { items: [], nextAt: now + 1_000 };
    }
  }

  /** New entries to this consumer; true when the read was full (more may wait). */
  private async readNew(): Promise<boolean> {
    const r = await this.run('read', (c) =>
      c.callBuffer('XREADGROUP', 'GROUP', GROUP, this.me, 'COUNT', READ_COUNT, 'STREAMS', this.k.stream, '>'),
    );
    if (!Array.isArray(r) || r.length === 0) return false;
    const entries = (r[0] as [Buffer, [Buffer, Buffer[] | null][]])[1];
    for (const e of entries) this.own(e);
    return entries.length >= READ_COUNT;
  }

  /** Entries idle for a lease (their replica died or let go) become this replica's. */
  private async autoclaim(): Promise<void> {
    const lease = this.deps.caps().lease;
    const r = (await this.run('autoclaim', (c) =>
      c.callBuffer('XAUTOCLAIM', this.k.stream, GROUP, this.me, lease, this.claimCursor, 'COUNT', READ_COUNT),
    )) as [Buffer, [Buffer, Buffer[] | null][]];
    this.claimCursor = r[0].toString();
    let n = 0;
    for (const e of r[1]) if (this.own(e)) n++;
    if (n > 0)
      this.deps.logger.info(
        { event: 'deferred_reclaimed', items: n, consumer: this.me },
        `deferred queue: took over ${n} items whose lease (${lease} ms) ran out`,
      );
  }

  private own(e: [Buffer, Buffer[] | null]): boolean {
    const entry = e[0].toString();
    const fields = e[1];
    if (!fields) return false;
    let id: string | undefined;
    let doc: string | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const name = (fields[i] as Buffer).toString();
      if (name === 'id') id = (fields[i + 1] as Buffer).toString();
      else if (name === 'doc') doc = (fields[i + 1] as Buffer).toString();
    }
    if (id === undefined || doc === undefined) return false;
    const d = JSON.parse(doc) as Doc;
    this.owned.set(entry, { entry, id, upstream: d.upstream, orderingKey: d.orderingKey, nextAt: 0 });
    return true;
  }

  /** Renews (idle 0) or lets go of (idle = lease) this replica's entries; drops those it lost. */
  private async renew(idle: number, entries = [...this.owned.keys()]): Promise<void> {
    for (let i = 0; i < entries.length; i += RENEW_CHUNK) {
      const chunk = entries.slice(i, i + RENEW_CHUNK);
      const lost = (await this.run('renew', (c, s) =>
        s.evalScript(c, RENEW, [this.k.stream], [GROUP, this.me, idle, ...chunk]),
      )) as string[];
      for (const e of lost) if (!this.handed.has(e)) this.owned.delete(e);
    }
  }

  /** The due lane heads this replica holds, claimed; `more` when the tries ran out before the due items. */
  private async claimDue(
    now: number,
    room: (upstream: string) => number,
  ): Promise<{ items: Item[]; more: boolean }> {
    const left = new Map<string, number>();
    const lanes = new Set<string>();
    const due = [...this.owned.values()]
      .filter((o) => o.nextAt <= now && !this.handed.has(o.entry))
      .sort((a, b) => a.nextAt - b.nextAt || (a.entry < b.entry ? -1 : 1));
    const taken: Item[] = [];
    let tries = 0;
    for (const o of due) {
      if (tries >= MAX_TRIES) return { items: taken, more: true };
      const l = left.get(o.upstream) ?? room(o.upstream);
      if (l <= 0) continue;
      const lane = this.laneKey(o.upstream, o.orderingKey);
      // One try per lane and look: only its head can go.
      if (lane !== undefined) {
        if (lanes.has(lane)) continue;
        lanes.add(lane);
      }
      tries++;
      const itemKey = this.itemKey(o.id);
      const r = (await this.run('take', (c, s) =>
        s.evalScriptBuffer(
          c,
          TAKE,
          [itemKey, this.k.stream, lane ?? itemKey, this.k.stats, busyKey(lane) ?? itemKey],
          [o.id, o.entry, this.me, GROUP, now, lane === undefined ? '0' : '1', o.upstream],
        ),
      )) as Buffer[];
      const verdict = (r[0] as Buffer).toString();
      if (verdict === 'later') o.nextAt = Number((r[1] as Buffer).toString());
      else if (verdict === 'blocked') o.nextAt = now + BLOCKED_WAIT;
      else if (verdict !== 'ok') this.owned.delete(o.entry);
      else {
        const item = itemOf(
          (r[1] as Buffer).toString(),
          'delivering',
          (r[2] as Buffer).toString(),
          r[3] as Buffer,
        );
        if (!item) {
          this.owned.delete(o.entry);
          continue;
        }
        left.set(o.upstream, l - 1);
        this.handed.set(o.entry, item);
        taken.push(item);
        const was = (r[4] as Buffer).toString();
        logState(this.deps.logger, item, was === 'pending' ? 'pending' : 'delivering');
      }
    }
    return { items: taken, more: false };
  }

  private entryOf(item: Item): string | undefined {
    for (const [entry, i] of this.handed) if (i === item) return entry;
    return undefined;
  }

  async settle(item: Item, r: InternalResult): Promise<State> {
    const now = this.deps.clock.wall();
    const to = recordDelivery(item, r, now, this.deps.random);
    const entry = this.entryOf(item);
    try {
      const res = await this.move(item, [' delivering '], to, now, this.me);
      if (res[0] !== 'ok') {
        // Another replica holds it now (this one's lease ran out): its record stands.
        this.deps.logger.warn(
          { event: 'deferred_lease_lost', id: item.id, consumer: this.me },
          `deferred ${item.id}: this replica's lease ran out during the delivery; the result is not recorded (the next owner delivers it again, with its Idempotency-Key)`,
        );
        if (entry !== undefined) this.owned.delete(entry);
        return 'delivering';
      }
    } finally {
      if (entry !== undefined) this.handed.delete(entry);
    }
    this.deps.metrics.deferredDeliveries.labels(item.upstream, to === 'pending' ? 'retry' : to).inc();
    if (entry !== undefined) {
      const o = this.owned.get(entry);
      if (isFinished(to)) this.owned.delete(entry);
      else if (o) o.nextAt = item.nextAt;
    }
    return to;
  }

  /** Runs MOVE for `item` (whose state is the one written as `to`); the script's answer. */
  private async move(
    item: Item,
    from: readonly string[],
    to: State,
    now: number,
    owner: string,
    reentry = false,
  ): Promise<string[]> {
    const was = item.state;
    item.state = to;
    item.updatedAt = now;
    const lane = this.laneKey(item.upstream, item.orderingKey);
    const itemKey = this.itemKey(item.id);
    const res = (await this.run('move', (c, s) =>
      s.evalScript(
        c,
        MOVE,
        [
          itemKey,
          this.k.stream,
          this.k.stats,
          this.k.finished,
          this.k.keys,
          lane ?? itemKey,
          this.liveKey(item.upstream),
          busyKey(lane) ?? itemKey,
        ],
        [
          item.id,
          from.join(''),
          to,
          JSON.stringify(docOf(item)),
          item.nextAt,
          now,
          owner,
          GROUP,
          item.upstream,
          lane === undefined ? '0' : '1',
          item.createdAt,
          reentry ? '1' : '0',
        ],
      ),
    )) as string[];
    if (res[0] === 'ok') {
      if (was !== to) logState(this.deps.logger, item, (res[1] as State | undefined) ?? was);
      // The lane's head finished: its next item may go now and, if this replica holds it, is looked at now.
      const head = res[2];
      if (head !== undefined && lane !== undefined) {
        await this.run('move', (c, s) =>
          s.evalScript(c, NUDGE, [lane, this.itemKey(head)], [head, now]),
        ).catch(() => undefined); // the result is recorded; the next item then waits for its own time
        for (const o of this.owned.values()) if (o.id === head) o.nextAt = Math.min(o.nextAt, now);
      }
      this.onDue();
    } else item.state = (res[1] as State | undefined) ?? was;
    return res;
  }

  async putBack(items: Iterable<Item>): Promise<void> {
    const now = this.deps.clock.wall();
    for (const item of items) {
      if (item.state !== 'delivering') continue;
      const entry = this.entryOf(item);
      try {
        await this.move(item, [' delivering '], 'pending', now, this.me);
      } catch (err) {
        this.deps.logger.warn(
          { event: 'deferred_error', id: item.id, err },
          `deferred ${item.id}: could not be put back to pending (another replica takes it after the lease)`,
        );
      }
      if (entry !== undefined) this.handed.delete(entry);
    }
  }

  async cancel(id: string): Promise<ChangeResult> {
    const item = await this.get(id);
    if (!item) return { ok: false, status: 404, detail: `no deferred item ${id}` };
    const conflict = (state: string): ChangeResult => ({
      ok: false,
      status: 409,
      detail: `item ${id} is ${state}; only a pending item can be cancelled${state === 'delivering' ? ' (try again when this delivery is over)' : ''}`,
    });
    if (item.state !== 'pending') return conflict(item.state);
    const r = await this.move(item, [' pending '], 'cancelled', this.deps.clock.wall(), '');
    if (r[0] === 'gone') return { ok: false, status: 404, detail: `no deferred item ${id}` };
    if (r[0] !== 'ok') return conflict(r[1] ?? 'changed');
    return { ok: true, item };
  }

  async replay(id: string): Promise<ChangeResult> {
    const item = await this.get(id);
    if (!item) return { ok: false, status: 404, detail: `no deferred item ${id}` };
    const conflict = (state: string): ChangeResult => ({
      ok: false,
      status: 409,
      detail: `item ${id} is ${state}; only a pending, failed, expired or cancelled item can be replayed`,
    });
    if (item.state === 'synced' || item.state === 'delivering') return conflict(item.state);
    const now = this.deps.clock.wall();
    const from = item.state;
    item.nextAt = now;
    if (from !== 'pending') {
      item.attempts = 0;
      item.expiresAt = now + item.maxAge;
    }
    // A new entry in every case: the group hands it out again (a pending one's owner drops the old).
    const r = await this.move(item, [` ${from} `], 'pending', now, '', true);
    if (r[0] === 'gone') return { ok: false, status: 404, detail: `no deferred item ${id}` };
    if (r[0] !== 'ok') return conflict(r[1] ?? 'changed');
    return { ok: true, item };
  }

  async bulk(action: 'cancel' | 'replay', filter: Filter): Promise<{ matched: number; changed: number }> {
    const { items } = await this.list(filter, Number.POSITIVE_INFINITY);
    let changed = 0;
    for (const i of items) {
      const r = action === 'cancel' ? await this.cancel(i.id) : await this.replay(i.id);
      if (r.ok) changed++;
    }
    return { matched: items.length, changed };
  }

  now(): number {
    return this.deps.clock.wall();
  }

  /**
   * Removes finished items older than deferred_store.retention, and the group's consumers of
   * replicas gone for an hour with nothing pending (any replica may; it is idempotent).
   */
  async sweep(): Promise<number> {
    await this.forgetConsumers();
    const cutoff = this.deps.clock.wall() - this.deps.caps().retention;
    let removed = 0;
    for (;;) {
      const ids = await this.run('sweep', (c) =>
        c.zrangebyscore(this.k.finished, '-inf', cutoff, 'LIMIT', 0, 100),
      );
      if (ids.length === 0) return removed;
      removed += Number(
        await this.run('sweep', (c, s) =>
          s.evalScript(
            c,
            SWEEP,
            [this.k.stream, this.k.all, this.k.finished, this.k.stats, ...ids.map((id) => this.itemKey(id))],
            ids,
          ),
        ),
      );
    }
  }

  /** Each process is a new consumer: those of replicas gone (idle an hour, nothing pending) are deleted. */
  private async forgetConsumers(): Promise<void> {
    const rows = (await this.run('sweep', (c) =>
      c.call('XINFO', 'CONSUMERS', this.k.stream, GROUP),
    )) as unknown[][];
    for (const row of rows) {
      const f = new Map<string, unknown>();
      for (let i = 0; i + 1 < row.length; i += 2) f.set(String(row[i]), row[i + 1]);
      const name = String(f.get('name'));
      if (name !== this.me && Number(f.get('pending')) === 0 && Number(f.get('idle')) > CONSUMER_GONE)
        await this.run('sweep', (c) => c.call('XGROUP', 'DELCONSUMER', this.k.stream, GROUP, name));
    }
  }

  private async refreshSnapshot(now: number): Promise<void> {
    if (now < this.nextSnapshot && this.snapshot) return;
    this.nextSnapshot = now + SNAPSHOT_EVERY;
    const [stats, ups] = await this.run('stats', (c) =>
      Promise.all([c.hgetall(this.k.stats), c.smembers(this.k.ups)]),
    );
    const oldest = await this.run('stats', async (c) => {
      const p = c.pipeline();
      for (const u of ups) p.zrange(this.liveKey(u), '0', '0', 'WITHSCORES');
      return (await p.exec()) ?? [];
    });
    const num = (k: string) => Number(stats[k] ?? 0);
    const counts = Object.fromEntries(STATES.map((s) => [s, num(`n:${s}`)])) as Record<State, number>;
    const upstreams: Snapshot['upstreams'] = {};
    ups.forEach((u, i) => {
      const z = oldest[i]?.[1] as string[] | undefined;
      upstreams[u] = {
        pending: num(`p:${u}`),
        delivering: num(`d:${u}`),
        oldest: z?.[1] === undefined ? null : Number(z[1]),
      };
    });
    this.snapshot = { counts, bytes: num('bytes'), upstreams };
  }

  upstreams(): UpstreamQueues {
    const now = this.deps.clock.wall();
    const out: UpstreamQueues = {};
    for (const [u, s] of Object.entries(this.snapshot?.upstreams ?? {})) {
      if (s.pending + s.delivering === 0 && s.oldest === null) continue;
      out[u] = {
        pending: s.pending,
        delivering: s.delivering,
        oldest_pending_age_ms: s.oldest === null ? null : Math.max(0, now - s.oldest),
      };
    }
    return out;
  }

  /** Gauges set at each scrape, from the counters last read (every second while delivering). */
  private collect(): void {
    const { metrics } = this.deps;
    metrics.collectors.set('deferred', () => {
      const s = this.snapshot;
      if (!s) return;
      for (const st of STATES) metrics.deferredItems.labels(st).set(s.counts[st]);
      let oldest = Number.POSITIVE_INFINITY;
      for (const u of Object.values(s.upstreams))
        if (u.oldest !== null && u.oldest < oldest) oldest = u.oldest;
      metrics.deferredOldestPending.set(
        oldest === Number.POSITIVE_INFINITY ? 0 : Math.max(0, (this.deps.clock.wall() - oldest) / 1000),
      );
      metrics.deferredStoreBytes.set(s.bytes);
    });
  }

  async close(): Promise<void> {
    this.stopSweep();
    this.deps.metrics.collectors.delete('deferred');
    // Let go of what this replica holds: the others take it at once instead of after a lease.
    const idle = [...this.owned.keys()].filter((e) => !this.handed.has(e));
    if (idle.length > 0)
      await this.renew(this.deps.caps().lease, idle).catch((err: unknown) =>
        this.deps.logger.warn(
          { event: 'deferred_error', err },
          'deferred queue: could not hand this replica’s items back; the others take them after the lease',
        ),
      );
    this.owned.clear();
  }
}

/** A lane's busy key (the id of its item in flight), in the lane key's slot. */
function busyKey(lane: string | undefined): string | undefined {
  return lane === undefined ? undefined : `${lane}:busy`;
}

function docOf(item: Item): Doc {
  const { body, seq: _seq, state: _state, ...rest } = item;
  return { ...rest, bodyBytes: item.bodyBytes ?? body?.length ?? 0 };
}

function itemOf(
  doc: string | null,
  state: string | null,
  seq: string | null,
  body: Buffer | null,
): Item | undefined {
  if (doc === null || state === null) return undefined;
  const d = JSON.parse(doc) as Doc;
  return {
    ...d,
    history: d.history ?? [],
    lastBody: d.lastBody ?? undefined,
    body: body === null || body.length === 0 ? null : body,
    seq: Number(seq ?? 0),
    state: state as State,
  };
}
