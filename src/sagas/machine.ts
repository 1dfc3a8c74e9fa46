/**
 * The saga state machine, with no I/O: a saga's record, the events that move it, and `decide`,
 * which says what the saga should do next. The engine (engine.ts) performs what `decide` says,
 * records the outcome with `apply`, writes the record to the log, and asks again.
 *
 *   saga:  running ──(every step done)──────────────────────────────► completed
 *             │ (a step failed, was not applied, timed out, or its outcome stayed unknown)
 *             ▼
 *          compensating ──(each completed step compensated, last first)──► compensated
 *             │ (a compensation ran out of max_attempts / max_age)
 *             ▼
 *          failed_to_compensate ──(operator: retry)──► compensating
 *
 *   step:  pending ─► started ─► done ─────────► compensating ─► compensated
 *                        │   └─► failed              │       └─► compensation_failed
 *                        └─► unknown ─► done / not_applied (status check), or compensated as if done
 *
 * A step whose outcome is unknown (a timeout after it was sent, a crash while it was in flight) is
 * compensated as if done unless its status call says it was not applied: compensations must be
 * idempotent (they carry Idempotency-Key <saga id>:<step>:compensate).
 */

export type SagaState = 'running' | 'completed' | 'compensating' | 'compensated' | 'failed_to_compensate';
export const SAGA_STATES: readonly SagaState[] = [
  'running',
  'completed',
  'compensating',
  'compensated',
  'failed_to_compensate',
];
export type StepState =
  | 'pending'
  | 'started'
  | 'done'
  | 'failed'
  | 'unknown'
  | 'not_applied'
  | 'compensating'
  | 'compensated'
  | 'compensation_failed';

/** An answer as the log keeps it. */
export interface Answer {
  readonly status: number;
  /** Flat [name, value, ...], names lower case. */
  readonly headers: readonly string[];
  readonly body: string;
  readonly bodyEncoding: 'utf8' | 'base64';
}

/** A failure without an answer (the problem breakwater would have answered). */
export interface FailureNote {
  readonly kind: string;
  readonly status: number;
  readonly detail: string;
}

export interface StepRecord {
  readonly name: string;
  state: StepState;
  answer?: Answer | undefined;
  failure?: FailureNote | undefined;
  statusChecks: number;
  compensationAttempts: number;
  /** Wall-clock ms of the first compensation attempt. */
  compensationStartedAt?: number | undefined;
  /** Wall-clock ms before which the next attempt (status check or compensation) waits. */
  nextAttemptAt?: number | undefined;
  lastError?: string | undefined;
}

export interface HistoryEntry {
  readonly at: number;
  readonly event: string;
  readonly step?: string | undefined;
  readonly detail?: string | undefined;
}

/** The trigger request, as much of it as the templates read. */
export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  readonly params: Readonly<Record<string, string>>;
  readonly query: Readonly<Record<string, string>>;
  readonly headers: Readonly<Record<string, string>>;
  /** base64, or null without a body. */
  readonly body: string | null;
  readonly contentType: string | undefined;
  readonly requestId: string;
  readonly clientAddress: string | undefined;
}

export interface SagaRecord {
  readonly id: string;
  readonly saga: string;
  state: SagaState;
  readonly createdAt: number;
  /** Wall-clock ms: the steps must all be done by then. */
  readonly deadline: number;
  updatedAt: number;
  finishedAt?: number | undefined;
  readonly request: RequestRecord;
  readonly steps: StepRecord[];
  /** The step whose failure (or unknown outcome) started the compensation. */
  failedStep?: string | undefined;
  /** Why it compensates: step_failed, not_applied, timeout, outcome_unknown. */
  reason?: string | undefined;
  history: HistoryEntry[];
}

/** What the machine needs to know of the saga's definition. */
export interface StepPolicy {
  readonly compensable: boolean;
  readonly hasStatus: boolean;
  readonly statusMaxAttempts: number;
  readonly compensateMaxAttempts: number;
  readonly compensateMaxAge: number;
}

export type Action =
  | { readonly kind: 'call'; readonly step: number }
  | { readonly kind: 'check'; readonly step: number }
  | { readonly kind: 'compensate'; readonly step: number }
  | { readonly kind: 'wait'; readonly until: number }
  | { readonly kind: 'event'; readonly event: SagaEvent }
  | { readonly kind: 'none' };

export type SagaEvent =
  | { readonly type: 'step_started'; readonly step: number }
  | { readonly type: 'step_succeeded'; readonly step: number; readonly answer: Answer }
  | {
      readonly type: 'step_failed';
      readonly step: number;
      readonly answer?: Answer | undefined;
      readonly failure?: FailureNote | undefined;
    }
  | { readonly type: 'step_unknown'; readonly step: number; readonly detail: string }
  | { readonly type: 'step_not_applied'; readonly step: number }
  | {
      readonly type: 'status_unclear';
      readonly step: number;
      readonly detail: string;
      readonly nextAt: number;
    }
  | { readonly type: 'late_answer'; readonly step: number; readonly answer: Answer }
  | { readonly type: 'timed_out' }
  | { readonly type: 'compensate_unknown'; readonly step: number }
  | { readonly type: 'completed' }
  | {
      readonly type: 'compensation_failed';
      readonly step: number;
      readonly detail: string;
      readonly nextAt: number;
    }
  | { readonly type: 'compensation_succeeded'; readonly step: number }
  | { readonly type: 'compensation_gave_up'; readonly step: number; readonly detail: string }
  | { readonly type: 'all_compensated' }
  | { readonly type: 'retry_requested' };

/** Steps whose effect may exist and must be undone: done, of unknown outcome, or being undone. */
function needsUndo(s: StepRecord): boolean {
  return s.state === 'done' || s.state === 'unknown' || s.state === 'compensating';
}

/** What the saga does next at wall-clock time `now`. */
export function decide(rec: SagaRecord, policies: readonly StepPolicy[], now: number): Action {
  switch (rec.state) {
    case 'running': {
      const i = rec.steps.findIndex((s) => s.state !== 'done');
      if (i < 0) return { kind: 'event', event: { type: 'completed' } };
      if (now >= rec.deadline) return { kind: 'event', event: { type: 'timed_out' } };
      const s = rec.steps[i] as StepRecord;
      const p = policies[i] as StepPolicy;
      if (s.state === 'pending') return { kind: 'call', step: i };
      if (s.state === 'started')
        return {
          kind: 'event',
          event: { type: 'step_unknown', step: i, detail: 'in flight when breakwater stopped' },
        };
      if (s.state === 'unknown') {
        if (!p.hasStatus || s.statusChecks >= p.statusMaxAttempts)
          return { kind: 'event', event: { type: 'compensate_unknown', step: i } };
        if (s.nextAttemptAt !== undefined && s.nextAttemptAt > now)
          return { kind: 'wait', until: Math.min(s.nextAttemptAt, rec.deadline) };
        return { kind: 'check', step: i };
      }
      // failed / not_applied while running cannot happen: apply moves the saga to compensating.
      return { kind: 'none' };
    }
    case 'compensating': {
      for (let i = rec.steps.length - 1; i >= 0; i--) {
        const s = rec.steps[i] as StepRecord;
        const p = policies[i] as StepPolicy;
        if (!needsUndo(s) || !p.compensable) continue;
        if (s.state === 'compensating') {
          const age = now - (s.compensationStartedAt ?? now);
          if (s.compensationAttempts >= p.compensateMaxAttempts || age >= p.compensateMaxAge)
            return {
              kind: 'event',
              event: {
                type: 'compensation_gave_up',
                step: i,
                detail: `${s.compensationAttempts} attempts over ${Math.round(age)} ms: ${s.lastError ?? ''}`,
              },
            };
          if (s.nextAttemptAt !== undefined && s.nextAttemptAt > now)
            return { kind: 'wait', until: s.nextAttemptAt };
        }
        return { kind: 'compensate', step: i };
      }
      return { kind: 'event', event: { type: 'all_compensated' } };
    }
    default:
      return { kind: 'none' };
  }
}

export class IllegalTransition extends Error {
  override readonly name = 'IllegalTransition';
}

/** Applies `e` to `rec` (in place) at wall-clock `now`; throws IllegalTransition if it cannot happen. */
export function apply(rec: SagaRecord, e: SagaEvent, now: number, stepName?: (i: number) => string): void {
  const step = 'step' in e ? (rec.steps[e.step] as StepRecord | undefined) : undefined;
  const bad = (why: string) => {
    throw new IllegalTransition(
      `${e.type} ${step ? `on step ${step.name} (${step.state}) ` : ''}of saga ${rec.state}: ${why}`,
    );
  };
  const need = (ok: boolean, why: string) => {
    if (!ok) bad(why);
  };
  const stepOf = () => step ?? (bad('no such step') as never);
  let detail: string | undefined;
  switch (e.type) {
    case 'step_started': {
      const s = stepOf();
      need(rec.state === 'running' && s.state === 'pending', 'a step starts once, while running');
      s.state = 'started';
      break;
    }
    case 'step_succeeded': {
      const s = stepOf();
      need(
        rec.state === 'running' && (s.state === 'started' || s.state === 'unknown'),
        'only a step in flight or of unknown outcome succeeds',
      );
      s.state = 'done';
      s.answer = e.answer;
      s.nextAttemptAt = undefined;
      detail = String(e.answer.status);
      break;
    }
    case 'step_failed': {
      const s = stepOf();
      need(rec.state === 'running' && s.state === 'started', 'only a step in flight fails');
      s.state = 'failed';
      s.answer = e.answer;
      s.failure = e.failure;
      rec.state = 'compensating';
      rec.failedStep = s.name;
      rec.reason = 'step_failed';
      detail = e.answer ? String(e.answer.status) : e.failure?.detail;
      break;
    }
    case 'step_unknown': {
      const s = stepOf();
      need(s.state === 'started', 'only a step in flight has an unknown outcome');
      s.state = 'unknown';
      s.lastError = e.detail;
      detail = e.detail;
      break;
    }
    case 'status_unclear': {
      const s = stepOf();
      need(
        rec.state === 'running' && s.state === 'unknown',
        'status checks are for steps of unknown outcome',
      );
      s.statusChecks++;
      s.nextAttemptAt = e.nextAt;
      s.lastError = e.detail;
      detail = e.detail;
      break;
    }
    case 'step_not_applied': {
      const s = stepOf();
      need(
        rec.state === 'running' && s.state === 'unknown',
        'only a step of unknown outcome is found not applied',
      );
      s.state = 'not_applied';
      s.statusChecks++;
      rec.state = 'compensating';
      rec.failedStep = s.name;
      rec.reason = 'not_applied';
      break;
    }
    case 'late_answer': {
      // The answer of a step the saga stopped waiting for: it was applied after all.
      const s = stepOf();
      need(s.state === 'unknown', 'a late answer is for a step of unknown outcome');
      s.state = 'done';
      s.answer = e.answer;
      detail = String(e.answer.status);
      break;
    }
    case 'timed_out': {
      need(rec.state === 'running', 'only a running saga times out');
      rec.state = 'compensating';
      rec.reason = 'timeout';
      const inFlight = rec.steps.find((s) => s.state === 'started' || s.state === 'unknown');
      if (inFlight) {
        if (inFlight.state === 'started') inFlight.state = 'unknown';
        rec.failedStep = inFlight.name;
      }
      break;
    }
    case 'compensate_unknown': {
      const s = stepOf();
      need(rec.state === 'running' && s.state === 'unknown', 'only a step of unknown outcome');
      rec.state = 'compensating';
      rec.failedStep = s.name;
      rec.reason = 'outcome_unknown';
      break;
    }
    case 'completed':
      need(rec.state === 'running' && rec.steps.every((s) => s.state === 'done'), 'every step must be done');
      rec.state = 'completed';
      rec.finishedAt = now;
      break;
    case 'compensation_failed': {
      const s = stepOf();
      need(rec.state === 'compensating' && needsUndo(s), 'only a step to undo is compensated');
      s.state = 'compensating';
      s.compensationStartedAt ??= now;
      s.compensationAttempts++;
      s.nextAttemptAt = e.nextAt;
      s.lastError = e.detail;
      detail = e.detail;
      break;
    }
    case 'compensation_succeeded': {
      const s = stepOf();
      need(rec.state === 'compensating' && needsUndo(s), 'only a step to undo is compensated');
      s.compensationStartedAt ??= now;
      s.compensationAttempts++;
      s.state = 'compensated';
      s.nextAttemptAt = undefined;
      break;
    }
    case 'compensation_gave_up': {
      const s = stepOf();
      need(rec.state === 'compensating' && needsUndo(s), 'only a step to undo gives up');
      s.state = 'compensation_failed';
      s.lastError = e.detail;
      rec.state = 'failed_to_compensate';
      rec.finishedAt = now;
      detail = e.detail;
      break;
    }
    case 'all_compensated':
      need(
        rec.state === 'compensating' && !rec.steps.some((s) => s.state === 'compensating'),
        'compensations remain',
      );
      rec.state = 'compensated';
      rec.finishedAt = now;
      break;
    case 'retry_requested':
      need(rec.state === 'failed_to_compensate', 'only a saga that failed to compensate is retried');
      for (const s of rec.steps) {
        if (s.state !== 'compensation_failed') continue;
        s.state = 'compensating';
        s.compensationAttempts = 0;
        s.compensationStartedAt = undefined;
        s.nextAttemptAt = undefined;
      }
      rec.state = 'compensating';
      rec.finishedAt = undefined;
      break;
  }
  rec.updatedAt = now;
  const name = step?.name ?? (stepName && 'step' in e ? stepName(e.step) : undefined);
  rec.history.push({ at: now, event: e.type, step: name, detail });
}

/** Whether a saga in this state still has work (it is recovered at start-up). */
export function inFlight(state: SagaState): boolean {
  return state === 'running' || state === 'compensating';
}
