/**
 * Deferred delivery's judgements (which live outcomes may be deferred, what an answer does to an
 * item) and the queue on a real embedded store with a manual clock: lanes in arrival order, caps,
 * recovery of `delivering` items, retention.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AttemptError } from '../../src/attempt/attempt.js';
import type { DeferredPolicy, DeferredStoreModel } from '../../src/config/resolve.js';
import { deferTrigger, judgeDelivery, nextDelay } from '../../src/deferred/model.js';
import { DeferredQueue, type NewItem } from '../../src/deferred/queue.js';
import { problem } from '../../src/listener/problem.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import type { InternalResult } from '../../src/pipeline/internal-call.js';
import { newContext, type Outcome, type RequestContext } from '../../src/pipeline/types.js';
import { EmbeddedStore } from '../../src/stores/embedded.js';
import { ManualClock } from '../kit/clock.js';

const policy: DeferredPolicy = {
  on: new Set(['connect_failure', 'breaker_open', 'timeout_before_send']),
  onStatus: new Set([503]),
  methods: new Set(['POST']),
  requireIdempotencyKey: true,
  maxAge: 60_000,
  maxAttempts: 0,
  schedule: [100, 1_000],
  orderingKey: 'x-customer',
};

function ctx(maybeProcessed: boolean): RequestContext {
  const c = newContext({
    req: {} as RequestContext['req'],
    peer: undefined,
    res: {} as RequestContext['res'],
    route: {} as RequestContext['route'],
    upstream: {} as RequestContext['upstream'],
    requestId: 'r',
    method: 'POST',
    path: '/',
    start: 0,
    body: null,
    grpc: false,
    grpcTimeout: 0,
    unbufferedResponse: false,
  });
  c.maybeProcessed = maybeProcessed;
  return c;
}

const failure = (kind: ConstructorParameters<typeof AttemptError>[0]): Outcome => ({
  type: 'failure',
  error: new AttemptError(kind, kind, false),
  endpoint: undefined,
});

describe('which live outcomes are deferred', () => {
  it('a connect failure, an open breaker, a listed 5xx, a timeout before the request was sent', () => {
    expect(deferTrigger(failure('connect-failure'), ctx(false), policy, false)).toBe('connect_failure');
    expect(deferTrigger(failure('connect-timeout'), ctx(false), policy, false)).toBe('connect_failure');
    expect(
      deferTrigger({ type: 'problem', problem: problem('circuit-open', 'x') }, ctx(false), policy, false),
    ).toBe('breaker_open');
    expect(deferTrigger(failure('timeout'), ctx(false), policy, false)).toBe('timeout_before_send');
  });

  it('never one the upstream may have processed, unless it carries an Idempotency-Key', () => {
    expect(deferTrigger(failure('timeout'), ctx(true), policy, false)).toBeUndefined();
    expect(deferTrigger(failure('timeout'), ctx(true), policy, true)).toBe('timeout_before_send');
    expect(deferTrigger(failure('reset'), ctx(true), policy, true)).toBeUndefined();
    expect(deferTrigger(failure('reset'), ctx(false), policy, true)).toBe('connect_failure');
    expect(deferTrigger(failure('client-aborted'), ctx(false), policy, true)).toBeUndefined();
  });

  it('only the triggers `on` names', () => {
    expect(
      deferTrigger({ type: 'problem', problem: problem('bulkhead-full', 'x') }, ctx(false), policy, true),
    ).toBeUndefined();
    expect(
      deferTrigger(
        { type: 'problem', problem: problem('idempotency-conflict', 'x') },
        ctx(false),
        policy,
        true,
      ),
    ).toBeUndefined();
  });
});

const answer = (status: number): InternalResult => ({
  type: 'response',
  status,
  headers: [],
  body: Buffer.alloc(0),
  attempts: 1,
});

describe('what a delivery answer does', () => {
  it('2xx synced; 4xx and 3xx failed at once; 5xx, 408, 425, 429 tried again', () => {
    expect(judgeDelivery(answer(201)).to).toBe('synced');
    for (const s of [400, 404, 409, 422, 301]) expect(judgeDelivery(answer(s)).to, String(s)).toBe('failed');
    for (const s of [500, 503, 408, 425, 429]) expect(judgeDelivery(answer(s)).to, String(s)).toBe('pending');
  });

  it("a policy's refusal is tried again without counting as an attempt", () => {
    const refused: InternalResult = {
      type: 'failure',
      problem: problem('circuit-open', 'x'),
      cause: 'refused',
      maybeProcessed: false,
      attempts: 0,
    };
    expect(judgeDelivery(refused)).toEqual({ to: 'pending', counted: false });
    expect(judgeDelivery({ ...refused, cause: 'connect-failure' })).toEqual({ to: 'pending', counted: true });
  });

  it('the schedule: each step with at most 20% jitter, the last one repeated', () => {
    expect(nextDelay([100, 1_000], 0, () => 0)).toBe(80);
    expect(nextDelay([100, 1_000], 0, () => 1)).toBe(120);
    expect(nextDelay([100, 1_000], 7, () => 0.5)).toBe(1_000);
  });
});

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function openQueue(dir: string, clock: ManualClock, caps: Partial<DeferredStoreModel> = {}) {
  const store = await EmbeddedStore.open(dir);
  const queue = await DeferredQueue.open(store, {
    metrics: createMetrics({ defaultMetrics: false }),
    logger: createLogger({ level: 'silent' }),
    clock,
    random: () => 0.5,
    caps: () => ({
      maxItems: 100,
      maxBytes: 1 << 20,
      retention: 10_000,
      concurrency: 4,
      backend: 'embedded',
      lease: 30_000,
      ...caps,
    }),
  });
  return { store, queue };
}

const item = (key: string, orderingKey: string | undefined): NewItem => ({
  route: 'orders',
  upstream: 'orders',
  method: 'POST',
  path: '/orders',
  headers: ['idempotency-key', key],
  body: Buffer.from(key),
  requestId: key,
  clientAddress: '127.0.0.1',
  idempotencyKey: key,
  orderingKey,
  reason: 'connect_failure',
  schedule: [100],
  maxAttempts: 0,
  maxAge: 60_000,
});

describe('the queue on the embedded store', () => {
  it('hands out one item per lane in arrival order; a lane moves on once its head is settled', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bw-dq-'));
    dirs.push(dir);
    const clock = new ManualClock();
    const { store, queue } = await openQueue(dir, clock);
    try {
      for (const k of ['a1', 'a2', 'a3']) await queue.enqueue(item(k, 'A'), 0);
      await queue.enqueue(item('b1', 'B'), 0);
      const first = await queue.take(() => 10);
      expect(first.items.map((i) => i.idempotencyKey)).toEqual(['a1', 'b1']);
      expect((await queue.take(() => 10)).items).toEqual([]);
      await queue.settle(first.items[0] as NonNullable<(typeof first.items)[0]>, answer(500));
      // a1 waits for its next try (100 ms); a2 stays behind it.
      expect((await queue.take(() => 10)).items).toEqual([]);
      clock.advance(100);
      const again = await queue.take(() => 10);
      expect(again.items.map((i) => i.idempotencyKey)).toEqual(['a1']);
      await queue.settle(again.items[0] as NonNullable<(typeof again.items)[0]>, answer(201));
      expect((await queue.take(() => 10)).items.map((i) => i.idempotencyKey)).toEqual(['a2']);
      // The same key while its item waits: that item, not a second one.
      expect((await queue.enqueue(item('a3', 'A'), 0)).kind).toBe('existing');
    } finally {
      await queue.close();
      await store.close();
    }
  });

  it('refuses past max_items and max_bytes, storing nothing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bw-dq-'));
    dirs.push(dir);
    const { store, queue } = await openQueue(dir, new ManualClock(), { maxItems: 2, maxBytes: 200 });
    try {
      expect((await queue.enqueue(item('x1', undefined), 0)).kind).toBe('stored');
      expect((await queue.enqueue(item('x2', undefined), 0)).kind).toBe('stored');
      expect((await queue.enqueue(item('x3', undefined), 0)).kind).toBe('full');
      expect(queue.list({}, 10).items.length).toBe(2);
    } finally {
      await queue.close();
      await store.close();
    }
  });

  it('items left delivering go back to pending at the next open; finished ones go after retention', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bw-dq-'));
    dirs.push(dir);
    const clock = new ManualClock();
    let { store, queue } = await openQueue(dir, clock);
    await queue.enqueue(item('r1', undefined), 0);
    await queue.enqueue(item('r2', undefined), 0);
    const taken = await queue.take(() => 1);
    expect(taken.items.length).toBe(1);
    await queue.cancel((queue.list({ status: 'pending' }, 10).items[0] as { id: string }).id);
    // As after a crash: the lock released, the store closed, the item still `delivering` on disk.
    await queue.close();
    await store.close();
    ({ store, queue } = await openQueue(dir, clock));
    try {
      expect(queue.list({ status: 'pending' }, 10).items.map((i) => i.idempotencyKey)).toEqual([
        taken.items[0]?.idempotencyKey,
      ]);
      expect(queue.list({ status: 'cancelled' }, 10).items.length).toBe(1);
      clock.advance(10_001);
      expect(await queue.sweep()).toBe(1);
      expect(queue.list({}, 10).items.length).toBe(1);
    } finally {
      await queue.close();
      await store.close();
    }
  });

  it('an earlier item replayed into a lane that is delivering goes next, once that delivery is over', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bw-dq-'));
    dirs.push(dir);
    const clock = new ManualClock();
    const { store, queue } = await openQueue(dir, clock);
    try {
      for (const k of ['p1', 'p2', 'p3']) await queue.enqueue(item(k, 'P'), 0);
      const t1 = await queue.take(() => 10);
      await queue.settle(t1.items[0] as NonNullable<(typeof t1.items)[0]>, answer(400)); // p1 failed
      const t2 = await queue.take(() => 10);
      expect(t2.items.map((i) => i.idempotencyKey)).toEqual(['p2']);
      const p1 = queue.list({ status: 'failed' }, 10).items[0] as { id: string };
      expect((await queue.replay(p1.id)).ok).toBe(true);
      // p2 is still being delivered: nothing else of the lane goes meanwhile.
      expect((await queue.take(() => 10)).items).toEqual([]);
      await queue.settle(t2.items[0] as NonNullable<(typeof t2.items)[0]>, answer(201));
      expect((await queue.take(() => 10)).items.map((i) => i.idempotencyKey)).toEqual(['p1']);
    } finally {
      await queue.close();
      await store.close();
    }
  });
});
