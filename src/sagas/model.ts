/**
 * `sagas.<name>` as the runtime uses it: defaults filled in, the trigger path split into segments,
 * every template compiled once (a reference that cannot be given is a config error naming its key).
 */
import { DEFAULTS } from '../config/defaults.js';
import type { SagaInput, SagaStepInput } from '../config/schema.js';
import {
  compileTemplate,
  readsRequestBody,
  requestHeadersRead,
  type Scope,
  type Template,
  type TemplateContext,
} from './template.js';

export interface SagaCallModel {
  readonly upstream: string;
  readonly method: string;
  readonly path: Template;
  /** Header name and value template pairs. */
  readonly headers: readonly (readonly [string, Template])[];
  /** undefined: the trigger request's body (a step call) or none (compensate, status). */
  readonly body: Template | undefined;
}

export interface RetryModel {
  readonly maxAttempts: number;
  readonly initialWait: number;
  readonly maxWait: number;
}

export interface SagaStepModel {
  readonly name: string;
  readonly call: SagaCallModel & { readonly successStatuses: ReadonlySet<number> };
  readonly compensate:
    | (SagaCallModel & {
        readonly successStatuses: ReadonlySet<number>;
        readonly retry: RetryModel;
        readonly maxAge: number;
      })
    | undefined;
  readonly status:
    | (SagaCallModel & { readonly notApplied: ReadonlySet<number>; readonly retry: RetryModel })
    | undefined;
}

export interface SagaAnswerModel {
  readonly status: number;
  readonly headers: readonly (readonly [string, Template])[];
  readonly body: Template | undefined;
}

export interface SagaModel {
  readonly name: string;
  readonly trigger: {
    readonly listener: string;
    readonly method: string;
    readonly path: string;
    /** Literal segments, and `:name` parameters as { param }. */
    readonly segments: readonly (string | { readonly param: string })[];
  };
  readonly steps: readonly SagaStepModel[];
  readonly timeout: number;
  readonly response: { readonly step: string } | SagaAnswerModel | undefined;
  readonly failureResponse: SagaAnswerModel | undefined;
  readonly longRunningAction: boolean;
  readonly maxResponseBytes: number;
  readonly retention: number;
  /** Some template reads request.body: the trigger's body must be JSON. */
  readonly needsJsonBody: boolean;
  /** Request headers the templates read (lower case); only these are kept in the log. */
  readonly headersRead: readonly string[];
  /** Some step sends the trigger request's body as it came. */
  readonly forwardsBody: boolean;
}

export interface SagaProblem {
  readonly path: (string | number)[];
  readonly message: string;
}

const COMPENSATE_DEFAULTS = DEFAULTS.saga.compensate;
const STATUS_DEFAULTS = DEFAULTS.saga.status;

export function sagasOf(
  input: Readonly<Record<string, SagaInput>> | undefined,
  problems: SagaProblem[],
): Readonly<Record<string, SagaModel>> {
  const out: Record<string, SagaModel> = {};
  for (const [name, s] of Object.entries(input ?? {})) out[name] = sagaOf(name, s, problems);
  return out;
}

function sagaOf(name: string, s: SagaInput, problems: SagaProblem[]): SagaModel {
  const at = ['sagas', name];
  const segments = s.trigger.path
    .split('/')
    .slice(1)
    .map((seg) => (seg.startsWith(':') && seg.length > 1 ? { param: seg.slice(1) } : seg));
  const params = new Set<string>();
  segments.forEach((seg) => {
    if (typeof seg === 'string') return;
    if (params.has(seg.param))
      problems.push({ path: [...at, 'trigger', 'path'], message: `parameter :${seg.param} appears twice` });
    params.add(seg.param);
  });
  const allSteps = s.steps.map((x) => x.name);
  const templates: Template[] = [];
  const compile = (
    source: string,
    context: TemplateContext,
    steps: readonly string[],
    where: (string | number)[],
  ): Template => {
    const scope: Scope = { params, steps, allSteps };
    const { template, errors } = compileTemplate(source, context, scope);
    for (const e of errors)
      problems.push({ path: where, message: `${e.message} (at character ${e.at + 1} of the template)` });
    templates.push(template);
    return template;
  };
  const callOf = (
    c: {
      upstream: string;
      method?: string | undefined;
      path: string;
      headers?: Record<string, string> | undefined;
      body?: string | undefined;
    },
    method: string,
    steps: readonly string[],
    where: (string | number)[],
  ): SagaCallModel => ({
    upstream: c.upstream,
    method: c.method ?? method,
    path: compile(c.path, 'path', steps, [...where, 'path']),
    headers: Object.entries(c.headers ?? {}).map(
      ([h, v]) => [h, compile(v, 'header', steps, [...where, 'headers', h])] as const,
    ),
    body: c.body === undefined ? undefined : compile(c.body, 'body', steps, [...where, 'body']),
  });
  const retryOf = (
    r: {
      max_attempts?: number | undefined;
      initial_wait?: number | undefined;
      max_wait?: number | undefined;
    },
    d: { readonly maxAttempts: number; readonly initialWait: number; readonly maxWait: number },
  ): RetryModel => ({
    maxAttempts: r.max_attempts ?? d.maxAttempts,
    initialWait: r.initial_wait ?? d.initialWait,
    maxWait: r.max_wait ?? d.maxWait,
  });
  const steps = s.steps.map((step: SagaStepInput, i): SagaStepModel => {
    const before = allSteps.slice(0, i);
    const through = allSteps.slice(0, i + 1);
    const where = [...at, 'steps', i];
    return {
      name: step.name,
      call: {
        ...callOf(step.call, DEFAULTS.saga.callMethod, before, [...where, 'call']),
        successStatuses: new Set(step.call.success_statuses ?? []),
      },
      // A compensation may read its own step's answer (the id of what to undo).
      compensate: step.compensate
        ? {
            ...callOf(step.compensate, DEFAULTS.saga.callMethod, through, [...where, 'compensate']),
            successStatuses: new Set(step.compensate.success_statuses ?? COMPENSATE_DEFAULTS.successStatuses),
            retry: retryOf(step.compensate, COMPENSATE_DEFAULTS),
            maxAge: step.compensate.max_age ?? COMPENSATE_DEFAULTS.maxAge,
          }
        : undefined,
      status: step.status
        ? {
            ...callOf(step.status, DEFAULTS.saga.statusMethod, before, [...where, 'status']),
            notApplied: new Set(step.status.not_applied_statuses ?? STATUS_DEFAULTS.notAppliedStatuses),
            retry: retryOf(step.status, STATUS_DEFAULTS),
          }
        : undefined,
    };
  });
  const answerOf = (
    a: { status: number; headers?: Record<string, string> | undefined; body?: string | undefined },
    stepsKnown: readonly string[],
    where: (string | number)[],
  ): SagaAnswerModel => ({
    status: a.status,
    headers: Object.entries(a.headers ?? {}).map(
      ([h, v]) => [h, compile(v, 'header', stepsKnown, [...where, 'headers', h])] as const,
    ),
    body: a.body === undefined ? undefined : compile(a.body, 'body', stepsKnown, [...where, 'body']),
  });
  const response =
    s.response === undefined
      ? undefined
      : 'step' in s.response
        ? { step: s.response.step }
        : answerOf(s.response, allSteps, [...at, 'response']);
  // Which step failed is not known at load: a failure answer may read the request and saga only.
  const failureResponse = s.failure_response
    ? answerOf(s.failure_response, [], [...at, 'failure_response'])
    : undefined;
  return {
    name,
    trigger: {
      listener: s.trigger.listener,
      method: s.trigger.method,
      path: s.trigger.path,
      segments,
    },
    steps,
    timeout: s.timeout,
    response,
    failureResponse,
    longRunningAction: s.long_running_action,
    maxResponseBytes: s.max_response_bytes,
    retention: s.retention,
    needsJsonBody: readsRequestBody(templates),
    headersRead: requestHeadersRead(templates),
    forwardsBody: s.steps.some((x) => x.call.body === undefined),
  };
}

/** The trigger's parameters when `path` matches its segments, else undefined. */
export function matchTrigger(
  segments: SagaModel['trigger']['segments'],
  path: string,
): Record<string, string> | undefined {
  const parts = path.split('/').slice(1);
  if (parts.length !== segments.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < parts.length; i++) {
    const seg = segments[i] as string | { param: string };
    const part = parts[i] as string;
    if (typeof seg === 'string') {
      if (seg !== part) return undefined;
    } else {
      if (part === '') return undefined;
      try {
        params[seg.param] = decodeURIComponent(part);
      } catch {
        return undefined;
      }
    }
  }
  return params;
}
