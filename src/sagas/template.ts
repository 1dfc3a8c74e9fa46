/**
 * The templates of saga steps: `{{ request.body.order_id }}`, `{{ steps.charge.body.id }}`,
 * `{{ saga.id }}`. A small language, compiled once when the config loads: text and references,
 * nothing else (no expressions, no filters, no code). A reference is a dotted path from one of the
 * roots below; an unknown one is a config error.
 *
 *   request.method, request.path, request.params.<name>, request.query.<name>,
 *   request.headers.<name>, request.body[.<field>...]
 *   steps.<earlier step>.status, steps.<step>.headers.<name>, steps.<step>.body[.<field>...]
 *   saga.id, saga.name
 *
 * Values are escaped for where they land, decided at compile time: in a path, percent-encoded (one
 * segment, so a value cannot add `/` or `?`); in a header, refused if it holds a control character;
 * in a JSON body (text starting with `{` or `[`), JSON-escaped inside a string literal and written
 * as a JSON value outside one; elsewhere as text.
 */

export type TemplateContext = 'path' | 'header' | 'body';

/** One `{{ ... }}`: where it starts in the template (0-based), and its path. */
export interface Reference {
  readonly at: number;
  readonly path: readonly string[];
  /** Inside a JSON string literal of a JSON body (the value is escaped, without quotes). */
  readonly inString: boolean;
}

export interface Template {
  readonly source: string;
  /** Literal text and references, alternating: text, ref, text, ..., text. */
  readonly texts: readonly string[];
  readonly refs: readonly Reference[];
  readonly context: TemplateContext;
  readonly json: boolean;
}

/** Whether `v` is a compiled template (GET /config shows its source). */
export function isTemplate(v: unknown): v is Template {
  return (
    v !== null &&
    typeof v === 'object' &&
    typeof (v as Template).source === 'string' &&
    Array.isArray((v as Template).texts) &&
    Array.isArray((v as Template).refs)
  );
}

export interface TemplateError {
  /** 0-based character offset in the template. */
  readonly at: number;
  readonly message: string;
}

/** What a reference may name: the names in scope for this template. */
export interface Scope {
  /** Path parameters of the trigger (`:id` segments). */
  readonly params: ReadonlySet<string>;
  /** Steps whose answers are known when this template is rendered. */
  readonly steps: readonly string[];
  /** Every step of the saga (to tell "a later step" from "no such step"). */
  readonly allSteps: readonly string[];
}

const SEGMENT = /^(?:[A-Za-z_][A-Za-z0-9_-]*|\d+)$/;

/** Compiles `source`; the errors name each bad reference and its offset. */
export function compileTemplate(
  source: string,
  context: TemplateContext,
  scope: Scope,
): { template: Template; errors: TemplateError[] } {
  const texts: string[] = [];
  const refs: Reference[] = [];
  const errors: TemplateError[] = [];
  const json = context === 'body' && /^\s*[[{]/.test(source);
  let i = 0;
  let text = '';
  // JSON string state of the literal text so far (a body template only).
  let inString = false;
  let escaped = false;
  const scan = (s: string) => {
    if (!json) return;
    for (const ch of s) {
      if (escaped) escaped = false;
      else if (ch === '\\' && inString) escaped = true;
      else if (ch === '"') inString = !inString;
    }
  };
  while (i < source.length) {
    const open = source.indexOf('{{', i);
    if (open < 0) {
      text += source.slice(i);
      break;
    }
    const close = source.indexOf('}}', open + 2);
    if (close < 0) {
      errors.push({ at: open, message: '"{{" without its closing "}}"' });
      text += source.slice(i);
      break;
    }
    const literal = source.slice(i, open);
    text += literal;
    scan(literal);
    const expr = source.slice(open + 2, close).trim();
    const path = expr.split('.');
    const problem = expr === '' ? 'an empty reference' : checkReference(path, scope);
    if (problem) errors.push({ at: open, message: `{{ ${expr} }}: ${problem}` });
    texts.push(text);
    text = '';
    refs.push({ at: open, path, inString });
    i = close + 2;
  }
  texts.push(text);
  return { template: { source, texts, refs, context, json }, errors };
}

/** Why `path` is not a reference this scope can give, or undefined when it is one. */
function checkReference(path: readonly string[], scope: Scope): string | undefined {
  for (const s of path)
    if (!SEGMENT.test(s))
      return `"${s}" is not a name (letters, digits, "_", "-") or an index; only references such as request.body.id are allowed, no expressions`;
  const [root, a, b, ...rest] = path;
  const roots = 'request, steps or saga';
  switch (root) {
    case 'saga':
      if ((a === 'id' || a === 'name') && b === undefined) return undefined;
      return 'saga has id and name';
    case 'request':
      switch (a) {
        case 'method':
        case 'path':
          return b === undefined ? undefined : `request.${a} has no fields`;
        case 'params':
          if (b === undefined || rest.length) return 'expected request.params.<name>';
          return scope.params.has(b)
            ? undefined
            : `the trigger path has no parameter :${b}${scope.params.size ? ` (it has ${[...scope.params].map((p) => `:${p}`).join(', ')})` : ''}`;
        case 'query':
        case 'headers':
          return b !== undefined && rest.length === 0 ? undefined : `expected request.${a}.<name>`;
        case 'body':
          return undefined;
        default:
          return 'request has method, path, params, query, headers and body';
      }
    case 'steps': {
      if (a === undefined) return 'expected steps.<step name>.status, .headers.<name> or .body';
      if (!scope.steps.includes(a)) {
        if (scope.allSteps.includes(a)) return `step ${a} has not run yet where this template is used`;
        return `no step ${a}${scope.steps.length ? ` (steps before this point: ${scope.steps.join(', ')})` : ' (no step runs before this point)'}`;
      }
      if (b === 'status') return rest.length ? 'status has no fields' : undefined;
      if (b === 'headers') return rest.length === 1 ? undefined : `expected steps.${a}.headers.<name>`;
      if (b === 'body') return undefined;
      return `steps.${a} has status, headers and body`;
    }
    default:
      return `a reference starts with ${roots}`;
  }
}

/** What a template is rendered from. */
export interface RenderInput {
  readonly saga: { readonly id: string; readonly name: string };
  readonly request: {
    readonly method: string;
    readonly path: string;
    readonly params: Readonly<Record<string, string>>;
    readonly query: Readonly<Record<string, string>>;
    /** Lower-case names. */
    readonly headers: Readonly<Record<string, string>>;
    /** The JSON body, parsed (undefined: none or not JSON). */
    readonly body: unknown;
  };
  readonly steps: Readonly<
    Record<
      string,
      { readonly status: number; readonly headers: Readonly<Record<string, string>>; readonly body: unknown }
    >
  >;
}

export class RenderError extends Error {
  override readonly name = 'RenderError';
}

/** Whether `s` holds a character a header value may not (controls other than tab, DEL). */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 32 && c !== 9) || c === 127) return true;
  }
  return false;
}

/** Renders `t`; throws RenderError when a reference has no value or a value cannot go there. */
export function render(t: Template, input: RenderInput): string {
  let out = t.texts[0] as string;
  for (let i = 0; i < t.refs.length; i++) {
    const ref = t.refs[i] as Reference;
    const value = lookup(ref.path, input);
    if (value === undefined) throw new RenderError(`{{ ${ref.path.join('.')} }} has no value`);
    out += place(value, ref, t) + (t.texts[i + 1] as string);
  }
  return out;
}

function lookup(path: readonly string[], input: RenderInput): unknown {
  const [root, a, b] = path;
  let v: unknown;
  let from = 2;
  if (root === 'saga') return a === 'id' ? input.saga.id : input.saga.name;
  if (root === 'request') {
    const r = input.request;
    if (a === 'method') return r.method;
    if (a === 'path') return r.path;
    if (a === 'body') v = r.body;
    else {
      const map = a === 'params' ? r.params : a === 'query' ? r.query : r.headers;
      const key = a === 'headers' ? (b as string).toLowerCase() : (b as string);
      return Object.hasOwn(map, key) ? map[key] : undefined;
    }
  } else {
    const s = input.steps[a as string];
    if (s === undefined) return undefined;
    if (b === 'status') return s.status;
    if (b === 'headers') {
      const key = (path[3] as string).toLowerCase();
      return Object.hasOwn(s.headers, key) ? s.headers[key] : undefined;
    }
    v = s.body;
    from = 3;
  }
  for (const seg of path.slice(from)) {
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<string, unknown>)[seg];
  }
  return v;
}

function place(value: unknown, ref: Reference, t: Template): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  switch (t.context) {
    case 'path':
      return encodeURIComponent(text);
    case 'header':
      if (hasControl(text))
        throw new RenderError(
          `{{ ${ref.path.join('.')} }} holds a control character, not allowed in a header`,
        );
      return text;
    default:
      if (!t.json) return text;
      // Inside "...": the string's JSON escape without its quotes; outside: a JSON value.
      return ref.inString ? JSON.stringify(text).slice(1, -1) : JSON.stringify(value);
  }
}

/** Whether any template of `ts` reads `request.body` (the trigger's body must then be JSON). */
export function readsRequestBody(ts: readonly (Template | undefined)[]): boolean {
  return ts.some((t) => t?.refs.some((r) => r.path[0] === 'request' && r.path[1] === 'body'));
}

/** The request headers the templates read (lower case): only these are kept in the saga log. */
export function requestHeadersRead(ts: readonly (Template | undefined)[]): string[] {
  const names = new Set<string>();
  for (const t of ts)
    for (const r of t?.refs ?? [])
      if (r.path[0] === 'request' && r.path[1] === 'headers') names.add((r.path[2] as string).toLowerCase());
  return [...names];
}
