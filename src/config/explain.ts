/**
 * Config errors in words that say how to fix them: a key at the wrong level says where it
 * belongs, a typo is matched against the keys of its own block (then the blocks below it), the
 * names other proxies use (Envoy, Traefik, resilience4j, Polly, nginx) lead to breakwater's, and
 * a number out of range says the range. Where keys exist comes from the schema (schema-index.ts).
 */
import type { z } from 'zod';
import {
  blocksBelow,
  describeRange,
  formatPattern,
  KEY_HOMES,
  locate,
  numberRange,
  type ObjectNode,
  type Pattern,
  type SchemaNode,
} from './schema-index.js';

type Path = readonly (string | number)[];

export function formatPath(path: Path): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

/** How a place in the file is called in a sentence. */
const PLACES: Record<string, string> = {
  '': 'at the top level',
  'listeners[]': 'under a listener',
  'listeners[].limits': "in a listener's limits",
  'listeners[].routes[]': 'on a route',
  'listeners[].routes[].match': "in a route's match",
  'upstreams.<name>': 'on an upstream',
  resilience: 'in resilience (for every upstream)',
  'fallbacks.<name>': 'in a fallback',
  'degradation.services[]': 'in a degradation service',
  'stores.redis': 'in stores.redis',
};

/** Who owns a block, for "in an upstream's retry". */
const OWNERS: Record<string, string> = {
  'listeners[]': "a listener's",
  'listeners[].routes[]': "a route's",
  'upstreams.<name>': "an upstream's",
  'fallbacks.<name>': "a fallback's",
};

function place(p: Pattern): string {
  const f = formatPattern(p);
  const known = PLACES[f];
  if (known) return known;
  // The nearest owner: `upstreams.<name>.retry` is "in an upstream's retry".
  for (let i = p.length - 1; i > 0; i--) {
    const owner = formatPattern(p.slice(0, i));
    const rest = formatPattern(p.slice(i));
    if (owner === 'resilience') return `in resilience.${rest} (for every upstream)`;
    const o = OWNERS[owner];
    if (o) return `in ${o} ${rest}`;
  }
  return `in ${f}`;
}

/** What a record holds, for "not the name of an upstream": with its article, and bare. */
const ENTRY_NAMES: Record<string, readonly [string, string]> = {
  upstreams: ['an upstream', 'upstream'],
  fallbacks: ['a fallback', 'fallback'],
};

interface Synonym {
  /** breakwater's key (searched in the block, below it, above it, then anywhere). */
  readonly key: string;
  /** Said after the suggestion; `value` is what the file holds under the unknown key. */
  readonly note?: (value: unknown) => string;
}

const attemptsNote = (value: unknown) =>
  typeof value === 'number' && Number.isInteger(value)
    ? `it counts attempts, the first included: ${value} retries is max_attempts: ${value + 1}`
    : 'it counts attempts, the first included (3 = one try and two retries)';
const METRICS_NOTE =
  'metrics need no configuration: they are on the admin port at /metrics (docs/metrics.md)';

/** Names used by Envoy, Traefik, resilience4j, Polly and nginx, and other common guesses. */
const SYNONYMS: Record<string, readonly Synonym[]> = {
  // blocks
  retries: [{ key: 'retry' }, { key: 'max_attempts', note: attemptsNote }],
  retry_policy: [{ key: 'retry' }],
  breaker: [{ key: 'circuit_breaker' }],
  circuit_breakers: [{ key: 'circuit_breaker' }],
  circuitbreaker: [{ key: 'circuit_breaker' }],
  cb: [{ key: 'circuit_breaker' }],
  // (stores.redis has a breaker of its own, not a circuit_breaker)
  circuit_breaker: [{ key: 'breaker' }],
  ratelimit: [{ key: 'rate_limiter' }],
  rate_limit: [{ key: 'rate_limiter' }],
  ratelimiter: [{ key: 'rate_limiter' }],
  limiter: [{ key: 'rate_limiter' }],
  throttle: [{ key: 'rate_limiter' }],
  throttling: [{ key: 'rate_limiter' }],
  local_ratelimit: [{ key: 'rate_limiter' }],
  concurrency: [{ key: 'bulkhead' }],
  in_flight_req: [{ key: 'bulkhead' }],
  inflightreq: [{ key: 'bulkhead' }],
  timeouts: [{ key: 'timeout' }],
  healthcheck: [{ key: 'health_check' }],
  health_checks: [{ key: 'health_check' }],
  outlier: [{ key: 'outlier_detection' }],
  fallbacks: [{ key: 'fallback' }],
  log: [{ key: 'logging' }],
  logs: [{ key: 'logging' }],
  log_level: [{ key: 'level' }],
  loglevel: [{ key: 'level' }],
  limit: [{ key: 'limits' }],
  // retry
  max_retries: [{ key: 'max_attempts', note: attemptsNote }],
  num_retries: [{ key: 'max_attempts', note: attemptsNote }],
  retry_count: [{ key: 'max_attempts', note: attemptsNote }],
  max_retry_attempts: [{ key: 'max_attempts', note: attemptsNote }],
  attempts: [{ key: 'max_attempts' }],
  max_attempt: [{ key: 'max_attempts' }],
  backoff: [{ key: 'initial_wait' }],
  base_interval: [{ key: 'initial_wait' }],
  initial_interval: [{ key: 'initial_wait' }],
  wait_duration: [{ key: 'initial_wait' }],
  delay: [{ key: 'initial_wait' }],
  max_interval: [{ key: 'max_wait' }],
  max_backoff: [{ key: 'max_wait' }],
  exponential_backoff_multiplier: [{ key: 'multiplier' }],
  backoff_multiplier: [{ key: 'multiplier' }],
  retry_budget: [{ key: 'budget' }],
  per_try_timeout: [{ key: 'timeout' }],
  attempt_timeout: [{ key: 'timeout' }],
  total_timeout: [{ key: 'request_timeout' }],
  overall_timeout: [{ key: 'request_timeout' }],
  deadline: [{ key: 'request_timeout' }],
  idle_timeout: [{ key: 'keepalive_timeout' }, { key: 'websocket_idle_timeout' }],
  read_timeout: [{ key: 'body_timeout' }, { key: 'command_timeout' }],
  // circuit breaker
  wait_duration_in_open_state: [{ key: 'reset_timeout' }],
  break_duration: [{ key: 'reset_timeout' }],
  fallback_duration: [{ key: 'reset_timeout' }],
  open_timeout: [{ key: 'reset_timeout' }],
  sleep_window: [{ key: 'reset_timeout' }],
  permitted_number_of_calls_in_half_open_state: [{ key: 'half_open_requests' }],
  minimum_number_of_calls: [{ key: 'minimum_calls' }],
  minimum_throughput: [{ key: 'minimum_calls' }],
  failure_ratio: [{ key: 'failure_rate_threshold' }],
  failure_rate: [{ key: 'failure_rate_threshold' }],
  slow_call_duration_threshold: [{ key: 'slow_call_duration' }],
  sliding_window_size: [{ key: 'window' }],
  sliding_window_type: [{ key: 'window' }],
  sampling_duration: [{ key: 'window' }],
  consecutive_failures: [{ key: 'failure_threshold' }, { key: 'consecutive_failures' }],
  consecutive_5xx: [{ key: 'consecutive_failures' }],
  // rate limiter
  rps: [{ key: 'max_requests_per_second' }],
  qps: [{ key: 'max_requests_per_second' }],
  max_rps: [{ key: 'max_requests_per_second' }],
  rate: [{ key: 'max_requests_per_second' }],
  requests_per_second: [{ key: 'max_requests_per_second' }],
  average: [{ key: 'max_requests_per_second' }],
  limit_for_period: [{ key: 'max_requests_per_second' }],
  burst: [{ key: 'burst_limit' }],
  max_burst: [{ key: 'burst_limit' }],
  max_tokens: [{ key: 'burst_limit' }],
  bucket_size: [{ key: 'burst_limit' }],
  // rate limiter, fleet mode (Traefik's denyOnError, Kong's fault_tolerant, Envoy's failure_mode_deny)
  global: [{ key: 'scope', note: () => 'a limit shared by every replica is scope: global' }],
  deny_on_error: [{ key: 'on_store_error' }],
  fault_tolerant: [{ key: 'on_store_error' }],
  failure_mode_deny: [{ key: 'on_store_error' }],
  fail_open: [{ key: 'on_store_error' }],
  replica_count: [{ key: 'replicas' }],
  instances: [{ key: 'replicas' }],
  // stores.redis (go-redis and ioredis names)
  uri: [{ key: 'url' }],
  address: [{ key: 'url' }],
  addr: [{ key: 'url' }],
  dial_timeout: [{ key: 'connect_timeout' }],
  connection_timeout: [{ key: 'connect_timeout' }],
  timeout: [{ key: 'command_timeout' }],
  redis_url: [{ key: 'redis' }, { key: 'url' }],
  redis_host: [{ key: 'redis' }, { key: 'url' }],
  // bulkhead
  max_concurrent_calls: [{ key: 'max_concurrent' }],
  max_concurrency: [{ key: 'max_concurrent' }],
  max_requests: [{ key: 'max_concurrent' }],
  amount: [{ key: 'max_concurrent' }],
  permit_limit: [{ key: 'max_concurrent' }],
  max_pending_requests: [{ key: 'max_queue' }],
  queue_limit: [{ key: 'max_queue' }],
  queue_size: [{ key: 'max_queue' }],
  max_wait_duration: [{ key: 'queue_timeout' }],
  // upstreams and routes
  hosts: [{ key: 'endpoints' }],
  servers: [{ key: 'endpoints' }],
  backends: [{ key: 'endpoints' }],
  targets: [{ key: 'endpoints' }],
  urls: [{ key: 'endpoints' }],
  lb_endpoints: [{ key: 'endpoints' }],
  addresses: [{ key: 'endpoints' }],
  lb_policy: [{ key: 'load_balancing' }],
  lb: [{ key: 'load_balancing' }],
  load_balancer: [{ key: 'load_balancing' }],
  balancer: [{ key: 'load_balancing' }],
  pass_host_header: [{ key: 'host_header' }],
  sni: [{ key: 'server_name' }],
  ca: [{ key: 'ca_file' }],
  ca_cert: [{ key: 'ca_file' }],
  cert: [{ key: 'cert_file' }],
  insecure: [{ key: 'insecure_skip_verify' }],
  skip_verify: [{ key: 'insecure_skip_verify' }],
  cluster: [{ key: 'upstream' }],
  backend: [{ key: 'upstream' }],
  service: [{ key: 'upstream' }],
  path: [{ key: 'path_prefix' }],
  prefix: [{ key: 'path_prefix' }, { key: 'key_prefix' }],
  path_regex: [{ key: 'path_prefix' }],
  method: [{ key: 'methods' }],
  client_max_body_size: [{ key: 'max_body_bytes' }],
  // things that need no key
  metrics: [{ key: '', note: () => METRICS_NOTE }],
  prometheus: [{ key: '', note: () => METRICS_NOTE }],
  stats: [{ key: '', note: () => METRICS_NOTE }],
  telemetry: [{ key: '', note: () => METRICS_NOTE }],
};

/** `maxAttempts`, `max-attempts`, `MaxAttempts` -> `max_attempts`. */
function normalize(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[-\s]+/g, '_')
    .toLowerCase();
}

/** Edit distance with transpositions (optimal string alignment). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number) => (d[i] as number[])[j] as number;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, at(i - 2, j - 2) + 1);
      (d[i] as number[])[j] = v;
    }
  }
  return at(a.length, b.length);
}

/** Close enough to be a typo: at most 2 edits, and at most a third of the word. */
function near(a: string, b: string): boolean {
  const dist = editDistance(a, b);
  return dist <= 2 && dist * 3 <= Math.max(a.length, b.length);
}

/** Where `key` stands below `block`, as paths relative to it (the nearest level only). */
function below(block: ObjectNode, key: string, maxDepth = 2): Pattern[] {
  let best: Pattern[] = [];
  for (const [b, rel] of blocksBelow(block, maxDepth)) {
    if (b === block || !b.keys.has(key)) continue;
    const depth = rel.filter((s) => typeof s === 'string').length;
    const bestDepth = best[0]?.filter((s) => typeof s === 'string').length;
    if (bestDepth === undefined || depth < bestDepth) best = [rel];
    else if (depth === bestDepth) best.push(rel);
  }
  return best;
}

/** `rel` below the concrete `path`, then `key`: `upstreams.app` + `retry` -> `upstreams.app.retry.max_attempts`. */
function under(path: Path, rel: Pattern, key: string): string {
  const base = formatPath(path);
  const tail = formatPattern([...rel, key]);
  return base ? `${base}.${tail}` : tail;
}

function valueAt(raw: unknown, path: Path): unknown {
  let v = raw;
  for (const seg of path)
    v = v && typeof v === 'object' ? (v as Record<string | number, unknown>)[seg] : undefined;
  return v;
}

function quoteList(keys: readonly string[]): string {
  return keys.map((k) => `"${k}"`).join(', ');
}

/**
 * The message for `key`, unknown in the block at `parent`: where it belongs, or what was meant.
 */
export function unknownKeyMessage(key: string, parent: Path, raw: unknown): string {
  const at = locate(parent, raw);
  const block = at?.node.kind === 'object' ? at.node : undefined;
  const head = `unknown key "${key}"`;
  if (!block || !at) return head;
  // Where the key was written, briefly: the full path is already in front of the message.
  const here =
    PLACES[formatPattern(at.pattern)] ??
    `in ${[...parent].reverse().find((x) => typeof x === 'string') ?? 'the file'}`;
  const value = valueAt(raw, [...parent, key]);
  const n = normalize(key);
  const candidates: Synonym[] = [{ key: n }, ...(SYNONYMS[n] ?? [])];
  const withNote = (s: Synonym) => (s.note ? `; ${s.note(value)}` : '');
  // The key exists elsewhere: "does not belong here, it goes ..."; another name: "unknown key".
  const goes = (c: Synonym) =>
    c.key === key ? `"${key}" does not belong ${here}: it goes` : `${head} ${here}: "${c.key}" goes`;

  // 1. The same key spelled otherwise, or another proxy's name, in this block.
  for (const c of candidates) {
    if (c.key === '' && c.note) return `${head} ${here}: ${c.note(value)}`;
    if (c.key !== key && block.keys.has(c.key))
      return `${head} ${here} (did you mean "${c.key}"?${c.note ? ` ${c.note(value)}` : ''})`;
  }
  // A plain typo of a key of this block (listener -> listeners) before looking elsewhere.
  const typo = [...block.keys.keys()].find((k) => editDistance(n, k) === 1);
  if (typo) return `${head} ${here} (did you mean "${typo}"?)`;
  // 2. In a block below this one (max_attempts on an upstream -> retry.max_attempts).
  for (const c of candidates) {
    const rels = below(block, c.key);
    if (rels.length === 1) {
      const rel = rels[0] as Pattern;
      const dest = PLACES[formatPattern([...at.pattern, ...rel])] ?? `in ${formatPattern(rel)}`;
      return `${goes(c)} ${dest}: ${under(parent, rel, c.key)}${withNote(c)}`;
    }
    if (rels.length > 1)
      return `${goes(c)} in one of ${rels.map((r) => formatPattern(r)).join(', ')}${withNote(c)}`;
  }
  // 3. In a block above this one (match.upstream -> the route's upstream).
  for (const c of candidates) {
    for (let i = parent.length - 1; i >= 0; i--) {
      const up = parent.slice(0, i);
      const above = locate(up, raw);
      if (above?.node.kind === 'object' && above.node.keys.has(c.key)) {
        const where = place(above.pattern).replace(/^(on|in|under) an? /, '$1 the ');
        return `${goes(c)} ${where} itself: ${formatPath([...up, c.key])}${withNote(c)}`;
      }
    }
  }
  // 4. Anywhere else in the file (limits at the top level -> listeners[].limits).
  for (const c of candidates) {
    const homes = KEY_HOMES.get(c.key);
    if (!homes?.length) continue;
    const shown = homes.slice(0, 2).map((p) => `${place(p)}: ${formatPattern([...p, c.key])}`);
    const perUpstream =
      formatPattern(at.pattern).startsWith('listeners[].routes[]') &&
      homes.some((p) => formatPattern(p).startsWith('upstreams.<name>'))
        ? '; it is per upstream, shared by every route to it'
        : '';
    return `${goes(c)} ${shown.join(', or ')}${perUpstream}${withNote(c)}`;
  }
  // 5. A typo of a key of this block, then of a block below it.
  const own = [...block.keys.keys()].filter((k) => near(n, k));
  if (own.length) return `${head} ${here} (did you mean "${own[0]}"?)`;
  for (const [b, rel] of blocksBelow(block, 2)) {
    if (b === block) continue;
    const k = [...b.keys.keys()].find((x) => near(n, x));
    if (k) return `${head} ${here} (did you mean ${under(parent, rel, k)}?)`;
  }
  const keys = [...block.keys.keys()];
  return keys.length <= 14 ? `${head} ${here}; the keys here are ${quoteList(keys)}` : `${head} ${here}`;
}

/**
 * When an issue's path runs through a record entry whose name is itself a key of what the record
 * holds (`upstreams.endpoints`), the entry is a mis-indented key: the path of that entry, and the
 * message that says so. Only for problems at the entry itself, so a real upstream named `retry`
 * with a typo inside is not called mis-indented.
 */
export function misindented(
  issue: z.core.$ZodIssue,
  raw: unknown,
): { path: Path; message: string } | undefined {
  const path = issue.path as (string | number)[];
  for (let i = 1; i <= path.length; i++) {
    const recordAt = locate(path.slice(0, i - 1), raw);
    const name = path[i - 1];
    if (recordAt?.node.kind !== 'record' || typeof name !== 'string') continue;
    const value = recordAt.node.value;
    const options: SchemaNode[] = value.kind === 'union' ? [...value.options] : [value];
    if (!options.some((o) => o.kind === 'object' && o.keys.has(name))) continue;
    const rest = path.length - i;
    const atEntry = rest === 0 || (rest === 1 && issue.code === 'invalid_type' && issue.input === undefined);
    if (!atEntry) continue;
    const record = formatPattern(recordAt.pattern);
    const [a, bare] = ENTRY_NAMES[record] ?? [`an entry of ${record}`, 'entry'];
    return {
      path: path.slice(0, i),
      message: `"${name}" is a key of ${a}, not the name of one: it looks mis-indented; indent it under the ${bare} it belongs to (${record}.<name>.${name})`,
    };
  }
  return undefined;
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  return JSON.stringify(v);
}

const EXPECTED: Record<string, string> = {
  object: 'a map (key: value)',
  record: 'a map (key: value)',
  array: 'a list',
  string: 'a string',
  boolean: 'true or false',
};

/** What a value of the wrong type should have been, and how to fix a quoted number. */
function typeMessage(
  issue: Extract<z.core.$ZodIssue, { code: 'invalid_type' }>,
  subject: string,
  leaf: SchemaNode | undefined,
  source: string | undefined,
): string {
  const range = leaf?.kind === 'leaf' ? numberRange(leaf.schema) : undefined;
  const expected =
    issue.expected === 'number' || issue.expected === 'int'
      ? describeRange(
          range ?? {
            int: issue.expected === 'int',
            min: undefined,
            minInclusive: true,
            max: undefined,
            maxInclusive: true,
          },
        )
      : (EXPECTED[issue.expected] ?? issue.expected);
  let message = `${subject} must be ${expected}, got ${describeValue(issue.input)}`;
  const input = issue.input;
  const looksRight =
    typeof input === 'string' &&
    (((issue.expected === 'number' || issue.expected === 'int') &&
      input.trim() !== '' &&
      Number.isFinite(Number(input))) ||
      (issue.expected === 'boolean' && (input === 'true' || input === 'false')));
  if (looksRight) {
    const quoted = source !== undefined && /^["']/.test(source);
    if (quoted && source.includes('${'))
      message += `: a quoted ${source} stays a string after substitution; drop the quotes (write ${source.slice(1, -1)})`;
    else message += `: drop the quotes (write ${input.trim()})`;
  }
  return message;
}

/**
 * The sentence for a schema issue other than an unknown key. `source` is the value's text in the
 * file (for the quoted-number hint).
 */
export function issueMessage(issue: z.core.$ZodIssue, raw: unknown, source: string | undefined): string {
  const path = issue.path as (string | number)[];
  const last = [...path].reverse().find((s) => typeof s === 'string');
  // An entry of a record is named with its record: `group_weights.blue`.
  const inRecord = path.length > 1 && locate(path.slice(0, -1), raw)?.node.kind === 'record';
  const subject =
    typeof path.at(-1) === 'number'
      ? `each entry of ${last ?? 'the list'}`
      : inRecord
        ? formatPath(path.slice(-2))
        : (last ?? 'the file');
  const leaf = locate(path, raw)?.node;
  switch (issue.code) {
    case 'invalid_type':
      if (issue.input === undefined) return 'is required';
      if (issue.input === null && issue.expected === 'object')
        return `${subject} is empty: its keys must be indented below it`;
      return typeMessage(issue, subject, leaf, source);
    case 'too_big':
    case 'too_small': {
      if (!/^Too (big|small):/.test(issue.message)) return issue.message; // a message of our own
      if (issue.origin === 'number' || issue.origin === 'int') {
        const range = leaf?.kind === 'leaf' ? numberRange(leaf.schema) : undefined;
        const bound = issue.code === 'too_big' ? issue.maximum : issue.minimum;
        const expected = range
          ? describeRange(range)
          : `${issue.code === 'too_big' ? 'at most' : 'at least'} ${String(bound)}`;
        return `${subject} must be ${expected}, got ${describeValue(issue.input ?? valueAt(raw, path))}`;
      }
      const n = Number(issue.code === 'too_big' ? issue.maximum : issue.minimum);
      const unit = issue.origin === 'array' ? 'entries' : issue.origin === 'string' ? 'characters' : 'items';
      return `${subject} must have ${issue.code === 'too_big' ? 'at most' : 'at least'} ${n} ${unit}`;
    }
    case 'invalid_value':
      return `${subject} must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}, got ${describeValue(issue.input ?? valueAt(raw, path))}`;
    case 'invalid_union': {
      // A union without a message of its own: the kinds of value it takes.
      if (issue.message !== 'Invalid input') return issue.message;
      const kinds = issue.errors
        .map((branch) => branch[0])
        .map((first) =>
          first?.code === 'invalid_type' ? (EXPECTED[first.expected] ?? first.expected) : undefined,
        )
        .filter((k): k is string => k !== undefined);
      return kinds.length
        ? `${subject} must be ${[...new Set(kinds)].join(' or ')}, got ${describeValue(valueAt(raw, path))}`
        : `${subject} has the wrong form: got ${describeValue(valueAt(raw, path))}`;
    }
    case 'invalid_key':
      return `${JSON.stringify(path.at(-1))} is not a valid name here: ${issue.issues[0]?.message ?? issue.message}`;
    case 'invalid_format':
      if (/^Invalid string:/.test(issue.message))
        return `${subject} has the wrong form: got ${describeValue(valueAt(raw, path))}`;
      return issue.message;
    default:
      return issue.message;
  }
}
