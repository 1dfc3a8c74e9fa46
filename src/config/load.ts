/**
 * YAML file -> validated, fully-defaulted, frozen model.
 *
 * Every problem in a file is reported at once, each with file, line, column, the key path and what
 * was expected, so an operator fixes a file in one pass.
 */
import { readFile } from 'node:fs/promises';
import { type Document, isMap, isPair, isScalar, LineCounter, type Node, parseDocument } from 'yaml';
import type { z } from 'zod';
import { substituteEnv } from './env.js';
import { type ResolvedConfig, resolveConfig } from './resolve.js';
import { configSchema } from './schema.js';

export interface ConfigProblem {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** Dotted key path, e.g. `listeners[0].routes[1].upstream`. */
  readonly key: string;
  readonly message: string;
}

export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[]) {
    super(
      `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems
        .map(formatProblem)
        .join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function formatProblem(p: ConfigProblem): string {
  return `  ${p.file}:${p.line}:${p.column} ${p.key ? `${p.key}: ` : ''}${p.message}`;
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

export interface LoadOptions {
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export interface LoadedConfig {
  readonly config: ResolvedConfig;
  /** The text that was loaded, for hashing and `GET /config`. */
  readonly source: string;
}

/** Reads, substitutes, parses and validates a config file. Throws ConfigError. */
export async function loadConfigFile(file: string, options: LoadOptions = {}): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new ConfigError([{ file, line: 0, column: 0, key: '', message: `cannot read config: ${why}` }]);
  }
  const config = await parseConfigText(text, file, options);
  return { config, source: text };
}

/** Parses and validates config text; `file` names it in errors and anchors relative paths. */
export async function parseConfigText(
  text: string,
  file: string,
  options: LoadOptions = {},
): Promise<ResolvedConfig> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true, strict: true });
  const problems: ConfigProblem[] = [];
  const at = (offset: number | undefined, key: string, message: string) => {
    const pos = offset === undefined ? { line: 1, col: 1 } : lineCounter.linePos(offset);
    problems.push({ file, line: pos.line, column: pos.col, key, message });
  };

  for (const e of doc.errors) at(e.pos[0], '', `YAML syntax: ${e.message.split('\n')[0]}`);
  if (problems.length) throw new ConfigError(problems);

  const envProblems = substituteEnv(doc, options.env ?? process.env);
  for (const p of envProblems) at(p.range?.[0], formatPath(p.path), p.message);
  // A value left empty by a missing variable is reported once, as the missing variable.
  const envKeys = new Set(envProblems.map((p) => formatPath(p.path)));

  const raw: unknown = doc.toJS({ maxAliasCount: 100 }) ?? {};
  const result = configSchema.safeParse(raw, { reportInput: true });
  if (!result.success) {
    for (const issue of result.error.issues) {
      for (const located of locateIssue(doc, issue)) {
        if (!envKeys.has(located.key)) at(located.offset, located.key, located.message);
      }
    }
  }
  if (problems.length || !result.success) throw new ConfigError(sortProblems(problems));

  const resolved = await resolveConfig(result.data, file);
  if (resolved.problems.length) {
    for (const p of resolved.problems) at(nodeAt(doc, p.path)?.range?.[0], formatPath(p.path), p.message);
    throw new ConfigError(sortProblems(problems));
  }
  return resolved.config;
}

function sortProblems(problems: ConfigProblem[]): ConfigProblem[] {
  return problems.sort((a, b) => a.line - b.line || a.column - b.column);
}

interface Located {
  offset: number | undefined;
  key: string;
  message: string;
}

/** Finds where in the file a schema issue belongs: the value, the offending key, or the nearest parent. */
function locateIssue(doc: Document, issue: z.core.$ZodIssue): Located[] {
  const path = issue.path as (string | number)[];
  if (issue.code === 'unrecognized_keys') {
    const parent = nodeAt(doc, path);
    return issue.keys.map((k) => {
      const pair = isMap(parent)
        ? parent.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === k)
        : undefined;
      const keyNode = pair && isScalar(pair.key) ? pair.key : undefined;
      return {
        offset: keyNode?.range?.[0] ?? parent?.range?.[0],
        key: formatPath([...path, k]),
        message: `unknown key "${k}"${suggest(k, issue)}`,
      };
    });
  }
  let node = nodeAt(doc, path);
  let message = describeIssue(issue);
  if (!node) {
    // A required key is missing: point at the map that should hold it.
    for (let i = path.length - 1; i >= 0 && !node; i--) node = nodeAt(doc, path.slice(0, i));
    if (issue.code === 'invalid_type' && issue.input === undefined) message = 'is required';
  }
  return [{ offset: node?.range?.[0], key: formatPath(path), message }];
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type' && issue.input === undefined) return 'is required';
  if (issue.code === 'invalid_type') return `expected ${issue.expected}, got ${describeValue(issue.input)}`;
  if (issue.code === 'invalid_value')
    return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  return issue.message;
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** A near-miss hint for typos: `reset_timout` -> did you mean "reset_timeout"? */
function suggest(key: string, _issue: z.core.$ZodIssue): string {
  const candidates = KNOWN_KEYS;
  let best: string | undefined;
  let bestScore = 3;
  for (const c of candidates) {
    const d = editDistance(key, c);
    if (d < bestScore) {
      bestScore = d;
      best = c;
    }
  }
  return best ? ` (did you mean "${best}"?)` : '';
}

const KNOWN_KEYS = [
  'listeners',
  'admin',
  'upstreams',
  'resilience',
  'fallbacks',
  'degradation',
  'logging',
  'shutdown',
  'name',
  'host',
  'port',
  'routes',
  'match',
  'path_prefix',
  'methods',
  'headers',
  'upstream',
  'strip_prefix',
  'timeout',
  'request_timeout',
  'connect_timeout',
  'body_timeout',
  'websocket',
  'websocket_idle_timeout',
  'websocket_max_duration',
  'allow_trace',
  'retry',
  'circuit_breaker',
  'rate_limiter',
  'bulkhead',
  'endpoints',
  'host_header',
  'max_connections',
  'body_idle_timeout',
  'body_buffer_bytes',
  'send_timeout',
  'request_buffering',
  'response_buffering',
  'streaming_connections',
  'buffering',
  'temp_dir',
  'response_buffer_bytes',
  'max_temp_file_bytes',
  'opt_out_header',
  'trusted_proxies',
  'protocol',
  'max_concurrent_streams',
  'keepalive_timeout',
  'fallback',
  'idempotency_keys',
  'enabled',
  'max_attempts',
  'initial_wait',
  'max_wait',
  'multiplier',
  'jitter',
  'retry_on',
  'max_body_bytes',
  'retry_non_idempotent',
  'attempts_header',
  'budget',
  'ratio',
  'min_per_second',
  'window',
  'failure_threshold',
  'reset_timeout',
  'half_open_requests',
  'success_threshold',
  'minimum_calls',
  'failure_rate_threshold',
  'slow_call_duration',
  'slow_call_rate_threshold',
  'failure_on',
  'max_requests_per_second',
  'burst_limit',
  'mode',
  'max_delay',
  'max_queue',
  'key',
  'max_keys',
  'max_concurrent',
  'queue_timeout',
  'services',
  'fallback_strategy',
  'type',
  'status',
  'body',
  'body_file',
  'on',
  'then',
  'max_stale',
  'vary',
  'conditions',
  'threshold',
  'quantile',
  'minimum_requests',
  'recovery',
  'probe_ratio',
  'level',
  'access_log',
  'access_log_headers',
  'delay',
  'drain_timeout',
  'cache',
  'max_bytes',
  'max_entry_bytes',
  'statuses',
  'idempotency',
  'required',
  'ttl',
  'key_scope',
  'conflict',
  'store_server_errors',
  'token_env',
  'load_balancing',
  'group_weights',
  'failover_threshold',
  'panic',
  'dns_refresh',
  'limits',
  'max_header_bytes',
  'max_headers',
  'header_timeout',
  'max_requests_per_connection',
  'health_check',
  'interval',
  'healthy_threshold',
  'unhealthy_threshold',
  'expected_statuses',
  'outlier_detection',
  'consecutive_failures',
  'base_ejection_time',
  'max_ejection_time',
  'max_ejection_percent',
  'readiness',
  'require_upstreams',
  'weight',
  'priority',
  'group',
  'url',
  'size',
  'tls',
  'ca_file',
  'cert_file',
  'key_file',
  'server_name',
  'insecure_skip_verify',
  'min_version',
];

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0] ?? 0;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j] ?? 0;
      dp[j] = Math.min((dp[j] ?? 0) + 1, (dp[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length] ?? 0;
}

function nodeAt(doc: Document, path: readonly (string | number)[]): Node | undefined {
  if (path.length === 0) return (doc.contents as Node | null) ?? undefined;
  const n: unknown = doc.getIn(path, true);
  return n && typeof n === 'object' && 'range' in n ? (n as Node) : undefined;
}
