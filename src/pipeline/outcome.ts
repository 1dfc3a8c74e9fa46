/**
 * How policies read a call's outcome, whatever the call (an HTTP attempt, a WebSocket handshake):
 * a status, or a failure cause in the vocabulary of `retry_on` / `failure_on` (`connect-failure`,
 * `reset`, `timeout`). A malformed response counts as a 502, as the client sees it. This file is
 * the one place outcomes are classified, and where a gRPC call is judged when its trailers arrive.
 */
import type { AttemptError } from '../attempt/attempt.js';
import { grpcHttpEquivalent } from '../attempt/grpc.js';
import type { CallResponse, Outcome } from './types.js';

export type FailureCause = 'connect-failure' | 'reset' | 'timeout' | 'aborted';

export interface Classified {
  /** The status policies judge by: HTTP's, or for a gRPC status its HTTP equivalent (UNAVAILABLE: 503). */
  readonly status: number | undefined;
  /** A gRPC response's grpc-status, when its headers carried one (trailers-only). */
  readonly grpc?: number | undefined;
  readonly cause: FailureCause | undefined;
  /** Bounded label for metrics: 2xx..5xx or the cause. */
  readonly label: string;
}

const STATUS_LABEL = ['1xx', '1xx', '2xx', '3xx', '4xx', '5xx'];

export function statusLabel(status: number): string {
  return STATUS_LABEL[Math.floor(status / 100)] ?? '5xx';
}

export function causeOf(err: AttemptError): FailureCause | undefined {
  switch (err.kind) {
    case 'connect-failure':
    case 'connect-timeout':
      return 'connect-failure';
    case 'timeout':
      return 'timeout';
    case 'reset':
      return 'reset';
    case 'client-aborted':
    case 'request-body':
      return 'aborted';
    default:
      return undefined;
  }
}

/** The status a response is judged by: a gRPC call's grpc-status counts as its HTTP equivalent. */
export function judgedStatus(head: CallResponse['head']): number {
  const g = head.grpcStatus;
  return g === undefined || g === 0 ? head.status : grpcHttpEquivalent(g);
}

export function classifyOutcome(o: Outcome<CallResponse>): Classified {
  if (o.type === 'response') {
    const g = o.head.grpcStatus;
    if (g !== undefined) {
      const s = g === 0 ? o.head.status : grpcHttpEquivalent(g);
      return { status: s, grpc: g, cause: undefined, label: statusLabel(s) };
    }
    const s = o.head.status;
    return { status: s, cause: undefined, label: statusLabel(s) };
  }
  if (o.type === 'failure') {
    const cause = causeOf(o.error);
    if (cause === undefined) return { status: 502, cause: undefined, label: 'protocol_error' };
    return { status: undefined, cause, label: cause.replace('-', '_') };
  }
  if (o.type === 'local') return { status: o.status, cause: undefined, label: 'fallback' };
  return { status: o.problem.status, cause: undefined, label: 'local' };
}

/** A gRPC status as policies judge it (its HTTP equivalent: UNAVAILABLE is 503). */
export function classifyGrpc(code: number): Classified {
  const s = grpcHttpEquivalent(code);
  return { status: s, grpc: code, cause: undefined, label: statusLabel(s) };
}

/** Whether an outcome is a gRPC call whose status is still to come, in its trailers. */
export function judgedAtTrailers(grpc: boolean, o: Outcome<CallResponse>): boolean {
  return grpc && o.type === 'response' && o.head.grpcStatus === undefined && o.head.status === 200;
}

/**
 * The verdict on a gRPC call whose status comes in its trailers (see `judgedAtTrailers`), once the
 * stream is over: undefined when it ended without one (cut, reset). Waiting for it never holds the
 * response: it is relayed meanwhile.
 */
export function trailersVerdict(o: CallResponse): Promise<Classified | undefined> {
  return o.attempt.grpcEnd().then((code) => (code === undefined ? undefined : classifyGrpc(code)));
}

/**
 * A `retry_on` / `failure_on` list compiled once, when a policy is built (as Envoy compiles
 * `retry_on`): for a status or a cause, the first entry of the list that names it (the reason a
 * retry is counted under), or undefined. A call looks one slot up instead of walking the list.
 */
export interface OutcomeMatcher {
  /** The first entry naming this status or cause, or undefined. */
  match(status: number | undefined, cause: string | undefined): string | undefined;
  /** Whether the list names this gRPC status (by its name, e.g. `unavailable`). */
  readonly grpcNames: ReadonlySet<string>;
}

const STATUS_SLOTS = 600;

export function compileOutcomes(list: readonly (string | number)[]): OutcomeMatcher {
  const slots: (string | undefined)[] = new Array<string | undefined>(STATUS_SLOTS).fill(undefined);
  const causes = new Map<string, string>();
  const names = new Set<string>();
  /** Statuses past the table (600 and up): an exact number, or 5xx's `>= 500`. */
  const beyond: ((s: number) => string | undefined)[] = [];
  const mark = (from: number, to: number, reason: string) => {
    for (let s = from; s <= to && s < STATUS_SLOTS; s++) slots[s] ??= reason;
  };
  for (const entry of list) {
    if (typeof entry === 'number') {
      const reason = String(entry);
      mark(entry, entry, reason);
      if (entry >= STATUS_SLOTS) beyond.push((s) => (s === entry ? reason : undefined));
    } else if (entry === '5xx') {
      mark(500, STATUS_SLOTS - 1, '5xx');
      beyond.push(() => '5xx');
    } else if (entry === '4xx') {
      mark(400, 499, '4xx');
    } else if (entry === 'gateway-error') {
      mark(502, 504, 'gateway-error');
    } else {
      if (!causes.has(entry)) causes.set(entry, entry);
      names.add(entry);
    }
  }
  return {
    grpcNames: names,
    match(status, cause) {
      if (status !== undefined) {
        const r =
          Number.isInteger(status) && status >= 0 && status < STATUS_SLOTS ? slots[status] : undefined;
        if (r !== undefined) return r;
        if (status >= STATUS_SLOTS)
          for (const b of beyond) {
            const hit = b(status);
            if (hit !== undefined) return hit;
          }
      }
      return cause === undefined ? undefined : causes.get(cause);
    },
  };
}
