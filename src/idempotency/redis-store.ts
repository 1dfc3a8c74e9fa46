/**
 * Idempotency-Key records in Redis (`idempotency.store: redis`): every replica sees the same keys,
 * so a payment retried through another pod is still forwarded once.
 *
 * One key per record, hash-tagged, holding either a claim or a completed response:
 *   claim      "P\n<owner>\n<fingerprint>"                     PX = the in-flight lease
 *   completed  "C\n<fingerprint>\n<status>\n<n>\n<name>\n<value>...\n<body bytes>"   PX = ttl
 * - begin: one script, `SET key claim NX PX lease`, else `GET key` (atomic, one round trip).
 * - complete: the response replaces the claim only while the claim is still ours (or lapsed),
 *   so a slow replica can never overwrite another request's record.
 * - release: the claim is deleted only if it is still ours.
 * - abandon (outcome unknown): the claim is left in Redis to lapse with its lease.
 * - settled (conflict: wait): polls the key until it is no longer a claim.
 *
 * Failures: `begin` rejects with StoreUnavailableError (the layer applies `on_store_error`);
 * `complete` and `release` never reject (they are fire-and-forget): they are tried again a few
 * times, then a claim left behind lapses with its lease.
 */
import { createHash, randomBytes } from 'node:crypto';
import { sleep } from '../clock.js';
import type { RedisStore } from '../stores/redis.js';
import { script } from '../stores/redis.js';
import type { BeginResult, IdempotencyStore, StoredResponse } from './store.js';

const BEGIN = script(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
`);

const COMPLETE = script(`
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`);

const RELEASE = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`);

const NL = 0x0a;
const RETRY_WAITS = [0, 100, 500, 2000];

/** The completed record of `response`. */
export function encodeCompleted(fingerprint: string, response: StoredResponse): Buffer {
  const head = [
    'C',
    fingerprint,
    String(response.status),
    String(response.headers.length / 2),
    ...response.headers,
    '',
  ].join('\n');
  return Buffer.concat([Buffer.from(head, 'latin1'), response.body]);
}

/** What a record says: a claim or a completed response (undefined: not a record of ours). */
export function decodeRecord(
  buf: Buffer,
):
  | { kind: 'in_flight'; fingerprint: string }
  | { kind: 'completed'; fingerprint: string; response: StoredResponse }
  | undefined {
  let pos = 0;
  const line = (): string | undefined => {
    const end = buf.indexOf(NL, pos);
    if (end < 0) return undefined;
    const s = buf.toString('latin1', pos, end);
    pos = end + 1;
    return s;
  };
  const tag = line();
  if (tag === 'P') {
    line();
    const fingerprint = buf.toString('latin1', pos);
    return { kind: 'in_flight', fingerprint };
  }
  if (tag !== 'C') return undefined;
  const fingerprint = line();
  const status = Number(line());
  const n = Number(line());
  if (fingerprint === undefined || !Number.isInteger(status) || !Number.isInteger(n)) return undefined;
  const headers: string[] = [];
  for (let i = 0; i < n * 2; i++) {
    const h = line();
    if (h === undefined) return undefined;
    headers.push(h);
  }
  return { kind: 'completed', fingerprint, response: { status, headers, body: buf.subarray(pos) } };
}

export class RedisIdempotencyStore implements IdempotencyStore {
  /** Claims this process holds: store key -> the claim record it wrote. */
  private readonly claims = new Map<string, string>();
  private readonly owner = randomBytes(6).toString('hex');
  private seq = 0;

  constructor(private readonly store: RedisStore) {}

  private redisKey(key: string): string {
    return this.store.key('idem', createHash('sha256').update(key).digest('base64url'));
  }

  async begin(key: string, fingerprint: string, ttlMs: number, inFlightMs?: number): Promise<BeginResult> {
    const claim = `P\n${this.owner}.${(this.seq++).toString(36)}\n${fingerprint}`;
    const lease = Math.max(1, Math.round(Math.min(ttlMs, inFlightMs ?? ttlMs)));
    const rk = this.redisKey(key);
    const reply = await this.store.run('idempotency_begin', (c) =>
      this.store.evalScriptBuffer(c, BEGIN, [rk], [claim, lease]),
    );
    if (reply === null || reply === undefined) {
      this.claims.set(key, claim);
      return { kind: 'acquired' };
    }
    const record = Buffer.isBuffer(reply) ? decodeRecord(reply) : undefined;
    // A key written by something else is treated as held by a different request.
    return record ?? { kind: 'in_flight', fingerprint: '' };
  }

  async complete(key: string, response: StoredResponse, ttlMs: number): Promise<void> {
    const claim = this.claims.get(key);
    if (claim === undefined) return;
    this.claims.delete(key);
    const fingerprint = claim.slice(claim.indexOf('\n', 2) + 1);
    const record = encodeCompleted(fingerprint, response);
    const rk = this.redisKey(key);
    const ttl = Math.max(1, Math.round(ttlMs));
    await this.background('idempotency_complete', (c) =>
      this.store.evalScript(c, COMPLETE, [rk], [claim, record, ttl]),
    );
  }

  async release(key: string): Promise<void> {
    const claim = this.claims.get(key);
    if (claim === undefined) return;
    this.claims.delete(key);
    const rk = this.redisKey(key);
    await this.background('idempotency_release', (c) => this.store.evalScript(c, RELEASE, [rk], [claim]));
  }

  async abandon(key: string): Promise<void> {
    this.claims.delete(key);
  }

  /**
   * complete and release run after the response, off the request's path: a failed one is tried
   * again after 100 ms, 500 ms and 2 s (both are compare-and-set on the claim, so a repeat is
   * harmless), and only then left to the claim's lease. Never rejects.
   */
  private async background(op: string, fn: (c: RedisStore['client']) => Promise<unknown>): Promise<void> {
    for (const wait of RETRY_WAITS) {
      if (wait > 0) await sleep(this.store.clock, wait);
      try {
        await this.store.run(op, fn);
        return;
      } catch {
        // counted and noted by the store; tried again
      }
    }
  }

  /** Polls until the key holds no claim (completed, released, lapsed), or `timeoutMs` passed. */
  async settled(key: string, timeoutMs: number): Promise<void> {
    const rk = this.redisKey(key);
    const clock = this.store.clock;
    const end = clock.now() + timeoutMs;
    let wait = 20;
    while (clock.now() < end) {
      await sleep(clock, Math.min(wait, Math.max(1, end - clock.now())));
      wait = Math.min(wait * 2, 200);
      let v: Buffer | null;
      try {
        v = await this.store.run('idempotency_get', (c) => c.getBuffer(rk));
      } catch {
        return;
      }
      if (v === null || v[0] !== 0x50 /* P */) return;
    }
  }
}
