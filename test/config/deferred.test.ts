/**
 * The route key `deferred` and `deferred_store`: defaults, and the cross-check with
 * request_buffering.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';

const base = (routeExtra: string, top = '') => `
listeners:
  - name: main
    port: 15001
    routes:
      - name: orders
        upstream: app
${routeExtra}
upstreams:
  app: { endpoints: [http://127.0.0.1:9001] }
${top}
`;

async function problemsOf(yaml: string) {
  try {
    await parseConfigText(yaml, 'test.yaml', { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.key}: ${p.message}`);
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

describe('deferred config', () => {
  it('fills the documented defaults', async () => {
    const config = await parseConfigText(base('        deferred: {}'), 'test.yaml', { env: {} });
    const d = config.listeners[0]?.routes[0]?.deferred;
    expect(d).toBeDefined();
    expect([...(d?.on ?? [])]).toEqual(['connect_failure', 'breaker_open', 'timeout_before_send']);
    expect([...(d?.onStatus ?? [])]).toEqual([503]);
    expect([...(d?.methods ?? [])]).toEqual(['POST', 'PUT', 'PATCH', 'DELETE']);
    expect(d?.requireIdempotencyKey).toBe(true);
    expect(d?.maxAge).toBe(24 * 3_600_000);
    expect(d?.maxAttempts).toBe(0);
    expect(d?.schedule).toEqual([5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000]);
    expect(d?.orderingKey).toBeUndefined();
    expect(config.deferredStore).toEqual({
      maxItems: 100_000,
      maxBytes: 256 * 1024 * 1024,
      retention: 7 * 24 * 3_600_000,
      concurrency: 4,
      backend: 'embedded',
      lease: 30_000,
    });
  });

  it('reads on (names and 5xx statuses), schedule, ordering_key and the store caps', async () => {
    const config = await parseConfigText(
      base(
        '        deferred: { on: [connect_failure, 502, "504"], schedule: [1s, 1m], ordering_key: X-Customer, max_attempts: 5 }',
        'deferred_store: { max_items: 10, max_bytes: 1MiB, concurrency: 2 }',
      ),
      'test.yaml',
      { env: {} },
    );
    const d = config.listeners[0]?.routes[0]?.deferred;
    expect([...(d?.on ?? [])]).toEqual(['connect_failure']);
    expect([...(d?.onStatus ?? [])]).toEqual([502, 504]);
    expect(d?.schedule).toEqual([1_000, 60_000]);
    expect(d?.orderingKey).toBe('x-customer');
    expect(d?.maxAttempts).toBe(5);
    expect(config.deferredStore.maxItems).toBe(10);
    expect(config.deferredStore.maxBytes).toBe(1024 * 1024);
    expect(config.deferredStore.concurrency).toBe(2);
  });

  it('refuses deferred with request_buffering: false, naming both keys', async () => {
    const problems = await problemsOf(base('        request_buffering: false\n        deferred: {}'));
    expect(problems.join('\n')).toContain(
      'listeners[0].routes[0].deferred: deferred needs the request body read whole to store it: remove request_buffering: false',
    );
  });

  it('refuses an on value that is neither a trigger nor a 5xx status', async () => {
    const problems = await problemsOf(base('        deferred: { on: [404] }'));
    expect(problems.join('\n')).toContain('listeners[0].routes[0].deferred.on[0]');
  });

  it('backend: redis with a lease; without stores.redis a problem at the key, with file:line:column', async () => {
    const config = await parseConfigText(
      base(
        '        deferred: {}',
        'stores:\n  redis: { url: "redis://127.0.0.1:6379" }\ndeferred_store:\n  backend: redis\n  lease: 5s',
      ),
      'test.yaml',
      { env: {} },
    );
    expect(config.deferredStore.backend).toBe('redis');
    expect(config.deferredStore.lease).toBe(5_000);
    const yaml = base('        deferred: {}', 'deferred_store:\n  backend: redis');
    let problem: { file: string; line: number; column: number; key: string; message: string } | undefined;
    try {
      await parseConfigText(yaml, 'test.yaml', { env: {} });
    } catch (err) {
      if (err instanceof ConfigError) problem = err.problems.find((p) => p.key === 'deferred_store.backend');
    }
    expect(problem?.message).toContain('backend: redis needs stores.redis');
    const lines = yaml.split('\n');
    expect(problem?.file).toBe('test.yaml');
    expect(lines[(problem?.line ?? 0) - 1]).toContain('backend: redis');
    expect(problem?.column).toBeGreaterThan(0);
  });

  it('refuses a lease with the embedded backend (nothing reads it) and a lease under 1s', async () => {
    expect(
      (await problemsOf(base('        deferred: {}', 'deferred_store: { lease: 10s }'))).join('\n'),
    ).toContain('deferred_store.lease: lease is read only with backend: redis');
    expect(
      (
        await problemsOf(
          base(
            '        deferred: {}',
            'stores: { redis: { url: "redis://127.0.0.1:6379" } }\ndeferred_store: { backend: redis, lease: 200ms }',
          ),
        )
      ).join('\n'),
    ).toContain('deferred_store.lease: lease must be 1s or more');
  });
});
