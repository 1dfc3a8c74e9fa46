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
    expect(cfg.fallbacks['app/fallback']).toMatchObject({
      type: 'cache',
      max_stale: 60_000,
      then: 'app/fallback/then',
    });
    expect(cfg.fallbacks['app/fallback/then']).toMatchObject({ type: 'static_response', status: 503 });
    expect(
      (cfg.fallbacks['app/fallback/then'] as { bodyBytes: Buffer } | undefined)?.bodyBytes.toString(),
    ).toBe('busy');
    expect(cfg.fallbacks.named).toMatchObject({ type: 'cache', then: 'named/then' });
    expect(cfg.fallbacks['named/then']).toMatchObject({ type: 'upstream', upstream: 'app', then: 'last' });
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
