/**
 * Config gotchas (issue 13): `_percent` keys read a plain number as a percent, inline fallbacks,
 * and keys that would validate but be ignored where they are written are refused.
 */
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { ConfigError, type ConfigProblem, parseConfigText } from '../../src/config/load.js';
import { KEY_HOMES, locate } from '../../src/config/schema-index.js';

const BASE = `listeners:
  - name: main
    port: 15001
    routes:
      - upstream: app
upstreams:
  app:
    endpoints: [http://127.0.0.1:1]
`;

async function problemsOf(yaml: string): Promise<ConfigProblem[]> {
  try {
    await parseConfigText(yaml, 'test.yaml', { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

describe('keys ending in _percent', () => {
  it.each([
    ['50', 0.5],
    ['"50%"', 0.5],
    ['100', 1],
    ['0', 0],
    ['0.5', 0.005],
    ['12.5%', 0.125],
  ])('max_ejection_percent: %s is %s of the endpoints', async (written, share) => {
    const cfg = await parseConfigText(
      `${BASE}    outlier_detection: { max_ejection_percent: ${written} }\n`,
      't.yaml',
      { env: {} },
    );
    expect(cfg.upstreams.app?.outlierDetection?.maxEjectionPercent).toBeCloseTo(share, 10);
  });

  it('refuses a percent over 100 with the range in the message', async () => {
    const problems = await problemsOf(`${BASE}    outlier_detection: { max_ejection_percent: 150 }\n`);
    expect(problems).toEqual([
      expect.objectContaining({
        key: 'upstreams.app.outlier_detection.max_ejection_percent',
        message: 'expected a percentage from 0 to 100, such as 50 or "50%", got 150',
      }),
    ]);
  });

  it('every key of the schema that ends in _percent reads 50 as 50 %', () => {
    const keys = [...KEY_HOMES.keys()].filter((k) => k.endsWith('_percent'));
    expect(keys.length).toBeGreaterThan(0);
    for (const key of keys) {
      for (const home of KEY_HOMES.get(key) ?? []) {
        // A concrete path for the pattern: names become "x", list entries index 0.
        const path = [...home, key].map((s) => (typeof s === 'string' ? s : s.any === 'index' ? 0 : 'x'));
        const leaf = locate(path, {})?.node;
        expect(leaf?.kind, `${path.join('.')}`).toBe('leaf');
        const schema = (leaf as { schema: z.ZodType }).schema;
        expect(schema.parse(50), `${path.join('.')}`).toBe(0.5);
      }
    }
  });

  it('ratio keys without _percent keep their meaning: 0.5 is 50 %', async () => {
    const cfg = await parseConfigText(
      `${BASE}    circuit_breaker: { failure_rate_threshold: 0.5 }\n`,
      't.yaml',
      {
        env: {},
      },
    );
    expect(cfg.upstreams.app?.circuitBreaker?.failureRateThreshold).toBe(0.5);
  });
});

describe('inline fallbacks', () => {
  it("an upstream's fallback and a fallback's then take a fallback object as well as a name", async () => {
    const cfg = await parseConfigText(
      `${BASE}    fallback: { type: cache, max_stale: 1m, then: { type: static_response, status: 503, body: busy } }
  other:
    endpoints: [http://127.0.0.1:2]
    fallback: named
fallbacks:
  named: { type: cache, then: { type: upstream, upstream: app, then: last } }
  last: { type: static_response, body: '[]' }
`,
      't.yaml',
      { env: {} },
    );
    expect(cfg.upstreams.app?.fallback).toBe('app/fallback');
    expect(cfg.upstreams.other?.fallback).toBe('named');
    const fb = (name: string) => cfg.fallbacks[name];
    expect(fb('app/fallback')).toMatchObject({ type: 'cache', maxStale: 60_000 });
    expect(fb('app/fallback')?.next).toBe('app/fallback/then');
    expect(fb('app/fallback/then')).toMatchObject({ type: 'static_response', status: 503 });
    expect((fb('app/fallback/then') as { body: Buffer } | undefined)?.body.toString()).toBe('busy');
    expect(fb('named')).toMatchObject({ type: 'cache' });
    expect(fb('named')?.next).toBe('named/then');
    expect(fb('named/then')).toMatchObject({ type: 'upstream', upstream: 'app' });
    expect(fb('named/then')?.next).toBe('last');
    expect(cfg.fallbackOf).toEqual({ app: 'app/fallback', other: 'named' });
  });

  it('checks an inline fallback like a named one, with its own line and column', async () => {
    const problems = await problemsOf(`${BASE}    fallback:
      type: upstream
      upstream: ghost
      then: { type: static_response, body: x, body_file: y.json, then: nowhere }
`);
    expect(problems.map((p) => `${p.line}:${p.column} ${p.key}: ${p.message}`)).toEqual([
      '11:17 upstreams.app.fallback.upstream: upstream "ghost" is not defined; defined: app',
      '12:58 upstreams.app.fallback.then.body_file: give body or body_file, not both',
      '12:72 upstreams.app.fallback.then.then: fallback "nowhere" is not defined; none is defined',
    ]);
  });
});

describe('keys that would be ignored where they are written are refused', () => {
  /** The problems of a config as `line:column key: message`. */
  const refused = async (yaml: string) =>
    (await problemsOf(yaml)).map((p) => `${p.line}:${p.column} ${p.key}: ${p.message}`);

  it("retry.budget under a route says it belongs to the upstream's retry", async () => {
    const problems = await problemsOf(
      BASE.replace(
        '      - upstream: app',
        '      - upstream: app\n        retry: { max_attempts: 2, budget: { ratio: 10% } }',
      ),
    );
    expect(problems).toEqual([
      expect.objectContaining({
        line: 6,
        column: 35,
        key: 'listeners[0].routes[0].retry.budget',
        message:
          '"budget" does not belong in retry: it goes in an upstream\'s retry: upstreams.<name>.retry.budget, or in resilience.retry (for every upstream): resilience.retry.budget; it is per upstream, shared by every route to it',
      }),
    ]);
  });

  it('the rest of a route retry block is still accepted', async () => {
    const cfg = await parseConfigText(
      BASE.replace(
        '      - upstream: app',
        '      - upstream: app\n        retry: { max_attempts: 2, initial_wait: 10ms }',
      ),
      't.yaml',
      { env: {} },
    );
    expect(cfg.listeners[0]?.routes[0]?.retry).toMatchObject({ maxAttempts: 2, initialWait: 10 });
  });

  it('circuit_breaker keys that only rate thresholds read, without a rate threshold', async () => {
    expect(
      await refused(
        `${BASE}    circuit_breaker: { window: { type: time, size: 30s }, minimum_calls: 10, slow_call_duration: 1s }\n`,
      ),
    ).toEqual([
      '9:32 upstreams.app.circuit_breaker.window: window is read only with failure_rate_threshold or slow_call_rate_threshold (the consecutive-failure rule counts no window); set one, or remove window',
      '9:74 upstreams.app.circuit_breaker.minimum_calls: minimum_calls is read only with failure_rate_threshold or slow_call_rate_threshold (the consecutive-failure rule counts no window); set one, or remove minimum_calls',
      '9:98 upstreams.app.circuit_breaker.slow_call_duration: slow_call_duration is read only with slow_call_rate_threshold; set it, or remove slow_call_duration',
    ]);
    expect(await refused(`${BASE}    circuit_breaker: { slow_call_rate_threshold: 50% }\n`)).toEqual([
      '9:50 upstreams.app.circuit_breaker.slow_call_rate_threshold: slow_call_rate_threshold needs slow_call_duration (what counts as slow)',
    ]);
    // Layered: the threshold may come from resilience.
    await parseConfigText(
      `${BASE}    circuit_breaker: { minimum_calls: 10 }\nresilience:\n  circuit_breaker: { failure_rate_threshold: 50% }\n`,
      't.yaml',
      { env: {} },
    );
  });

  it('rate_limiter keys without effect: no rate, shaping keys in reject mode, max_keys without key', async () => {
    expect(
      await refused(
        `${BASE}    rate_limiter: { burst_limit: 10 }\n  b:\n    endpoints: [http://127.0.0.1:2]\n    rate_limiter: { max_requests_per_second: 5, max_delay: 2s, max_queue: 5, max_keys: 10 }\n`,
      ),
    ).toEqual([
      '9:19 upstreams.app.rate_limiter: a rate_limiter needs max_requests_per_second (here or in resilience.rate_limiter); without it there is no limiter',
      '12:60 upstreams.b.rate_limiter.max_delay: max_delay is read only in mode: shape (this limiter rejects at once)',
      '12:75 upstreams.b.rate_limiter.max_queue: max_queue is read only in mode: shape (this limiter rejects at once)',
      '12:88 upstreams.b.rate_limiter.max_keys: max_keys is read only with key (client_ip or header:<name>)',
    ]);
  });

  it('bulkhead queue_timeout without a queue', async () => {
    expect(await refused(`${BASE}    bulkhead: { max_concurrent: 5, queue_timeout: 2s }\n`)).toEqual([
      '9:51 upstreams.app.bulkhead.queue_timeout: queue_timeout is read only with max_queue above 0 (no request waits for a slot)',
    ]);
  });

  it('max_concurrent_streams on an HTTP/1.1 upstream', async () => {
    expect(await refused(`${BASE}    max_concurrent_streams: 50\n`)).toEqual([
      '9:29 upstreams.app.max_concurrent_streams: max_concurrent_streams is read only with protocol: h2 or h2c',
    ]);
  });

  it('failover_threshold with a single priority level', async () => {
    expect(await refused(`${BASE}    failover_threshold: 70%\n`)).toEqual([
      '9:25 upstreams.app.failover_threshold: failover_threshold is read only when endpoints have more than one priority',
    ]);
  });

  it('a fallback given twice, in the upstream and in resilience.fallback.services', async () => {
    expect(
      await refused(`${BASE}    fallback: a
fallbacks:
  a: { type: static_response }
  b: { type: static_response }
resilience:
  fallback: { services: { app: { fallback_strategy: b } } }
`),
    ).toEqual([
      '14:32 resilience.fallback.services.app: upstreams.app.fallback is set too, and wins; keep one of them',
    ]);
  });

  it('on: of a fallback that is only reached through then', async () => {
    expect(
      await refused(`${BASE}    fallback: first
fallbacks:
  first: { type: cache, then: second }
  second: { type: static_response, on: [timeout] }
  third: { type: cache, on: [error], then: { type: static_response, on: [error] } }
`),
    ).toEqual([
      "12:40 fallbacks.second.on: on is read only on the first fallback of an upstream; this one is reached through then, where the first fallback's on decides",
      "13:73 fallbacks.third.then.on: on is read only on the first fallback of an upstream; this one is reached through then, where the first fallback's on decides",
    ]);
  });

  it('the same upstream twice in degradation.services', async () => {
    expect(
      await refused(`${BASE}    fallback: a
fallbacks:
  a: { type: static_response }
degradation:
  services:
    - { name: app, fallback: a, conditions: [{ type: error_rate, threshold: 50% }] }
    - { name: app, fallback: a, conditions: [{ type: latency, threshold: 1s }] }
`),
    ).toEqual([
      '15:15 degradation.services[1].name: upstream "app" is already in degradation.services[0]; one entry per upstream (put both conditions in it)',
    ]);
  });

  it("a route's websocket timeouts with websocket: false", async () => {
    expect(
      await refused(
        BASE.replace(
          '      - upstream: app',
          '      - upstream: app\n        websocket: false\n        websocket_idle_timeout: 1m',
        ),
      ),
    ).toEqual([
      '7:33 listeners[0].routes[0].websocket_idle_timeout: websocket_idle_timeout is read only when the route passes WebSockets (websocket: false here)',
    ]);
  });

  it('allow_trace on a route whose match.methods leaves TRACE out', async () => {
    expect(
      await refused(
        BASE.replace(
          '      - upstream: app',
          '      - upstream: app\n        match: { methods: [GET, HEAD] }\n        allow_trace: true',
        ),
      ),
    ).toEqual([
      '7:22 listeners[0].routes[0].allow_trace: allow_trace is read only when the route takes TRACE requests; its match.methods (GET, HEAD) leaves TRACE out: add TRACE to them, or remove allow_trace',
    ]);
    // Read: the route takes TRACE (every method, or TRACE listed).
    for (const match of ['', '\n        match: { methods: [GET, TRACE] }'])
      await parseConfigText(
        BASE.replace('      - upstream: app', `      - upstream: app${match}\n        allow_trace: true`),
        't.yaml',
        { env: {} },
      );
  });

  it('access_log_headers with access_log: false', async () => {
    expect(
      await refused(`${BASE}logging: { access_log: false, access_log_headers: [user-agent] }\n`),
    ).toEqual(['9:51 logging.access_log_headers: access_log_headers is read only with access_log: true']);
  });
});
