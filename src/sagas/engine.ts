/**
 * Runs sagas: performs what the state machine (machine.ts) decides, one action at a time, and
 * writes every transition to the saga log before acting on it. Time (`Clock`) and the calls to
 * upstreams (`StepCaller`) are injected, so tests drive it with a virtual clock and fake services.
 *
 * A saga started by a request runs its steps while the client waits; once the steps are done, or
 * one failed, the client gets its answer and compensations (retried with backoff, possibly for an
 * hour) go on in the background. At start-up every saga the log holds as running or compensating
 * is driven again from its last written state: a step that was in flight has an unknown outcome.
 */
import { randomUUID } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { InternalRequest, InternalResult } from '../pipeline/internal-call.js';
import { SagaFenced, type SagaLog } from './log.js';
import {
  type Action,
  type Answer,
  apply,
  decide,
  type FailureNote,
  inFlight,
  type RequestRecord,
  type SagaEvent,
  type SagaRecord,
  type StepPolicy,
} from './machine.js';
import type { RetryModel, SagaAnswerModel, SagaCallModel, SagaModel } from './model.js';
import { RenderError, type RenderInput, render } from './template.js';

export type StepCaller = (
  upstream: string,
  request: InternalRequest,
  maxResponseBytes: number,
) => Promise<InternalResult>;

/** Hooks for metrics and logs. */
export interface SagaObserver {
  transition?(rec: SagaRecord, event: SagaEvent): void;
  /** A saga reached completed, compensated or failed_to_compensate. */
  finished?(rec: SagaRecord): void;
  compensation?(rec: SagaRecord, step: string, outcome: 'success' | 'failure' | 'gave_up'): void;
  recovered?(rec: SagaRecord): void;
  /**
   * The log could not be written (or refused the write: another replica owns the saga now): the
   * saga stops here until it is recovered (the next start, or a takeover after its lease).
   */
  logFailed?(rec: SagaRecord, err: unknown): void;
}

export interface EngineDeps {
  readonly clock: Clock;
  readonly call: StepCaller;
  readonly log: SagaLog;
  /** The live definition of a saga (a reload may change or remove it). */
  readonly model: (name: string) => SagaModel | undefined;
  /** The names of the sagas defined now (for the retention sweep). */
  readonly names?: () => readonly string[];
  readonly observer?: SagaObserver;
  readonly newId?: () => string;
  /** The saga's URL, for the Long-Running-Action header. */
  readonly sagaUrl?: (id: string) => string;
}

/** What the client of the trigger request gets. */
export interface ClientAnswer {
  readonly status: number;
  /** Flat [name, value, ...]. */
  readonly headers: readonly string[];
  readonly body: Buffer;
  /** A problem breakwater words itself (not an upstream's answer). */
  readonly problem?: { readonly kind: string; readonly detail: string } | undefined;
}

/** Longest wait at stop for the sagas' current actions. */
const STOP_WAIT = 2000;

export class LogUnavailable extends Error {
  override readonly name = 'LogUnavailable';
}

export class SagaEngine {
  /** Sagas being driven now, by id: the drive loop's promise and the saga's name. */
  private readonly live = new Map<string, Promise<void>>();
  private readonly liveSaga = new Map<string, string>();
  private readonly waits = new Set<{ id: string; handle: unknown; wake: () => void }>();
  /** Sagas this process lost (another replica owns them now): their loop ends at its next turn. */
  private readonly lost = new Set<string>();
  private stopped = false;
  /** Parsed JSON of answers and request bodies, for templates. */
  private readonly json = new WeakMap<object, unknown>();

  constructor(private readonly deps: EngineDeps) {}

  /** Sagas driven now, by saga name. */
  inFlightBy(): Map<string, number> {
    const by = new Map<string, number>();
    for (const saga of this.liveSaga.values()) by.set(saga, (by.get(saga) ?? 0) + 1);
    return by;
  }

  /**
   * Starts a saga for a request: writes its record, then runs the steps. Resolves with what the
   * client gets once the steps are done or one failed (compensations go on afterwards). Rejects
   * with LogUnavailable when the record cannot be written (nothing was sent then).
   */
  async begin(model: SagaModel, request: RequestRecord): Promise<{ id: string; answer: ClientAnswer }> {
    if (this.stopped) throw new LogUnavailable('breakwater is shutting down');
    const now = this.deps.clock.wall();
    const rec: SagaRecord = {
      id: this.deps.newId?.() ?? timeOrderedId(now),
      saga: model.name,
      state: 'running',
      createdAt: now,
      deadline: now + model.timeout,
      updatedAt: now,
      request,
      steps: model.steps.map((s) => ({
        name: s.name,
        state: 'pending',
        statusChecks: 0,
        compensationAttempts: 0,
      })),
      history: [{ at: now, event: 'started' }],
    };
    try {
      await this.deps.log.put(rec, 'create');
    } catch (err) {
      throw new LogUnavailable(`the saga log cannot be written: ${(err as Error).message}`);
    }
    let answered: (a: ClientAnswer) => void = () => undefined;
    const answer = new Promise<ClientAnswer>((resolve) => {
      answered = resolve;
    });
    this.track(rec, model, (r) => answered(this.clientAnswer(r, model)));
    // A saga stopped before its steps ended (shutdown, a log failure) still answers its client.
    void this.live.get(rec.id)?.then(() => {
      answered(this.clientAnswer(rec, model));
    });
    return { id: rec.id, answer: await answer };
  }

  /**
   * Drives every saga in flight the log hands this process (log.takeOver: at start on the embedded
   * log, those whose lease lapsed on Redis). Returns how many.
   */
  async recover(): Promise<number> {
    const names = (this.deps.names?.() ?? []).filter((n) => this.deps.model(n) !== undefined);
    let n = 0;
    for (const rec of await this.deps.log.takeOver(names)) {
      if (this.stopped || this.live.has(rec.id)) continue;
      const model = this.deps.model(rec.saga);
      if (!model) continue;
      n++;
      this.deps.observer?.recovered?.(rec);
      this.track(rec, model);
    }
    return n;
  }

  /** Ids of the sagas this process drives now (their leases are renewed). */
  liveIds(): string[] {
    return [...this.live.keys()];
  }

  /** Stops driving a saga another process owns now (its lease was lost): it ends at its next turn. */
  abandon(id: string): void {
    if (!this.live.has(id)) return;
    this.lost.add(id);
    for (const w of this.waits)
      if (w.id === id) {
        this.deps.clock.clearTimeout(w.handle);
        w.wake();
      }
  }

  /** An operator's retry of a saga that failed to compensate. */
  async retry(id: string): Promise<'ok' | 'not_found' | 'conflict' | 'unknown_saga'> {
    const rec = await this.deps.log.get(id);
    if (!rec) return 'not_found';
    if (rec.state !== 'failed_to_compensate' || this.live.has(id)) return 'conflict';
    const model = this.deps.model(rec.saga);
    if (!model) return 'unknown_saga';
    this.transition(rec, { type: 'retry_requested' });
    try {
      await this.deps.log.put(rec, 'retry');
    } catch (err) {
      // Another replica's operator retried it first.
      if (err instanceof SagaFenced) return 'conflict';
      throw err;
    }
    this.track(rec, model);
    return 'ok';
  }

  /** Removes a saga's record (not while it runs, here or on another replica). */
  async forget(id: string): Promise<'ok' | 'not_found' | 'conflict'> {
    const rec = await this.deps.log.get(id);
    if (!rec) return 'not_found';
    if (this.live.has(id)) return 'conflict';
    return (await this.deps.log.remove(id)) ? 'ok' : 'conflict';
  }

  /**
   * Removes completed and compensated sagas older than their retention. Returns how many. The log
   * is read oldest first and only as far as a saga could have expired (ids are time-ordered).
   */
  async sweep(defaultRetention = 86_400_000): Promise<number> {
    const now = this.deps.clock.wall();
    const retentions = [defaultRetention];
    for (const name of this.deps.names?.() ?? [])
      retentions.push(this.deps.model(name)?.retention ?? defaultRetention);
    const horizon = now - Math.min(...retentions);
    const expired: string[] = [];
    for (const state of ['completed', 'compensated'] as const)
      for await (const rec of this.deps.log.list({ state })) {
        if (rec.createdAt > horizon) break;
        const keep = this.deps.model(rec.saga)?.retention ?? defaultRetention;
        if ((rec.finishedAt ?? rec.updatedAt) + keep > now || this.live.has(rec.id)) continue;
        expired.push(rec.id);
      }
    for (const id of expired) await this.deps.log.remove(id);
    return expired.length;
  }

  /** Stops driving sagas (their records stay; the next start recovers them). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.waits) {
      this.deps.clock.clearTimeout(w.handle);
      w.wake();
    }
    this.waits.clear();
    // A step call in flight is bounded by its upstream's request_timeout; shutdown does not wait
    // that long (what it was doing is in the log, and the next start recovers it).
    let timer: unknown;
    await Promise.race([
      Promise.allSettled([...this.live.values()]),
      new Promise((r) => {
        timer = this.deps.clock.setTimeout(() => r(undefined), STOP_WAIT);
      }),
    ]);
    this.deps.clock.clearTimeout(timer);
  }

  /** Resolves when no saga is being driven (tests). */
  async idle(): Promise<void> {
    while (this.live.size) await Promise.allSettled([...this.live.values()]);
  }

  private track(rec: SagaRecord, model: SagaModel, forwardEnded?: (rec: SagaRecord) => void): void {
    const run = this.drive(rec, model, forwardEnded)
      .catch((err: unknown) => this.deps.observer?.logFailed?.(rec, err))
      .finally(() => {
        this.live.delete(rec.id);
        this.liveSaga.delete(rec.id);
        this.lost.delete(rec.id);
      });
    this.live.set(rec.id, run);
    this.liveSaga.set(rec.id, rec.saga);
  }

  private transition(rec: SagaRecord, e: SagaEvent): void {
    apply(rec, e, this.deps.clock.wall());
    this.deps.observer?.transition?.(rec, e);
    if (!inFlight(rec.state)) this.deps.observer?.finished?.(rec);
  }

  /** The state machine's loop: decide, act, write, until nothing is left to do. */
  private async drive(
    rec: SagaRecord,
    model: SagaModel,
    forwardEnded?: (rec: SagaRecord) => void,
  ): Promise<void> {
    const policies = policiesOf(model);
    let ended = false;
    const endForward = () => {
      if (!ended && rec.state !== 'running') {
        ended = true;
        forwardEnded?.(rec);
      }
    };
    while (!this.stopped && !this.lost.has(rec.id)) {
      const action: Action = decide(rec, policies, this.deps.clock.wall());
      if (action.kind === 'none') break;
      switch (action.kind) {
        case 'event':
          this.transition(rec, action.event);
          await this.deps.log.put(rec);
          break;
        case 'wait':
          await this.sleepUntil(rec.id, action.until);
          break;
        case 'call':
          await this.callStep(rec, model, action.step, endForward);
          break;
        case 'check':
          await this.checkStep(rec, model, action.step);
          break;
        case 'compensate':
          await this.compensateStep(rec, model, action.step);
          break;
      }
      endForward();
    }
  }

  private async callStep(
    rec: SagaRecord,
    model: SagaModel,
    i: number,
    endForward: () => void,
  ): Promise<void> {
    const step = model.steps[i] as SagaModel['steps'][number];
    let request: InternalRequest;
    try {
      request = this.request(rec, model, step.call, `${rec.id}:${step.name}`, true);
    } catch (err) {
      if (!(err instanceof RenderError)) throw err;
      // Nothing was sent: the step failed before it started.
      this.transition(rec, { type: 'step_started', step: i });
      this.transition(rec, {
        type: 'step_failed',
        step: i,
        failure: { kind: 'bad-request', status: 400, detail: `step ${step.name}: ${err.message}` },
      });
      await this.deps.log.put(rec);
      return;
    }
    this.transition(rec, { type: 'step_started', step: i });
    await this.deps.log.put(rec);
    const sent = this.deps.call(step.call.upstream, request, model.maxResponseBytes);
    const timedOut = Symbol('timedOut');
    let timer: unknown;
    const deadline = new Promise<typeof timedOut>((resolve) => {
      timer = this.deps.clock.setTimeout(
        () => resolve(timedOut),
        Math.max(0, rec.deadline - this.deps.clock.wall()),
      );
    });
    const result = await Promise.race([sent, deadline]);
    this.deps.clock.clearTimeout(timer);
    if (result === timedOut) {
      this.transition(rec, { type: 'timed_out' });
      await this.deps.log.put(rec);
      endForward();
      // Its compensation waits for the answer (the upstream's own request_timeout bounds it), so
      // that it never reaches the service before the step it undoes.
      const late = await sent;
      if (late.type === 'response' && this.succeeded(late.status, step.call.successStatuses)) {
        this.transition(rec, { type: 'late_answer', step: i, answer: answerOf(late) });
        await this.deps.log.put(rec);
      }
      return;
    }
    if (result.type === 'response') {
      const answer = answerOf(result);
      this.transition(
        rec,
        this.succeeded(result.status, step.call.successStatuses)
          ? { type: 'step_succeeded', step: i, answer }
          : { type: 'step_failed', step: i, answer },
      );
    } else if (result.maybeProcessed) {
      const s = rec.steps[i];
      if (s) s.failure = failureOf(result);
      this.transition(rec, { type: 'step_unknown', step: i, detail: result.problem.detail });
    } else {
      this.transition(rec, { type: 'step_failed', step: i, failure: failureOf(result) });
    }
    await this.deps.log.put(rec);
  }

  private async checkStep(rec: SagaRecord, model: SagaModel, i: number): Promise<void> {
    const step = model.steps[i] as SagaModel['steps'][number];
    const status = step.status;
    if (!status) return;
    const s = rec.steps[i];
    const nextAt = () => this.deps.clock.wall() + backoff(status.retry, (s?.statusChecks ?? 0) + 1);
    let event: SagaEvent;
    try {
      const request = this.request(rec, model, status, `${rec.id}:${step.name}:status`, false);
      const r = await this.deps.call(status.upstream, request, model.maxResponseBytes);
      if (r.type === 'response' && r.status >= 200 && r.status < 300)
        event = { type: 'step_succeeded', step: i, answer: answerOf(r) };
      else if (r.type === 'response' && status.notApplied.has(r.status))
        event = { type: 'step_not_applied', step: i };
      else
        event = {
          type: 'status_unclear',
          step: i,
          detail: r.type === 'response' ? `status answered ${r.status}` : r.problem.detail,
          nextAt: nextAt(),
        };
    } catch (err) {
      if (!(err instanceof RenderError)) throw err;
      event = { type: 'status_unclear', step: i, detail: err.message, nextAt: nextAt() };
    }
    this.transition(rec, event);
    await this.deps.log.put(rec);
  }

  private async compensateStep(rec: SagaRecord, model: SagaModel, i: number): Promise<void> {
    const step = model.steps[i] as SagaModel['steps'][number];
    const comp = step.compensate;
    if (!comp) return;
    const s = rec.steps[i];
    let request: InternalRequest;
    try {
      request = this.request(rec, model, comp, `${rec.id}:${step.name}:compensate`, false);
    } catch (err) {
      if (!(err instanceof RenderError)) throw err;
      // It cannot be formed (e.g. it reads the answer of a step whose outcome is unknown).
      this.transition(rec, { type: 'compensation_gave_up', step: i, detail: err.message });
      this.deps.observer?.compensation?.(rec, step.name, 'gave_up');
      await this.deps.log.put(rec);
      return;
    }
    const r = await this.deps.call(comp.upstream, request, model.maxResponseBytes);
    if (r.type === 'response' && this.succeeded(r.status, comp.successStatuses)) {
      this.transition(rec, { type: 'compensation_succeeded', step: i });
      this.deps.observer?.compensation?.(rec, step.name, 'success');
    } else {
      const attempt = (s?.compensationAttempts ?? 0) + 1;
      this.transition(rec, {
        type: 'compensation_failed',
        step: i,
        detail: r.type === 'response' ? `answered ${r.status}` : r.problem.detail,
        nextAt: this.deps.clock.wall() + backoff(comp.retry, attempt),
      });
      this.deps.observer?.compensation?.(rec, step.name, 'failure');
    }
    await this.deps.log.put(rec);
    const after = decide(rec, policiesOf(model), this.deps.clock.wall());
    if (after.kind === 'event' && after.event.type === 'compensation_gave_up') {
      this.transition(rec, after.event);
      this.deps.observer?.compensation?.(rec, step.name, 'gave_up');
      await this.deps.log.put(rec);
    }
  }

  private succeeded(status: number, extra: ReadonlySet<number>): boolean {
    return status < 400 || extra.has(status);
  }

  private sleepUntil(id: string, until: number): Promise<void> {
    return new Promise((resolve) => {
      const w = {
        id,
        handle: undefined as unknown,
        wake: () => {
          this.waits.delete(w);
          resolve();
        },
      };
      w.handle = this.deps.clock.setTimeout(w.wake, Math.max(0, until - this.deps.clock.wall()));
      this.waits.add(w);
    });
  }

  /** The request of a call, compensation or status check, rendered from the saga's record. */
  private request(
    rec: SagaRecord,
    model: SagaModel,
    c: SagaCallModel,
    idempotencyKey: string,
    isStep: boolean,
  ): InternalRequest {
    const input = this.renderInput(rec);
    const headers: string[] = [];
    for (const [name, t] of c.headers) headers.push(name, render(t, input));
    let body: Buffer | null = null;
    if (c.body !== undefined) body = Buffer.from(render(c.body, input), 'utf8');
    else if (isStep && rec.request.body !== null) {
      body = Buffer.from(rec.request.body, 'base64');
      if (
        rec.request.contentType !== undefined &&
        !c.headers.some(([h]) => h.toLowerCase() === 'content-type')
      )
        headers.push('content-type', rec.request.contentType);
    }
    if (c.body !== undefined && !c.headers.some(([h]) => h.toLowerCase() === 'content-type'))
      headers.push('content-type', c.body.json ? 'application/json' : 'text/plain; charset=utf-8');
    headers.push('idempotency-key', idempotencyKey);
    if (model.longRunningAction && this.deps.sagaUrl)
      headers.push('long-running-action', this.deps.sagaUrl(rec.id));
    return {
      method: c.method,
      path: render(c.path, input),
      headers,
      body,
      requestId: `${rec.request.requestId}`,
      clientAddress: rec.request.clientAddress,
    };
  }

  private renderInput(rec: SagaRecord): RenderInput {
    const steps: Record<string, { status: number; headers: Record<string, string>; body: unknown }> = {};
    for (const s of rec.steps) {
      if (!s.answer) continue;
      steps[s.name] = {
        status: s.answer.status,
        headers: headerMap(s.answer.headers),
        body: this.answerJson(s.answer),
      };
    }
    const r = rec.request;
    return {
      saga: { id: rec.id, name: rec.saga },
      request: { ...r, body: this.requestJson(r) },
      steps,
    };
  }

  private answerJson(a: Answer): unknown {
    if (this.json.has(a)) return this.json.get(a);
    const text = a.bodyEncoding === 'utf8' ? a.body : Buffer.from(a.body, 'base64').toString('utf8');
    const v = parseJson(text);
    this.json.set(a, v);
    return v;
  }

  private requestJson(r: RequestRecord): unknown {
    if (r.body === null) return undefined;
    if (this.json.has(r)) return this.json.get(r);
    const v = parseJson(Buffer.from(r.body, 'base64').toString('utf8'));
    this.json.set(r, v);
    return v;
  }

  /** What the client gets when the steps ended. */
  private clientAnswer(rec: SagaRecord, model: SagaModel): ClientAnswer {
    const sagaHeaders = ['x-breakwater-saga-id', rec.id, 'x-breakwater-saga-state', rec.state];
    const fromAnswer = (a: Answer | undefined): ClientAnswer | undefined =>
      a && {
        status: a.status,
        headers: [...a.headers, ...sagaHeaders],
        body: Buffer.from(a.body, a.bodyEncoding),
      };
    const configured = (m: SagaAnswerModel): ClientAnswer => {
      const input = this.renderInput(rec);
      const headers: string[] = [];
      try {
        for (const [h, t] of m.headers) headers.push(h.toLowerCase(), render(t, input));
        const body = m.body === undefined ? Buffer.alloc(0) : Buffer.from(render(m.body, input), 'utf8');
        if (m.body !== undefined && !headers.includes('content-type'))
          headers.push('content-type', m.body.json ? 'application/json' : 'text/plain; charset=utf-8');
        return { status: m.status, headers: [...headers, ...sagaHeaders], body };
      } catch (err) {
        return problemAnswer('saga-response-invalid', 500, (err as Error).message, sagaHeaders);
      }
    };
    if (rec.state === 'running')
      return problemAnswer(
        'saga-unavailable',
        503,
        this.deps.log.lease === undefined
          ? 'breakwater stopped before the saga ended; it is recovered at the next start'
          : 'this replica stopped driving the saga before it ended; a replica takes it over once its lease lapses',
        sagaHeaders,
      );
    if (rec.state === 'completed') {
      const r = model.response;
      if (r === undefined) return fromAnswer(rec.steps.at(-1)?.answer) as ClientAnswer;
      if ('step' in r) return fromAnswer(rec.steps.find((s) => s.name === r.step)?.answer) as ClientAnswer;
      return configured(r);
    }
    if (model.failureResponse) return configured(model.failureResponse);
    const failed = rec.steps.find((s) => s.name === rec.failedStep);
    if (rec.reason === 'timeout')
      return problemAnswer(
        'saga-timeout',
        504,
        `the steps did not all succeed within ${model.timeout} ms (timeout)${failed ? `; step ${failed.name} was in flight` : ''}; the completed steps are being compensated`,
        sagaHeaders,
      );
    if (failed?.answer && failed.state !== 'unknown') return fromAnswer(failed.answer) as ClientAnswer;
    const f: FailureNote = failed?.failure ?? {
      kind: 'saga-failed',
      status: 502,
      detail: `step ${rec.failedStep} failed`,
    };
    return problemAnswer(f.kind, f.status, `step ${rec.failedStep}: ${f.detail}`, sagaHeaders);
  }
}

/**
 * A UUID whose first 48 bits are the time in ms (the layout of UUIDv7, RFC 9562): the log's keys
 * sort by creation, so listing newest first and the retention sweep read only what they need.
 */
export function timeOrderedId(nowMs: number): string {
  const hex = Math.floor(nowMs).toString(16).padStart(12, '0').slice(-12);
  const rest = randomUUID().replace(/-/g, '').slice(12);
  const v = `${hex}7${rest.slice(1, 4)}${((Number.parseInt(rest[4] as string, 16) & 0x3) | 0x8).toString(16)}${rest.slice(5, 20)}`;
  return `${v.slice(0, 8)}-${v.slice(8, 12)}-${v.slice(12, 16)}-${v.slice(16, 20)}-${v.slice(20, 32)}`;
}

function problemAnswer(kind: string, status: number, detail: string, extra: readonly string[]): ClientAnswer {
  return { status, headers: extra, body: Buffer.alloc(0), problem: { kind, detail } };
}

function policiesOf(model: SagaModel): StepPolicy[] {
  return model.steps.map((s) => ({
    compensable: s.compensate !== undefined,
    hasStatus: s.status !== undefined,
    statusMaxAttempts: s.status?.retry.maxAttempts ?? 0,
    compensateMaxAttempts: s.compensate?.retry.maxAttempts ?? 0,
    compensateMaxAge: s.compensate?.maxAge ?? 0,
  }));
}

/** Wait before attempt `n + 1` (n >= 1): initial_wait doubling, at most max_wait. */
export function backoff(r: RetryModel, n: number): number {
  return Math.min(r.maxWait, r.initialWait * 2 ** Math.min(30, Math.max(0, n - 1)));
}

function answerOf(r: Extract<InternalResult, { type: 'response' }>): Answer {
  const headers: string[] = [];
  for (let i = 0; i + 1 < r.headers.length; i += 2)
    headers.push((r.headers[i] as string).toLowerCase(), r.headers[i + 1] as string);
  const text = r.body.toString('utf8');
  const utf8 = Buffer.byteLength(text) === r.body.length && !text.includes('\uFFFD');
  return {
    status: r.status,
    headers,
    body: utf8 ? text : r.body.toString('base64'),
    bodyEncoding: utf8 ? 'utf8' : 'base64',
  };
}

function failureOf(r: Extract<InternalResult, { type: 'failure' }>): FailureNote {
  return { kind: r.problem.kind, status: r.problem.status, detail: r.problem.detail };
}

function headerMap(flat: readonly string[]): Record<string, string> {
  const m: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) m[flat[i] as string] ??= flat[i + 1] as string;
  return m;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
