/**
 * The saga log on a real redis-server: records and their indexes, ownership and leases, the
 * fencing check (a replica whose lease lapsed and was taken over cannot write), takeover, release,
 * and what an unreachable Redis does. Two RedisStores stand for two replicas (two instanceIds).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import type { SagaInput } from '../../src/config/schema.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import type { InternalRequest, InternalResult } from '../../src/pipeline/internal-call.js';
import { SagaEngine } from '../../src/sagas/engine.js';
import { SagaFenced } from '../../src/sagas/log.js';
import { type RequestRecord, SAGA_STATES, type SagaRecord, type SagaState } from '../../src/sagas/machine.js';
import { type SagaModel, sagasOf } from '../../src/sagas/model.js';
import { RedisSagaLog } from '../../src/sagas/redis-log.js';
import { RedisStore, StoreUnavailableError } from '../../src/stores/redis.js';
import { type RedisServer, redisTool, startRedis } from '../kit/redis.js';

const request: RequestRecord = {
  method: 'POST',
  path: '/checkout/c-1',
  params: { cart: 'c-1' },
  query: {},
  headers: {},
  body: Buffer.from('{"amount":42}').toString('base64'),
  contentType: 'application/json',
  requestId: 'r-1',
  clientAddress: '127.0.0.1',
};

let seq = 0;
function record(
  state: SagaState = 'running',
  saga = 'checkout',
  createdAt = 1_700_000_000_000 + seq,
): SagaRecord {
  seq++;
  return {
    id: `0000-${String(seq).padStart(6, '0')}`,
    saga,
    state,
    createdAt,
    deadline: createdAt + 30_000,
    updatedAt: createdAt,
    request,
    steps: [{ name: 'order', state: 'pending', statusChecks: 0, compensationAttempts: 0 }],
    history: [{ at: createdAt, event: 'started' }],
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(!redisTool.available)('the saga log on Redis', () => {
  let redis: RedisServer;
  const stores: RedisStore[] = [];
  let prefix = 0;

  const storeOn = (port: number, keyPrefix: string) => {
    const s = new RedisStore(
      {
        host: '127.0.0.1',
        port,
        db: 0,
        username: undefined,
        password: undefined,
        tls: undefined,
        address: `redis://127.0.0.1:${port}/0`,
        keyPrefix,
        commandTimeout: 1000,
        connectTimeout: 2000,
        breaker: { failureThreshold: 100, resetTimeout: 100 },
      },
      createMetrics({ defaultMetrics: false }),
      createLogger({ level: 'silent' }),
      systemClock,
    );
    stores.push(s);
    return s;
  };
  /** Two replicas on one Redis (a fresh key_prefix per test: no test sees another's sagas). */
  const replicas = async (lease: number) => {
    const keyPrefix = `t${prefix++}:`;
    const a = storeOn(redis.port, keyPrefix);
    const b = storeOn(redis.port, keyPrefix);
    await Promise.all([a.waitReady(2000), b.waitReady(2000)]);
    return { a: new RedisSagaLog(() => a, lease), b: new RedisSagaLog(() => b, lease), storeA: a, storeB: b };
  };
  const all = async (it: AsyncIterable<SagaRecord>) => {
    const out: SagaRecord[] = [];
    for await (const r of it) out.push(r);
    return out;
  };

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });
  afterAll(async () => {
    await redis.stop();
  });

  it('keeps each saga with its transitions, lists it by creation and by state, and removes it', async () => {
    const { a, b, storeA } = await replicas(30_000);
    const first = record('running');
    const second = record('running');
    await a.put(first, 'create');
    await a.put(second, 'create');
    await expect(a.put(first, 'create')).rejects.toThrow(/in the log already/);
    first.state = 'completed';
    first.history.push({ at: first.createdAt + 5, event: 'completed' });
    await a.put(first);
    // The other replica reads what this one wrote.
    expect(await b.get(first.id)).toEqual(first);
    expect((await all(b.list())).map((r) => r.id)).toEqual([first.id, second.id]);
    expect((await all(b.list({ reverse: true }))).map((r) => r.id)).toEqual([second.id, first.id]);
    expect((await all(b.list({ state: 'completed' }))).map((r) => r.id)).toEqual([first.id]);
    expect((await all(b.list({ state: 'running' }))).map((r) => r.id)).toEqual([second.id]);
    // A finished saga has no owner and no lease; one in flight has both.
    const hash = (id: string) => storeA.key(`saga:${id}`, 'sagas');
    expect(await storeA.client.hmget(hash(first.id), 'owner', 'lease')).toEqual([null, null]);
    expect((await storeA.client.hget(hash(second.id), 'owner')) as string).toBe(storeA.instanceId);
    expect(await storeA.client.zrange(storeA.key('sagas:lease', 'sagas'), 0, '-1')).toEqual([second.id]);
    expect(await b.remove(first.id)).toBe(true);
    expect(await b.get(first.id)).toBeUndefined();
    for (const s of SAGA_STATES)
      expect((await all(a.list({ state: s }))).map((r) => r.id)).not.toContain(first.id);
  });

  it('fencing: once a lapsed saga is taken over, the stale owner can neither write nor renew it', async () => {
    const { a, b } = await replicas(300);
    const rec = record('running');
    await a.put(rec, 'create');
    // Within the lease: nobody else may take it.
    expect(await b.takeOver(['checkout'])).toEqual([]);
    expect(await a.renew([rec.id])).toEqual([]);
    await sleep(450);
    const taken = await b.takeOver(['checkout']);
    expect(taken.map((r) => r.id)).toEqual([rec.id]);
    // The stale owner's transition is refused, and its renewal reports the saga lost.
    const stale = structuredClone(rec);
    stale.state = 'compensating';
    stale.history.push({ at: rec.createdAt + 1, event: 'step_failed' });
    await expect(a.put(stale)).rejects.toBeInstanceOf(SagaFenced);
    expect(await a.renew([rec.id])).toEqual([rec.id]);
    expect(await a.remove(rec.id)).toBe(false);
    // The new owner writes on; the record is its own.
    const mine = taken[0] as SagaRecord;
    mine.history.push({ at: rec.createdAt + 2, event: 'step_succeeded' });
    await b.put(mine);
    expect((await a.get(rec.id))?.history.map((h) => h.event)).toEqual(['started', 'step_succeeded']);
    // Taken over once: a second round does not take it again while b renews.
    expect(await b.renew([rec.id])).toEqual([]);
    expect(await a.takeOver(['checkout'])).toEqual([]);
  });

  it('takes over only sagas this replica defines, and at once after their owner released them', async () => {
    const { a, b } = await replicas(60_000);
    const known = record('compensating', 'checkout');
    const unknown = record('running', 'refund');
    await a.put(known, 'create');
    await a.put(unknown, 'create');
    expect(await b.takeOver(['checkout', 'refund'])).toEqual([]);
    await a.release([known.id, unknown.id]);
    expect((await b.takeOver(['checkout'])).map((r) => r.id)).toEqual([known.id]);
    // The saga b does not define stays for a replica that does.
    expect((await a.takeOver(['refund'])).map((r) => r.id)).toEqual([unknown.id]);
  });

  it('takes over a lapsed saga it defines behind more than a round of lapsed sagas it does not', async () => {
    const { a, b } = await replicas(60_000);
    const others: SagaRecord[] = [];
    for (let i = 0; i < 150; i++) others.push(record('running', 'refund'));
    const mine = record('running', 'checkout');
    for (const r of [...others, mine]) await a.put(r, 'create');
    // a stops: every lease ends now; the refund sagas (no replica here defines them) come first.
    await a.release([...others, mine].map((r) => r.id));
    expect((await b.takeOver(['checkout'])).map((r) => r.id)).toEqual([mine.id]);
    // The others wait, in flight, for a replica that defines them.
    expect((await a.takeOver(['refund'])).length).toBeGreaterThan(0);
  });

  it("an operator's retry claims a parked saga once; a second retry of it is refused", async () => {
    const { a, b } = await replicas(60_000);
    const rec = record('running');
    await a.put(rec, 'create');
    rec.state = 'failed_to_compensate';
    await a.put(rec);
    const retried = structuredClone(rec);
    retried.state = 'compensating';
    await b.put(retried, 'retry');
    await expect(a.put(structuredClone(retried), 'retry')).rejects.toBeInstanceOf(SagaFenced);
    // b owns it now: a cannot write it, nor forget it while b's lease lives.
    await expect(a.put(structuredClone(retried))).rejects.toBeInstanceOf(SagaFenced);
    expect(await a.remove(rec.id)).toBe(false);
    await b.put(retried);
  });

  it('lists past a page of records, newest first', async () => {
    const { a, b } = await replicas(60_000);
    const ids: string[] = [];
    for (let i = 0; i < 130; i++) {
      const r = record('completed', 'checkout');
      ids.push(r.id);
      await a.put(r, 'create');
    }
    const listed = (await all(b.list({ reverse: true }))).map((r) => r.id);
    expect(listed).toEqual([...ids].reverse());
  });

  it('an unreachable Redis fails a write at once (no queueing), and a write works again once it is back', async () => {
    const { a } = await replicas(60_000);
    await redis.stop();
    const t0 = performance.now();
    await expect(a.put(record('running'), 'create')).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(performance.now() - t0).toBeLessThan(2_000);
    await redis.restart();
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await a.put(record('running'), 'create');
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(100);
      }
    }
  });

  it('two engines: a stale owner whose step answers after the takeover writes nothing and stops; the new owner compensates', async () => {
    const { a, b } = await replicas(300);
    const input: SagaInput = {
      trigger: { listener: 'main', method: 'POST', path: '/go' },
      steps: [
        {
          name: 'order',
          call: { upstream: 'orders', path: '/orders' },
          compensate: { upstream: 'orders', path: '/orders/{{ saga.id }}/cancel' },
        },
      ],
      timeout: 60_000,
      long_running_action: false,
      max_response_bytes: 65536,
      retention: 86_400_000,
    };
    const model = sagasOf({ go: input }, []).go as SagaModel;
    const ok = (status: number): InternalResult => ({
      type: 'response',
      status,
      headers: [],
      body: Buffer.from('{}'),
      attempts: 1,
    });
    // A's step call hangs until released (a GC pause, a partition); B's calls answer at once.
    let answerA: (r: InternalResult) => void = () => undefined;
    const sentB: string[] = [];
    const lostA: unknown[] = [];
    const engineA = new SagaEngine({
      clock: systemClock,
      log: a,
      model: () => model,
      names: () => ['go'],
      call: () => new Promise((r) => (answerA = r)),
      observer: { logFailed: (_rec, err) => lostA.push(err) },
    });
    const engineB = new SagaEngine({
      clock: systemClock,
      log: b,
      model: () => model,
      names: () => ['go'],
      call: async (_u, req: InternalRequest) => {
        sentB.push(`${req.method} ${req.path}`);
        return ok(200);
      },
    });
    const started = engineA.begin(model, request);
    await sleep(450);
    // A never renewed: B takes the saga over (the step is of unknown outcome: it is compensated).
    expect(await engineB.recover()).toBe(1);
    await engineB.idle();
    const [rec] = await all(b.list());
    expect(rec?.state).toBe('compensated');
    expect(sentB).toEqual([`POST /orders/${rec?.id}/cancel`]);
    // A's step answers now: its write is refused, it acts no further, and the client hears 503.
    answerA(ok(201));
    const { answer } = await started;
    expect(answer.status).toBe(503);
    await engineA.idle();
    expect(lostA).toHaveLength(1);
    expect(lostA[0]).toBeInstanceOf(SagaFenced);
    const after = await a.get(rec?.id as string);
    expect(after?.state).toBe('compensated');
    expect(after?.history.map((h) => h.event)).not.toContain('step_succeeded');
  });
});
