/**
 * Config errors that say how to fix them: where a key at the wrong level belongs, suggestions
 * from the block's own keys and from other proxies' names, mis-indented upstream keys, ranges in
 * words, quoted numbers; and `breakwater validate FILE`.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, type ConfigProblem, parseConfigText } from '../../src/config/load.js';
import { configJsonSchema } from '../../src/config/schema.js';
import { KNOWN_KEYS } from '../../src/config/schema-index.js';

const run = promisify(execFile);

const BASE = `listeners:
  - name: main
    port: 15001
    routes:
      - upstream: app
upstreams:
  app:
    endpoints: [http://127.0.0.1:1]
`;

async function problemsOf(yaml: string, env: Record<string, string> = {}): Promise<ConfigProblem[]> {
  try {
    await parseConfigText(yaml, 'test.yaml', { env });
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

/** The one problem of a config; every problem keeps its file, line and column. */
async function only(yaml: string, env: Record<string, string> = {}): Promise<ConfigProblem> {
  const problems = await problemsOf(yaml, env);
  expect(problems).toHaveLength(1);
  const p = problems[0] as ConfigProblem;
  expect(p.file).toBe('test.yaml');
  expect(p.line).toBeGreaterThan(0);
  expect(p.column).toBeGreaterThan(0);
  return p;
}

describe('a key at the wrong level says where it belongs', () => {
  it('limits at the top level goes under a listener', async () => {
    const p = await only(`${BASE}limits: { max_body_bytes: 1MiB }\n`);
    expect(p).toMatchObject({ line: 9, column: 1, key: 'limits' });
    expect(p.message).toBe(
      '"limits" does not belong at the top level: it goes under a listener: listeners[].limits',
    );
    expect(p.message).not.toMatch(/did you mean "limits"/);
  });

  it('idempotency on an upstream goes on a route', async () => {
    const p = await only(`${BASE}    idempotency: { required: true }\n`);
    expect(p).toMatchObject({ line: 9, column: 5, key: 'upstreams.app.idempotency' });
    expect(p.message).toMatch(/goes on a route: listeners\[\]\.routes\[\]\.idempotency/);
    expect(p.message).not.toMatch(/did you mean/);
  });

  it.each(['fallback: busy', 'circuit_breaker: { failure_threshold: 3 }'])(
    'on a route, %s goes on the upstream (or in resilience)',
    async (line) => {
      const key = line.split(':')[0] as string;
      const p = await only(BASE.replace('      - upstream: app', `      - upstream: app\n        ${line}`));
      expect(p).toMatchObject({ line: 6, column: 9, key: `listeners[0].routes[0].${key}` });
      expect(p.message).toContain(`goes on an upstream: upstreams.<name>.${key}`);
      expect(p.message).toContain(`resilience.${key}`);
      expect(p.message).toContain('it is per upstream, shared by every route to it');
      expect(p.message).not.toMatch(/did you mean/);
    },
  );

  it('match.upstream belongs on the route itself', async () => {
    const p = await only(
      BASE.replace(
        '      - upstream: app',
        '      - match: { path_prefix: /x, upstream: app }\n        upstream: app',
      ),
    );
    expect(p.key).toBe('listeners[0].routes[0].match.upstream');
    expect(p.message).toBe(
      '"upstream" does not belong in a route\'s match: it goes on the route itself: listeners[0].routes[0].upstream',
    );
  });

  it('a policy key directly on an upstream points into its block', async () => {
    const p = await only(`${BASE}    max_attempts: 4\n`);
    expect(p.message).toBe(
      '"max_attempts" does not belong on an upstream: it goes in retry: upstreams.app.retry.max_attempts',
    );
    const q = await only(`${BASE}    retry: { timeout: 2s }\n`);
    expect(q.message).toBe(
      '"timeout" does not belong in retry: it goes on the upstream itself: upstreams.app.timeout',
    );
  });
});

describe('suggestions come from the block itself and from the names other proxies use', () => {
  it('rps under rate_limiter suggests max_requests_per_second, never an unrelated key', async () => {
    const p = await only(`${BASE}    rate_limiter: { rps: 100 }\n`);
    expect(p.message).toBe('unknown key "rps" in rate_limiter (did you mean "max_requests_per_second"?)');
  });

  it.each([
    ['    rate_limiter: { max_requests_per_second: 10, burst: 5 }', 'did you mean "burst_limit"?'],
    ['    rate_limiter: { requests_per_second: 10 }', 'did you mean "max_requests_per_second"?'],
    ['    breaker: { failure_threshold: 3 }', 'did you mean "circuit_breaker"?'],
    ['    retries: { max_attempts: 2 }', 'did you mean "retry"?'],
    ['    retry: { maxAttempts: 2 }', 'did you mean "max_attempts"?'],
    ['    healthCheck: { path: /h }', 'did you mean "health_check"?'],
    [
      '    rps: 10',
      '"max_requests_per_second" goes in rate_limiter: upstreams.app.rate_limiter.max_requests_per_second',
    ],
    ['    circuit_breaker: { wait_duration_in_open_state: 10s }', 'did you mean "reset_timeout"?'],
    ['    bulkhead: { max_concurrent_calls: 10 }', 'did you mean "max_concurrent"?'],
    ['    lb_policy: least_conn', 'did you mean "load_balancing"?'],
    ['    servers: [http://127.0.0.1:2]', 'did you mean "endpoints"?'],
    ['    circuit_breaker: { reset_timout: 10s }', 'did you mean "reset_timeout"?'],
    ['    reset_timout: 10s', 'did you mean upstreams.app.circuit_breaker.reset_timeout?'],
  ])('%s -> %s', async (line, expected) => {
    const p = await only(`${BASE}${line}\n`);
    expect(p.message).toContain(expected);
  });

  it('max_retries and num_retries become retry.max_attempts, counting the first attempt', async () => {
    const a = await only(`${BASE}    retry: { max_retries: 2 }\n`);
    expect(a.message).toMatch(
      /did you mean "max_attempts"\? it counts attempts, the first included: 2 retries is max_attempts: 3/,
    );
    const b = await only(`${BASE}    num_retries: 3\n`);
    expect(b.message).toMatch(
      /"max_attempts" goes in retry: upstreams\.app\.retry\.max_attempts; .*3 retries is max_attempts: 4/,
    );
  });

  it('metrics: says that metrics need no configuration', async () => {
    const p = await only(`${BASE}metrics: { enabled: true, port: 9090 }\n`);
    expect(p.message).toMatch(/metrics need no configuration: they are on the admin port at \/metrics/);
  });

  it('lists the keys of a small block when nothing is close', async () => {
    const p = await only(`${BASE}    bulkhead: { zzz: 1 }\n`);
    expect(p.message).toBe(
      'unknown key "zzz" in bulkhead; the keys here are "enabled", "max_concurrent", "max_queue", "queue_timeout"',
    );
  });

  it('a typo of a top-level key is a typo, not a key from elsewhere', async () => {
    const problems = await problemsOf(BASE.replace('upstreams:', 'upstream:'));
    expect(problems.find((p) => p.key === 'upstream')?.message).toBe(
      'unknown key "upstream" at the top level (did you mean "upstreams"?)',
    );
  });
});

describe('mis-indented upstream keys', () => {
  it('a key of an upstream written as an upstream name says it looks mis-indented', async () => {
    const problems = await problemsOf(`listeners:
  - name: main
    port: 15001
    routes: [{ upstream: app }]
upstreams:
  app: { endpoints: [http://127.0.0.1:1] }
  endpoints: [http://127.0.0.1:2]
  timeout: 2s
`);
    expect(problems.map((p) => [p.line, p.column, p.key])).toEqual([
      [7, 3, 'upstreams.endpoints'],
      [8, 3, 'upstreams.timeout'],
    ]);
    expect(problems[0]?.message).toBe(
      '"endpoints" is a key of an upstream, not the name of one: it looks mis-indented; indent it under the upstream it belongs to (upstreams.<name>.endpoints)',
    );
    expect(problems.map((p) => p.message).join('\n')).not.toMatch(/expected object|got a list/);
  });

  it('an upstream left empty by the indentation says its keys must be indented below it', async () => {
    const problems = await problemsOf(`listeners:
  - name: main
    port: 15001
    routes: [{ upstream: app }]
upstreams:
  app:
  endpoints: [http://127.0.0.1:1]
`);
    expect(problems.map((p) => `${p.line}:${p.column} ${p.key}: ${p.message}`)).toEqual([
      '6:7 upstreams.app: upstreams.app is empty: its keys must be indented below it',
      '7:3 upstreams.endpoints: "endpoints" is a key of an upstream, not the name of one: it looks mis-indented; indent it under the upstream it belongs to (upstreams.<name>.endpoints)',
    ]);
  });
});

describe('values in sentences', () => {
  it('a number out of range names the key and its allowed range', async () => {
    const problems = await problemsOf(
      `${BASE.replace('port: 15001', 'port: 99999')}    retry: { max_attempts: 12, multiplier: 0.5 }\n    max_connections: 2.5\n`,
    );
    expect(problems.map((p) => `${p.line}:${p.column} ${p.key}: ${p.message}`)).toEqual([
      '3:11 listeners[0].port: port must be a whole number from 0 to 65535, got 99999',
      '9:28 upstreams.app.retry.max_attempts: max_attempts must be a whole number from 1 to 10, got 12',
      '9:44 upstreams.app.retry.multiplier: multiplier must be a number from 1 to 10, got 0.5',
      '10:22 upstreams.app.max_connections: max_connections must be a whole number of at least 1, got 2.5',
    ]);
    expect(problems.map((p) => p.message).join('\n')).not.toMatch(/Too big|Too small|Invalid input|<=|>=/);
  });

  it('a value of none of the kinds a key takes, and an entry of a map, read as sentences', async () => {
    const p = await only(
      BASE.replace('      - upstream: app', '      - upstream: app\n        strip_prefix: 5'),
    );
    expect(p.message).toBe('strip_prefix must be true or false or a string, got 5');
    const q = await only(
      `${BASE.replace(
        'endpoints: [http://127.0.0.1:1]',
        'endpoints: [{ url: "http://127.0.0.1:1", group: a }]',
      )}    group_weights: { a: -1 }\n`,
    );
    expect(q.message).toBe('group_weights.a must be a number of at least 0, got -1');
  });

  it('a list that needs entries and a choice out of a set read as sentences', async () => {
    const p = await only(`${BASE}    load_balancing: fastest\n`);
    expect(p.message).toBe(
      'load_balancing must be one of "round_robin", "least_conn", "random", "p2c_ewma", got the string "fastest"',
    );
    const q = await only(`${BASE}    health_check: { expected_statuses: [200, 700] }\n`);
    expect(q.message).toBe('each entry of expected_statuses must be a whole number from 100 to 599, got 700');
  });

  it(`a quoted \${PORT:-15101} gets a hint to drop the quotes`, async () => {
    const p = await only(BASE.replace('port: 15001', `port: "\${PORT:-15101}"`));
    expect(p).toMatchObject({ line: 3, column: 11, key: 'listeners[0].port' });
    expect(p.message).toBe(
      `port must be a whole number from 0 to 65535, got the string "15101": a quoted "\${PORT:-15101}" stays a string after substitution; drop the quotes (write \${PORT:-15101})`,
    );
    const q = await only(`${BASE}    max_connections: "64"\n`);
    expect(q.message).toMatch(/got the string "64": drop the quotes \(write 64\)$/);
  });
});

describe('the key index comes from the schema', () => {
  it('KNOWN_KEYS is every property name of the JSON Schema, and nothing else', () => {
    const names = new Set<string>();
    const walk = (v: unknown, inProperties: boolean) => {
      if (Array.isArray(v)) {
        for (const x of v) walk(x, false);
      } else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if (inProperties) names.add(k);
          walk(x, k === 'properties' && !inProperties);
        }
      }
    };
    walk(configJsonSchema(), false);
    expect(new Set(KNOWN_KEYS)).toEqual(names);
  });
});

describe('breakwater validate FILE', () => {
  const cli = join(import.meta.dirname, '../../dist/cli.js');
  const dir = mkdtempSync(join(tmpdir(), 'bw-validate-pos-'));
  const fail = (args: string[]) =>
    run(process.execPath, [cli, ...args]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );

  it('validates the file given as an argument, not the default one', async () => {
    const bad = join(dir, '1_typo.yaml');
    writeFileSync(bad, `${BASE}    rate_limiter: { rps: 10 }\n`);
    const err = await fail(['validate', bad]);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain(
      `${bad}:9:21 upstreams.app.rate_limiter.rps: unknown key "rps" in rate_limiter (did you mean "max_requests_per_second"?)`,
    );
    const good = join(dir, 'good.yaml');
    writeFileSync(good, BASE);
    expect((await run(process.execPath, [cli, 'validate', good])).stdout).toBe(`${good}: valid\n`);
  });

  it.each([
    [['validate', 'a.yaml', 'b.yaml'], /unexpected argument "b.yaml"/],
    [['validate', '--conf', 'a.yaml'], /Unknown option '--conf'/],
    [['validate', '--config', 'a.yaml', 'b.yaml'], /two config files given/],
    [['schema', 'extra'], /unexpected argument "extra" after schema/],
    [['my.yaml'], /unknown command "my.yaml" \(to run with this file: breakwater --config my.yaml\)/],
  ])('refuses %j with exit 2 and the usage', async (args, message) => {
    const err = await fail(args);
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(message);
    expect(err.stderr).toMatch(/Usage:/);
  });
});
