import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { configJsonSchema } from '../../src/config/schema.js';

const run = promisify(execFile);
/**
 * The design document's two YAML blocks, copied verbatim into the repository (a clone must need
 * nothing beside it). Their digests are pinned below: a fixture edited to fit the code fails.
 */
const SEEDS = join(import.meta.dirname, '../fixtures/seed-examples');
const SEED_SHA256 = {
  'ecommerce-promo.yaml': 'dc59efa1d6099843e3170717ca52dacedd179e63096d26d70aef6bded8ae6258',
  'degradation.yaml': 'dd216a8b97aee89536fc03c4ad3f139eaf7b672fcf78b307721f301b9bf6ab41',
};
const BASE = `
listeners:
  - name: main
    port: 15001
    routes:
      - upstream: recommendation
upstreams:
  recommendation: { endpoints: [http://127.0.0.1:9001] }
  inventory: { endpoints: [http://127.0.0.1:9002] }
  recommendation-service: { endpoints: [http://127.0.0.1:9003] }
  search-service: { endpoints: [http://127.0.0.1:9004] }
fallbacks:
  static_top_items: { type: static_response, body: '[]' }
  estimated_stock: { type: static_response, body: '{}' }
`;

async function problemsOf(yaml: string, env: Record<string, string> = {}) {
  try {
    await parseConfigText(yaml, 'test.yaml', { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

describe('the design document seed blocks', () => {
  it('the fixtures are the design document blocks, byte for byte', () => {
    for (const [file, sha256] of Object.entries(SEED_SHA256))
      expect({
        file,
        sha256: createHash('sha256')
          .update(readFileSync(join(SEEDS, file)))
          .digest('hex'),
      }).toEqual({ file, sha256 });
  });

  it('loads the e-commerce block unchanged as the resilience defaults of every upstream', async () => {
    const seed = readFileSync(join(SEEDS, 'ecommerce-promo.yaml'), 'utf8');
    const cfg = await parseConfigText(BASE + seed, 'promo.yaml', { env: {} });
    for (const name of ['recommendation', 'inventory', 'search-service']) {
      const u = cfg.upstreams[name];
      expect(u?.circuitBreaker).toMatchObject({ failureThreshold: 10, resetTimeout: 60_000 });
      expect(u?.rateLimiter).toMatchObject({ ratePerSecond: 10_000, burst: 5_000, mode: 'reject' });
    }
    expect(cfg.fallbackOf).toEqual({ recommendation: 'static_top_items', inventory: 'estimated_stock' });
  });

  it('resolves the degradation block: thresholds as milliseconds and ratios, defaults applied', async () => {
    const seed = readFileSync(join(SEEDS, 'degradation.yaml'), 'utf8');
    const cfg = await parseConfigText(BASE + seed, 'degradation.yaml', { env: {} });
    expect(cfg.degradation).toMatchObject({ window: 10_000, minimumRequests: 20, recovery: 10_000 });
    expect(cfg.degradation?.services).toEqual([
      {
        name: 'recommendation-service',
        fallback: 'static_response',
        conditions: [
          { type: 'latency', threshold: 500, quantile: 0.99 },
          { type: 'error_rate', threshold: 0.5 },
        ],
      },
      {
        name: 'search-service',
        fallback: 'cache_only',
        conditions: [{ type: 'availability', threshold: 0.8 }],
      },
    ]);
  });
});

describe('values', () => {
  it('reads durations in ms, s, m and bare seconds, and ratios as % or fractions', async () => {
    const cfg = await parseConfigText(
      `${BASE}
resilience:
  timeout: 250ms
  request_timeout: 1m
  connect_timeout: 2
  circuit_breaker: { reset_timeout: 60, failure_rate_threshold: 50%, slow_call_rate_threshold: 0.25, slow_call_duration: 1s }
`,
      't.yaml',
      { env: {} },
    );
    const u = cfg.upstreams.inventory;
    expect(u?.timeouts).toMatchObject({ attempt: 250, request: 60_000, connect: 2_000 });
    expect(u?.circuitBreaker).toMatchObject({
      resetTimeout: 60_000,
      failureRateThreshold: 0.5,
      slowCallRateThreshold: 0.25,
    });
  });

  it('substitutes environment variables, with and without defaults, typing unquoted values', async () => {
    const yaml = `
listeners:
  - name: main
    port: \${PORT}
    routes: [{ upstream: app }]
upstreams:
  app:
    endpoints: ["\${APP_URL:-http://127.0.0.1:8080}"]
    timeout: \${TIMEOUT:-3s}
`;
    const cfg = await parseConfigText(yaml, 't.yaml', { env: { PORT: '18080' } });
    expect(cfg.listeners[0]?.port).toBe(18080);
    expect(cfg.upstreams.app?.endpoints[0]?.origin).toBe('http://127.0.0.1:8080');
    expect(cfg.upstreams.app?.timeouts.attempt).toBe(3000);
  });

  it('fills every default and freezes the model', async () => {
    const cfg = await parseConfigText(BASE, 't.yaml', { env: {} });
    expect(cfg.admin).toEqual({ host: '127.0.0.1', port: 9901, tokenEnv: 'BREAKWATER_ADMIN_TOKEN' });
    expect(cfg.listeners[0]?.host).toBe('127.0.0.1');
    expect(cfg.listeners[0]?.routes[0]?.name).toBe('main-0');
    expect(cfg.upstreams.inventory?.timeouts).toEqual({
      attempt: 5000,
      request: 15000,
      connect: 2000,
      body: 30000,
    });
    expect(cfg.shutdown).toEqual({ delay: 0, drainTimeout: 25_000 });
    expect(Object.isFrozen(cfg.upstreams.inventory?.timeouts)).toBe(true);
    expect(() => {
      (cfg.listeners as unknown as unknown[]).push(1);
    }).toThrow();
  });

  it('layers policies: built-in <- resilience <- upstream <- route', async () => {
    const cfg = await parseConfigText(
      `
listeners:
  - name: main
    port: 1
    routes:
      - { upstream: a, match: { path_prefix: /slow }, timeout: 9s, request_timeout: 20s, retry: { max_attempts: 5 } }
      - { upstream: a }
upstreams:
  a: { endpoints: [http://127.0.0.1:1], timeout: 2s, retry: { initial_wait: 50ms } }
resilience:
  timeout: 1s
  retry: { max_attempts: 2, max_wait: 3s }
`,
      't.yaml',
      { env: {} },
    );
    const [slow, plain] = cfg.listeners[0]?.routes ?? [];
    expect(plain?.timeouts.attempt).toBe(2000);
    expect(plain?.retry).toMatchObject({ maxAttempts: 2, initialWait: 50, maxWait: 3000 });
    expect(slow?.timeouts).toMatchObject({ attempt: 9000, request: 20000 });
    expect(slow?.retry).toMatchObject({ maxAttempts: 5, initialWait: 50, maxWait: 3000 });
  });

  it('layers the websocket keys like the timeouts; websocket is on by default', async () => {
    const cfg = await parseConfigText(
      `
listeners:
  - name: main
    port: 1
    routes:
      - { upstream: a, match: { path_prefix: /chat }, websocket_idle_timeout: 30s }
      - { upstream: a, match: { path_prefix: /api }, websocket: false }
      - { upstream: b }
upstreams:
  a: { endpoints: [http://127.0.0.1:1], websocket_max_duration: 1h }
  b: { endpoints: [http://127.0.0.1:2] }
resilience:
  websocket_idle_timeout: 2m
`,
      't.yaml',
      { env: {} },
    );
    const [chat, api, plain] = cfg.listeners[0]?.routes ?? [];
    expect(chat?.websocket).toEqual({ enabled: true, idleTimeout: 30_000, maxDuration: 3_600_000 });
    expect(api?.websocket).toEqual({ enabled: false, idleTimeout: 120_000, maxDuration: 3_600_000 });
    expect(plain?.websocket).toEqual({ enabled: true, idleTimeout: 120_000, maxDuration: 0 });
    const defaults = await parseConfigText(BASE, 't.yaml', { env: {} });
    expect(defaults.listeners[0]?.routes[0]?.websocket).toEqual({
      enabled: true,
      idleTimeout: 300_000,
      maxDuration: 0,
    });
  });

  it('suggests the websocket keys for a typo', async () => {
    const problems = await problemsOf(
      `${BASE.replace('- upstream: recommendation', '- { upstream: recommendation, websocket_idle_timout: 1m }')}`,
    );
    expect(problems.map((p) => p.message).join('\n')).toMatch(/did you mean "websocket_idle_timeout"/);
  });
});

describe('errors', () => {
  it('reports every problem at once with file, line, column, key and what was expected', async () => {
    const problems = await problemsOf(`listeners:
  - name: main
    port: 99999
    routes:
      - upstream: nope
        match: { path_prefx: /x }
upstreams:
  app:
    endpoints: [ "ftp://x" ]
    timeout: 5 parsecs
resilience:
  circuit_breaker:
    reset_timout: 60
`);
    expect(problems.map((p) => `${p.line}:${p.column} ${p.key}`)).toEqual([
      '3:11 listeners[0].port',
      '5:19 listeners[0].routes[0].upstream',
      '6:18 listeners[0].routes[0].match.path_prefx',
      '9:18 upstreams.app.endpoints[0]',
      '10:14 upstreams.app.timeout',
      '13:5 resilience.circuit_breaker.reset_timout',
    ]);
    expect(problems.every((p) => p.file === 'test.yaml')).toBe(true);
    const byKey = Object.fromEntries(problems.map((p) => [p.key, p.message]));
    expect(byKey['listeners[0].routes[0].upstream']).toMatch(/upstream "nope" is not defined; defined: app/);
    expect(byKey['listeners[0].routes[0].match.path_prefx']).toMatch(
      /^unknown key "path_prefx" in a route's match \(did you mean "path_prefix"\?\)$/,
    );
    expect(byKey['upstreams.app.timeout']).toMatch(/expected a duration such as 250ms/);
    expect(byKey['resilience.circuit_breaker.reset_timout']).toMatch(/did you mean "reset_timeout"/);
  });

  it('names a missing required key at the map that should hold it', async () => {
    const problems = await problemsOf(
      'listeners:\n  - name: main\n    routes: [{ upstream: a }]\nupstreams:\n  a: { endpoints: [http://127.0.0.1:1] }\n',
    );
    expect(problems).toEqual([
      expect.objectContaining({ line: 2, column: 5, key: 'listeners[0].port', message: 'is required' }),
    ]);
  });

  it('reports YAML syntax errors with their position', async () => {
    const problems = await problemsOf('listeners:\n  - name: main\n   port: [1\n');
    expect(problems[0]).toMatchObject({
      file: 'test.yaml',
      line: expect.any(Number),
      message: expect.stringMatching(/^YAML syntax/),
    });
  });

  it('rejects a missing environment variable without a default', async () => {
    const problems = await problemsOf(`${BASE}\nadmin:\n  port: \${ADMIN_PORT}\n`);
    expect(problems).toEqual([
      expect.objectContaining({ key: 'admin.port', message: expect.stringMatching(/ADMIN_PORT is not set/) }),
    ]);
  });

  it('rejects an attempt timeout longer than the request timeout (cross-field check)', async () => {
    const problems = await problemsOf(`${BASE}\nresilience:\n  timeout: 20s\n  request_timeout: 10s\n`);
    expect(problems.map((p) => p.key)).toContain('resilience.timeout');
  });

  it('rejects a duration longer than a timer can wait (24 days)', async () => {
    const problems = await problemsOf(`${BASE}\nresilience:\n  websocket_max_duration: 720h\n`);
    expect(problems).toEqual([
      expect.objectContaining({
        key: 'resilience.websocket_max_duration',
        message: 'at most 24 days (2147483647 ms), got "720h"',
      }),
    ]);
  });

  it('rejects a trusted_proxies entry that is not an address or CIDR block, naming where it is', async () => {
    const problems = await problemsOf(`
listeners:
  - name: main
    port: 9000
    trusted_proxies: [10.0.0.0/8, 10.0.0.0/40]
    routes: [{ upstream: app }]
upstreams:
  app: { endpoints: [http://127.0.0.1:9001] }
`);
    expect(problems).toEqual([
      expect.objectContaining({
        line: 5,
        column: 35,
        key: 'listeners[0].trusted_proxies[1]',
        message: 'expected an IP address or CIDR block, e.g. 10.0.0.0/8 or fd00::/8',
      }),
    ]);
  });

  it('rejects unknown fallbacks, upstreams and ports used twice', async () => {
    const problems = await problemsOf(`
listeners:
  - { name: a, port: 9000, routes: [{ upstream: x }] }
  - { name: b, port: 9000, routes: [{ upstream: x }] }
admin: { port: 9000 }
upstreams:
  x: { endpoints: [http://127.0.0.1:1], fallback: ghost }
`);
    expect(problems.map((p) => p.message)).toEqual([
      '127.0.0.1:9000 is already used by admin',
      '127.0.0.1:9000 is already used by listener a',
      'fallback "ghost" is not defined; none is defined',
    ]);
  });
});

describe('JSON Schema', () => {
  it('the committed config/breakwater.schema.json is the one generated from the schema', () => {
    const committed = JSON.parse(
      readFileSync(join(import.meta.dirname, '../../config/breakwater.schema.json'), 'utf8'),
    );
    expect(committed).toEqual(configJsonSchema());
  });
});

describe('breakwater validate', () => {
  const cli = join(import.meta.dirname, '../../dist/cli.js');
  const dir = mkdtempSync(join(tmpdir(), 'bw-validate-'));

  it('breakwater schema writes the whole schema to a pipe before it exits', async () => {
    // execFile reads stdout through a pipe: a process that exits before the pipe drains is cut short.
    const { stdout } = await run(process.execPath, [cli, 'schema'], { maxBuffer: 4 * 1024 * 1024 });
    expect(stdout.length).toBeGreaterThan(65_536);
    expect(JSON.parse(stdout)).toEqual(configJsonSchema());
  });

  it('exits 0 for the shipped default config', async () => {
    const { stdout } = await run(process.execPath, [
      cli,
      'validate',
      '--config',
      join(import.meta.dirname, '../../config/breakwater.yaml'),
    ]);
    expect(stdout).toMatch(/valid/);
  });

  it('exits 0 for the first-hour example that docs/getting-started.md uses', async () => {
    const file = join(import.meta.dirname, '../../config/examples/first-hour.yaml');
    const { stdout } = await run(process.execPath, [cli, 'validate', '--config', file]);
    expect(stdout).toBe(`${file}: valid\n`);
  });

  it('exits 1 and prints file:line:column for a bad config', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, `${BASE}\nresilience:\n  retry:\n    max_attempts: many\n`);
    const err = await run(process.execPath, [cli, 'validate', '--config', bad]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain(
      `${bad}:18:19 resilience.retry.max_attempts: max_attempts must be a whole number from 1 to 10, got the string "many"`,
    );
  });

  it('exits 1 for a file that does not exist', async () => {
    const err = await run(process.execPath, [cli, 'validate', '--config', join(dir, 'missing.yaml')]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toMatch(/file not found/);
  });

  it('prints its version and help', async () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '../../package.json'), 'utf8'));
    expect((await run(process.execPath, [cli, '--version'])).stdout).toBe(`breakwater ${pkg.version}\n`);
    expect((await run(process.execPath, [cli, '--help'])).stdout).toMatch(
      /breakwater validate --config FILE/,
    );
  });
});

describe('shipped configs', () => {
  const root = join(import.meta.dirname, '../..');
  it.each([
    'config/breakwater.yaml',
    'config/compose.yaml',
    'config/examples/ecommerce.yaml',
    'config/examples/first-hour.yaml',
  ])('%s is valid', async (file) => {
    const cfg = await parseConfigText(readFileSync(join(root, file), 'utf8'), join(root, file), {
      env: {},
    });
    expect(cfg.listeners[0]?.port).toBe(15001);
  });

  it("the README's minimal config is valid", async () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const block = /## A minimal config\s+```yaml\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
    const cfg = await parseConfigText(block, 'README.md', { env: {} });
    expect(cfg.upstreams.payments?.fallback).toBe('payments_busy');
  });

  it('the e-commerce example holds both seed blocks unchanged', () => {
    const example = readFileSync(join(root, 'config/examples/ecommerce.yaml'), 'utf8');
    for (const seed of ['ecommerce-promo.yaml', 'degradation.yaml']) {
      const block = readFileSync(join(SEEDS, seed), 'utf8')
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .join('\n')
        .trim();
      expect(example).toContain(block);
    }
  });

  it('the ConfigMap in k8s/base/configmap.yaml holds a valid config', async () => {
    const { parseAllDocuments } = await import('yaml');
    const docs = parseAllDocuments(readFileSync(join(root, 'k8s/base/configmap.yaml'), 'utf8')).map((d) =>
      d.toJS(),
    );
    const cm = docs.find((d) => d.kind === 'ConfigMap');
    const cfg = await parseConfigText(cm.data['breakwater.yaml'], 'k8s/base/configmap.yaml', { env: {} });
    expect(cfg.shutdown).toEqual({ delay: 0, drainTimeout: 10_000 });
  });
});
