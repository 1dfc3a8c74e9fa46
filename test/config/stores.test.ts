/**
 * stores.redis and the keys that use it: defaults, the URL, environment substitution, and the
 * cross-checks that name what is missing.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';

const base = (upstreamExtra: string, top = '', routeExtra = '') => `
listeners:
  - name: main
    port: 15001
    routes:
      - { name: pay, upstream: app ${routeExtra} }
upstreams:
  app: { endpoints: [http://127.0.0.1:9001] ${upstreamExtra} }
${top}
`;

async function problemsOf(yaml: string, env: Record<string, string> = {}) {
  try {
    await parseConfigText(yaml, 'test.yaml', { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.key}: ${p.message}`);
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

describe('stores.redis', () => {
  it('fills its defaults, reads the URL and keeps credentials out of the address', async () => {
    const yaml = `
listeners:
  - name: main
    port: 15001
    routes:
      - { name: pay, upstream: app, idempotency: { store: redis } }
upstreams:
  app:
    endpoints: [http://127.0.0.1:9001]
    rate_limiter:
      max_requests_per_second: 100
      scope: global
      replicas: \${REPLICAS}
stores:
  redis:
    url: \${REDIS_URL}
    password: \${REDIS_PASSWORD}
`;
    const config = await parseConfigText(yaml, 'test.yaml', {
      env: { REDIS_URL: 'redis://:inurl@redis.internal:6380/2', REDIS_PASSWORD: 's3cret', REPLICAS: '4' },
    });
    const r = config.stores.redis;
    expect(r).toMatchObject({
      host: 'redis.internal',
      port: 6380,
      db: 2,
      password: 's3cret',
      tls: undefined,
      address: 'redis://redis.internal:6380/2',
      keyPrefix: 'breakwater:',
      commandTimeout: 20,
      connectTimeout: 1000,
      breaker: { failureThreshold: 3, resetTimeout: 1000 },
    });
    expect(config.upstreams.app?.rateLimiter).toMatchObject({
      scope: 'global',
      onStoreError: 'local',
      replicas: 4,
    });
    expect(config.listeners[0]?.routes[0]?.idempotency).toMatchObject({
      store: 'redis',
      onStoreError: 'reject',
    });
  });

  it('turns TLS on for rediss://', async () => {
    const config = await parseConfigText(
      base('', 'stores:\n  redis: { url: "rediss://r.example:6380" }'),
      't.yaml',
    );
    expect(config.stores.redis?.tls?.insecureSkipVerify).toBe(false);
    expect(config.stores.redis?.address).toBe('rediss://r.example:6380/0');
  });

  it('leaves stores empty and limits local by default', async () => {
    const config = await parseConfigText(base(', rate_limiter: { max_requests_per_second: 100 }'), 't.yaml');
    expect(config.stores.redis).toBeUndefined();
    expect(config.upstreams.app?.rateLimiter?.scope).toBe('local');
  });

  it('refuses a URL that is not redis:// or rediss://', async () => {
    const problems = await problemsOf(base('', 'stores:\n  redis: { url: "http://127.0.0.1:6379" }'));
    expect(problems.join('\n')).toContain('stores.redis.url: expected a Redis URL');
  });

  it('refuses scope: global and store: redis without stores.redis, naming the fix', async () => {
    const problems = await problemsOf(
      base(
        ', rate_limiter: { max_requests_per_second: 100, scope: global }',
        '',
        ', idempotency: { store: redis }',
      ),
    );
    expect(problems).toContain(
      'upstreams.app.rate_limiter.scope: scope: global needs stores.redis (the limit is shared through Redis); add a stores.redis block or use scope: local',
    );
    expect(problems).toContain(
      'listeners[0].routes[0].idempotency.store: store: redis needs stores.redis; add a stores.redis block or use store: memory',
    );
  });

  it('refuses mode: shape with scope: global, and a zero command_timeout', async () => {
    const problems = await problemsOf(
      base(
        ', rate_limiter: { max_requests_per_second: 100, scope: global, mode: shape }',
        'stores:\n  redis: { url: "redis://127.0.0.1", command_timeout: 0 }',
      ),
    );
    expect(problems.join('\n')).toContain(
      'upstreams.app.rate_limiter.mode: mode: shape works with scope: local only',
    );
    expect(problems).toContain('stores.redis.command_timeout: command_timeout must be more than 0');
  });
});

describe('fleet keys where they would be ignored are refused', () => {
  it('on_store_error and replicas on a local limit', async () => {
    const problems = await problemsOf(
      base(', rate_limiter: { max_requests_per_second: 100, on_store_error: deny, replicas: 3 }'),
    );
    expect(problems).toEqual([
      'upstreams.app.rate_limiter.on_store_error: on_store_error is read only with scope: global (a local limit never calls Redis); set scope: global, or remove on_store_error',
      "upstreams.app.rate_limiter.replicas: replicas is read only with scope: global (it sizes each replica's share of a global limit); set scope: global, or remove replicas",
    ]);
  });

  it('replicas in resilience when no upstream is global; accepted when resilience makes them global', async () => {
    const top = (scope: string) =>
      `resilience:\n  rate_limiter: { max_requests_per_second: 100, replicas: 3 ${scope} }\nstores:\n  redis: { url: "redis://127.0.0.1" }`;
    expect(await problemsOf(base('', top('')))).toEqual([
      "resilience.rate_limiter.replicas: replicas is read only with scope: global (it sizes each replica's share of a global limit); set scope: global, or remove replicas",
    ]);
    const config = await parseConfigText(base('', top(', scope: global')), 't.yaml');
    expect(config.upstreams.app?.rateLimiter).toMatchObject({ scope: 'global', replicas: 3 });
  });

  it("a route's idempotency.on_store_error without store: redis", async () => {
    const problems = await problemsOf(base('', '', ', idempotency: { on_store_error: forward }'));
    expect(problems).toEqual([
      'listeners[0].routes[0].idempotency.on_store_error: on_store_error is read only with store: redis (the memory store is never unreachable); set store: redis, or remove on_store_error',
    ]);
  });
});

describe('fleet keys in config error hints', () => {
  it.each([
    [
      'redis at the top level',
      base('', 'redis: { url: "redis://127.0.0.1" }'),
      'redis: "redis" does not belong at the top level: it goes in stores: stores.redis',
    ],
    [
      'replicas on an upstream',
      base(', replicas: 3'),
      'upstreams.app.replicas: "replicas" does not belong on an upstream: it goes in rate_limiter: upstreams.app.rate_limiter.replicas',
    ],
    [
      'scope on a route',
      base('', '', ', scope: global'),
      'listeners[0].routes[0].scope: "scope" does not belong on a route: it goes in an upstream\'s rate_limiter: upstreams.<name>.rate_limiter.scope, or in resilience.rate_limiter (for every upstream): resilience.rate_limiter.scope; it is per upstream, shared by every route to it',
    ],
    [
      "Traefik's denyOnError",
      base(', rate_limiter: { max_requests_per_second: 1, denyOnError: true }'),
      'upstreams.app.rate_limiter.denyOnError: unknown key "denyOnError" in rate_limiter (did you mean "on_store_error"?)',
    ],
    [
      'global: true',
      base(', rate_limiter: { max_requests_per_second: 1, global: true }'),
      'upstreams.app.rate_limiter.global: unknown key "global" in rate_limiter (did you mean "scope"? a limit shared by every replica is scope: global)',
    ],
    [
      'timeout in stores.redis',
      base('', 'stores:\n  redis: { url: "redis://127.0.0.1", timeout: 20ms }'),
      'stores.redis.timeout: unknown key "timeout" in stores.redis (did you mean "command_timeout"?)',
    ],
    [
      'prefix in stores.redis',
      base('', 'stores:\n  redis: { url: "redis://127.0.0.1", prefix: "bw:" }'),
      'stores.redis.prefix: unknown key "prefix" in stores.redis (did you mean "key_prefix"?)',
    ],
    [
      'circuit_breaker in stores.redis',
      base('', 'stores:\n  redis: { url: "redis://127.0.0.1", circuit_breaker: {} }'),
      'stores.redis.circuit_breaker: unknown key "circuit_breaker" in stores.redis (did you mean "breaker"?)',
    ],
  ])('%s', async (_name, yaml, message) => {
    expect(await problemsOf(yaml)).toEqual([message]);
  });
});

describe('config/examples/fleet.yaml', () => {
  it('is valid, with Redis and the replica count from the environment', async () => {
    const file = join(import.meta.dirname, '../../config/examples/fleet.yaml');
    const config = await parseConfigText(readFileSync(file, 'utf8'), file, {
      env: { REDIS_URL: 'redis://redis:6379', BREAKWATER_REPLICAS: '20' },
    });
    expect(config.stores.redis?.address).toBe('redis://redis:6379/0');
    expect(config.stores.redis?.password).toBeUndefined();
    expect(config.upstreams.payments?.rateLimiter).toMatchObject({ scope: 'global', replicas: 20 });
    expect(config.listeners[0]?.routes[0]?.idempotency?.store).toBe('redis');
  });
});

describe('saga_store', () => {
  const sagas = `
sagas:
  checkout:
    trigger: { listener: main, path: /checkout }
    steps:
      - { name: order, call: { upstream: app, path: /orders } }
`;
  const problems = async (yaml: string) => {
    try {
      await parseConfigText(yaml, '/etc/bw.yaml', { env: {} });
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
    throw new Error('expected the config to be rejected');
  };

  it('defaults to the embedded log; backend: redis with stores.redis takes a lease (default 30s)', async () => {
    const embedded = await parseConfigText(base('', sagas), 'test.yaml', { env: {} });
    expect(embedded.sagaStore).toEqual({ backend: 'embedded', lease: 30_000 });
    const redis = await parseConfigText(
      base('', `${sagas}saga_store: { backend: redis }\nstores:\n  redis: { url: "redis://127.0.0.1:6379" }`),
      'test.yaml',
      { env: {} },
    );
    expect(redis.sagaStore).toEqual({ backend: 'redis', lease: 30_000 });
    const short = await parseConfigText(
      base(
        '',
        `${sagas}saga_store: { backend: redis, lease: 2s }\nstores:\n  redis: { url: "redis://127.0.0.1:6379" }`,
      ),
      'test.yaml',
      { env: {} },
    );
    expect(short.sagaStore.lease).toBe(2_000);
  });

  it('refuses backend: redis without stores.redis, at the key with its file, line and column', async () => {
    const yaml = `${base('', sagas)}saga_store:\n  backend: redis\n`;
    const [p, ...rest] = await problems(yaml);
    expect(rest).toEqual([]);
    const line = yaml.split('\n').indexOf('  backend: redis') + 1;
    expect(p).toMatchObject({ file: '/etc/bw.yaml', key: 'saga_store.backend', line, column: 12 });
    expect(p?.message).toBe(
      'backend: redis needs stores.redis (the saga log is shared through Redis); add a stores.redis block or use backend: embedded',
    );
  });

  it('refuses a lease the embedded log would ignore, and one under 1s', async () => {
    const ignored = await problems(`${base('', sagas)}saga_store: { lease: 10s }\n`);
    expect(ignored.map((p) => `${p.key}: ${p.message}`)).toEqual([
      'saga_store.lease: lease is read only with backend: redis (one process owns every saga of an embedded log); set backend: redis, or remove lease',
    ]);
    const tiny = await problems(
      `${base('', sagas)}saga_store: { backend: redis, lease: 500ms }\nstores:\n  redis: { url: "redis://127.0.0.1:6379" }\n`,
    );
    expect(tiny.map((p) => `${p.key}: ${p.message}`)).toEqual([
      'saga_store.lease: lease must be at least 1s (it is renewed every lease/3)',
    ]);
    const backend = await problems(`${base('', sagas)}saga_store: { backend: etcd }\n`);
    expect(backend.map((p) => p.key)).toEqual(['saga_store.backend']);
  });
});
