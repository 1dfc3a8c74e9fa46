import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/clock.js';
import type { SagaInput } from '../../src/config/schema.js';
import { problem } from '../../src/listener/problem.js';
import type { InternalRequest, InternalResult } from '../../src/pipeline/internal-call.js';
import { SagaEngine } from '../../src/sagas/engine.js';
import { MemorySagaLog, type SagaLog, type SagaWrite } from '../../src/sagas/log.js';
import type { RequestRecord, SagaRecord } from '../../src/sagas/machine.js';
import { type SagaModel, sagasOf } from '../../src/sagas/model.js';

/**
 * A virtual clock driven by `settle()`: pending promises run, then the earliest timer fires (time
 * jumps to it), until nothing is left. Fake services answer after virtual delays, so races between
 * a step's answer and the saga's deadline are decided by virtual time, deterministically.
 */
class VirtualClock implements Clock {
  t = 0;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void }[] = [];
  now(): number {
    return this.t;
  }
  wall(): number {
    return 1_700_000_000_000 + this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const timer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.push(timer);
    return timer;
  }
  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((x) => x !== handle);
  }
  after(ms: number): Promise<void> {
    return new Promise((r) => this.setTimeout(r, ms));
  }
  /** Runs everything to the end (bounded). */
  async settle(limit = 100_000): Promise<void> {
    for (let n = 0; n < limit; n++) {
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers.shift();
      if (!next) return;
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    throw new Error('the clock did not settle');
  }
}

type Outcome = 'ok' | 'fail' | 'unknown_applied' | 'unknown_not_applied' | 'slow';

interface Plan {
  outcomes: Outcome[];
  /** Failures of each step's compensation before it succeeds. */
  compensationFailures: number[];
  compensable: boolean[];
}

const TIMEOUT = 1000;

function modelOf(plan: Plan, maxAttempts = 1000): SagaModel {
  const input: SagaInput = {
    trigger: { listener: 'main', method: 'POST', path: '/go' },
    steps: plan.outcomes.map((_, i) => ({
      name: `s${i}`,
      call: { upstream: `svc${i}`, path: `/do/{{ saga.id }}` },
      ...(plan.compensable[i]
        ? {
            compensate: {
              upstream: `svc${i}`,
              path: '/undo',
              max_attempts: maxAttempts,
              initial_wait: 10,
              max_wait: 1000,
              max_age: 86_400_000,
            },
          }
        : {}),
    })),
    timeout: TIMEOUT,
    long_running_action: false,
    max_response_bytes: 65536,
    retention: 86_400_000,
  };
  const problems: { path: (string | number)[]; message: string }[] = [];
  const m = sagasOf({ go: input }, problems).go as SagaModel;
  expect(problems).toEqual([]);
  return m;
}

/** Fake services, one per step, deduplicating by Idempotency-Key as the issue asks of them. */
class Services {
  readonly applied = new Set<number>();
  /** Effective compensations, in order (a repeated key is not applied twice). */
  readonly undone: number[] = [];
  readonly undoCalls: number[] = [];
  readonly seenKeys = new Set<string>();
  private readonly compFailuresLeft: number[];
  dead = false;
  constructor(
    private readonly plan: Plan,
    private readonly clock: VirtualClock,
  ) {
    this.compFailuresLeft = [...plan.compensationFailures];
  }

  call = async (upstream: string, req: InternalRequest): Promise<InternalResult> => {
    const i = Number(upstream.slice(3));
    const key = headerOf(req, 'idempotency-key') ?? '';
    const ok = (status: number): InternalResult => ({
      type: 'response',
      status,
      headers: ['content-type', 'application/json'],
      body: Buffer.from('{"id": 1}'),
      attempts: 1,
    });
    if (req.path === '/undo') {
      expect(key).toMatch(new RegExp(`:s${i}:compensate$`));
      await this.clock.after(5);
      if (this.dead) return new Promise(() => undefined);
      this.undoCalls.push(i);
      if ((this.compFailuresLeft[i] ?? 0) > 0) {
        this.compFailuresLeft[i] = (this.compFailuresLeft[i] as number) - 1;
        return ok(503);
      }
      if (!this.seenKeys.has(key)) {
        this.seenKeys.add(key);
        if (this.applied.has(i)) this.undone.push(i);
      }
      return ok(200);
    }
    expect(key).toMatch(new RegExp(`:s${i}$`));
    const outcome = this.plan.outcomes[i] as Outcome;
    await this.clock.after(outcome === 'slow' ? TIMEOUT * 2 : 10);
    if (this.dead) return new Promise(() => undefined);
    const first = !this.seenKeys.has(key);
    this.seenKeys.add(key);
    switch (outcome) {
      case 'fail':
        return ok(422);
      case 'unknown_not_applied':
      case 'unknown_applied':
        if (outcome === 'unknown_applied' && first) this.applied.add(i);
        return {
          type: 'failure',
          problem: problem('upstream-timeout', 'no answer'),
          cause: 'timeout',
          maybeProcessed: true,
          attempts: 1,
        };
      default:
        if (first) this.applied.add(i);
        return ok(201);
    }
  };
}

function headerOf(req: InternalRequest, name: string): string | undefined {
  for (let i = 0; i < req.headers.length; i += 2) if (req.headers[i] === name) return req.headers[i + 1];
  return undefined;
}

const request: RequestRecord = {
  method: 'POST',
  path: '/go',
  params: {},
  query: {},
  headers: {},
  body: null,
  contentType: undefined,
  requestId: 'r-1',
  clientAddress: undefined,
};

/** A log that dies (like the process) after `after` writes: later writes never complete. */
class DyingLog implements SagaLog {
  readonly backend = 'embedded';
  readonly lease = undefined;
  constructor(
    readonly inner: MemorySagaLog,
    private after: number,
    private readonly onDeath: () => void,
  ) {}
  put(rec: SagaRecord, how?: SagaWrite): Promise<void> {
    if (this.after-- <= 0) {
      this.onDeath();
      return new Promise(() => undefined);
    }
    return this.inner.put(rec, how);
  }
  get(id: string) {
    return this.inner.get(id);
  }
  list() {
    return this.inner.list();
  }
  remove(id: string) {
    return this.inner.remove(id);
  }
  takeOver(names: readonly string[]) {
    return this.inner.takeOver(names);
  }
  renew() {
    return this.inner.renew();
  }
  release() {
    return this.inner.release();
  }
}

const planArb = fc.integer({ min: 1, max: 5 }).chain((n) =>
  fc.record({
    outcomes: fc.array(
      fc.constantFrom<Outcome>('ok', 'ok', 'ok', 'fail', 'unknown_applied', 'unknown_not_applied', 'slow'),
      {
        minLength: n,
        maxLength: n,
      },
    ),
    compensationFailures: fc.array(fc.integer({ min: 0, max: 6 }), { minLength: n, maxLength: n }),
    compensable: fc
      .array(fc.boolean(), { minLength: n, maxLength: n })
      .map((a) => a.map((c, i) => c || i % 2 === 0)),
  }),
);

/** The steps a run reaches: up to and including the first that does not succeed at once. */
function reached(plan: Plan): number {
  const i = plan.outcomes.findIndex((o) => o !== 'ok');
  return i < 0 ? plan.outcomes.length : i + 1;
}

describe('saga engine (state machine, virtual clock, fake services)', () => {
  it('every failing run compensates exactly the completed steps, in reverse order, each once', async () => {
    await fc.assert(
      fc.asyncProperty(planArb, async (plan) => {
        const clock = new VirtualClock();
        const log = new MemorySagaLog();
        const svc = new Services(plan, clock);
        const model = modelOf(plan);
        const engine = new SagaEngine({ clock, call: svc.call, log, model: () => model });
        const started = engine.begin(model, request);
        await clock.settle();
        const { id, answer } = await started;
        await engine.idle();
        const rec = log.peek(id) as SagaRecord;
        const failing = plan.outcomes.some((o) => o !== 'ok');
        if (!failing) {
          expect(rec.state).toBe('completed');
          expect(answer.status).toBe(201);
          expect(svc.undoCalls).toEqual([]);
          return;
        }
        expect(rec.state).toBe('compensated');
        expect(answer.status).toBeGreaterThanOrEqual(400);
        // Sent and applied (or maybe applied) steps with a compensation: undone, last first.
        const n = reached(plan);
        const expected = [...Array(n).keys()]
          .filter((i) => plan.compensable[i] && plan.outcomes[i] !== 'fail')
          .reverse();
        const firstCalls = svc.undoCalls.filter((x, k) => svc.undoCalls.indexOf(x) === k);
        expect(firstCalls).toEqual(expected);
        expect(svc.undone).toEqual(expected.filter((i) => svc.applied.has(i)));
        // Each compensation was called until its first success and never after it.
        for (const i of expected)
          expect(svc.undoCalls.filter((x) => x === i).length).toBe(
            (plan.compensationFailures[i] as number) + 1,
          );
        // Applied steps without a compensation stay; nothing past the failure ran.
        expect(svc.seenKeys.size).toBeGreaterThan(0);
        for (let i = n; i < plan.outcomes.length; i++) expect(rec.steps[i]?.state).toBe('pending');
      }),
      { numRuns: 150 },
    );
  });

  it('a crash at any write, then recovery: every applied step is compensated exactly once, last first', async () => {
    await fc.assert(
      fc.asyncProperty(planArb, fc.integer({ min: 1, max: 40 }), async (plan, crashAfter) => {
        fc.pre(plan.outcomes.some((o) => o !== 'ok'));
        const clock = new VirtualClock();
        const durable = new MemorySagaLog();
        const svc = new Services(plan, clock);
        const model = modelOf(plan);
        const dying = new DyingLog(durable, crashAfter, () => {
          svc.dead = true;
        });
        const first = new SagaEngine({ clock, call: svc.call, log: dying, model: () => model });
        void first.begin(model, request).catch(() => undefined);
        await clock.settle();
        // A new process on the same log (what was written survived), the same services.
        svc.dead = false;
        const second = new SagaEngine({
          clock,
          call: svc.call,
          log: durable,
          model: () => model,
          names: () => [model.name],
        });
        await second.recover();
        await clock.settle();
        await second.idle();
        expect(durable.all().map((r) => r.state)).toEqual(['compensated']);
        const compensable = [...svc.applied].filter((i) => plan.compensable[i]).sort((a, b) => b - a);
        expect(svc.undone.filter((i) => plan.compensable[i])).toEqual(compensable);
        // Never twice, whatever happened.
        expect(new Set(svc.undone).size).toBe(svc.undone.length);
      }),
      { numRuns: 150 },
    );
  });

  it('a compensation that keeps failing gives up after max_attempts: failed_to_compensate, retried by an operator', async () => {
    const plan: Plan = { outcomes: ['ok', 'fail'], compensationFailures: [8, 0], compensable: [true, true] };
    const clock = new VirtualClock();
    const log = new MemorySagaLog();
    const svc = new Services(plan, clock);
    const model = modelOf(plan, 5);
    const outcomes: string[] = [];
    const engine = new SagaEngine({
      clock,
      call: svc.call,
      log,
      model: () => model,
      observer: { compensation: (_r, step, o) => outcomes.push(`${step}:${o}`) },
    });
    const started = engine.begin(model, request);
    await clock.settle();
    const { id } = await started;
    await engine.idle();
    expect(log.peek(id)?.state).toBe('failed_to_compensate');
    expect(svc.undoCalls).toEqual([0, 0, 0, 0, 0]);
    expect(outcomes.at(-1)).toBe('s0:gave_up');
    expect(log.peek(id)?.steps[0]?.state).toBe('compensation_failed');
    expect(await engine.retry(id)).toBe('ok');
    await clock.settle();
    await engine.idle();
    expect(log.peek(id)?.state).toBe('compensated');
    expect(svc.undone).toEqual([0]);
  });
});

describe('saga ids', () => {
  it('are UUIDs (version 7 layout) that sort by creation time', async () => {
    const { timeOrderedId } = await import('../../src/sagas/engine.js');
    const ids = [1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000].map((t) => timeOrderedId(t));
    for (const id of ids)
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(Array.from({ length: 1000 }, () => timeOrderedId(1))).size).toBe(1000);
  });
});

describe('steps of unknown outcome with a status call', () => {
  const statusModel = (): SagaModel => {
    const input: SagaInput = {
      trigger: { listener: 'main', method: 'POST', path: '/go' },
      steps: [
        {
          name: 's0',
          call: { upstream: 'svc0', path: '/do' },
          compensate: { upstream: 'svc0', path: '/undo' },
        },
        {
          name: 's1',
          call: { upstream: 'svc1', path: '/do' },
          compensate: { upstream: 'svc1', path: '/undo' },
          status: { upstream: 'svc1', path: '/status/{{ saga.id }}', max_attempts: 3, initial_wait: 10 },
        },
      ],
      timeout: 10_000,
      long_running_action: false,
      max_response_bytes: 65536,
      retention: 86_400_000,
    };
    return sagasOf({ go: input }, []).go as SagaModel;
  };

  async function run(statusAnswers: number[]) {
    const clock = new VirtualClock();
    const log = new MemorySagaLog();
    const calls: string[] = [];
    const answers = [...statusAnswers];
    const call = async (upstream: string, req: InternalRequest): Promise<InternalResult> => {
      await clock.after(5);
      calls.push(`${upstream} ${req.method} ${req.path.replace(/\/status\/.*/, '/status')}`);
      if (upstream === 'svc1' && req.path === '/do')
        return {
          type: 'failure',
          problem: problem('upstream-timeout', 'no answer'),
          cause: 'timeout',
          maybeProcessed: true,
          attempts: 1,
        };
      const status = req.path.startsWith('/status') ? (answers.shift() ?? 503) : 200;
      return { type: 'response', status, headers: [], body: Buffer.from('{}'), attempts: 1 };
    };
    const model = statusModel();
    const engine = new SagaEngine({ clock, call, log, model: () => model });
    const started = engine.begin(model, request);
    await clock.settle();
    const { id, answer } = await started;
    await engine.idle();
    return { rec: log.peek(id) as SagaRecord, calls, answer };
  }

  it('status 2xx: the step was applied and the saga completes', async () => {
    const { rec, calls, answer } = await run([503, 200]);
    expect(rec.state).toBe('completed');
    expect(answer.status).toBe(200);
    expect(calls).toEqual(['svc0 POST /do', 'svc1 POST /do', 'svc1 GET /status', 'svc1 GET /status']);
  });

  it('status 404: the step was not applied; only the step before it is compensated', async () => {
    const { rec, calls } = await run([404]);
    expect(rec.state).toBe('compensated');
    expect(rec.steps.map((s) => s.state)).toEqual(['compensated', 'not_applied']);
    expect(calls).toEqual(['svc0 POST /do', 'svc1 POST /do', 'svc1 GET /status', 'svc0 POST /undo']);
  });

  it('a status that stays unclear: after max_attempts the step is compensated as if applied', async () => {
    const { rec, calls } = await run([503, 503, 503]);
    expect(rec.state).toBe('compensated');
    expect(calls.slice(2)).toEqual([
      'svc1 GET /status',
      'svc1 GET /status',
      'svc1 GET /status',
      'svc1 POST /undo',
      'svc0 POST /undo',
    ]);
  });
});

describe('retention', () => {
  it('removes completed and compensated sagas past their retention, never parked ones', async () => {
    const clock = new VirtualClock();
    const log = new MemorySagaLog();
    const ok: Plan = { outcomes: ['ok'], compensationFailures: [0], compensable: [true] };
    const failing: Plan = {
      outcomes: ['ok', 'fail'],
      compensationFailures: [99, 0],
      compensable: [true, true],
    };
    const ids: string[] = [];
    for (const [plan, attempts] of [
      [ok, 10],
      [failing, 2],
    ] as const) {
      const model = modelOf(plan, attempts);
      const engine = new SagaEngine({ clock, call: new Services(plan, clock).call, log, model: () => model });
      const started = engine.begin(model, request);
      await clock.settle();
      ids.push((await started).id);
      await engine.idle();
    }
    expect(ids.map((id) => log.peek(id)?.state)).toEqual(['completed', 'failed_to_compensate']);
    const model = modelOf(ok);
    const engine = new SagaEngine({
      clock,
      call: async () => ({ type: 'response', status: 200, headers: [], body: Buffer.alloc(0), attempts: 1 }),
      log,
      model: () => model,
      names: () => ['go'],
    });
    expect(await engine.sweep()).toBe(0);
    clock.t += 86_400_000 + 1;
    expect(await engine.sweep()).toBe(1);
    expect(log.peek(ids[0] as string)).toBeUndefined();
    expect(log.peek(ids[1] as string)?.state).toBe('failed_to_compensate');
  });
});
