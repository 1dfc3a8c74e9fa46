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
