/**
 * X-Forwarded-For and trusted_proxies, seen from the upstream: a trusted peer's list is kept and
 * extended, anyone else's is replaced; rate limiting by client_ip uses the address the trusted
 * proxies vouch for.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { startUpstream } from '../kit/upstream.js';

describe('X-Forwarded-For and trusted_proxies', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function setup(listenerExtra: string) {
    const up = await startUpstream();
    cleanup.push(() => up.close());
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
${listenerExtra}
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app:
    endpoints: ["${up.url}"]
    # one token per client, the next only in 100 s: none comes back during a test
    rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1, key: client_ip }
`);
    cleanup.push(() => bw.stop());
    const get = async (xff: string) => {
      const res = await request(`${bw.url()}/x`, { headers: { 'x-forwarded-for': xff } });
      await res.body.dump();
      return res.statusCode;
    };
    return { up, get };
  }

  it('by default trusts the app on loopback: keeps its list and keys the limiter by the client it names', async () => {
    const { up, get } = await setup('');
    expect(await get('203.0.113.9')).toBe(200);
    expect(up.received[0]?.headers['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    // Another client behind the same proxy has its own bucket; the same client again does not.
    expect(await get('203.0.113.10')).toBe(200);
    expect(await get('203.0.113.9')).toBe(429);
  });

  it('replaces the list of a peer that is not trusted, and keys the limiter by the peer', async () => {
    const { up, get } = await setup('    trusted_proxies: ["10.0.0.0/8"]');
    expect(await get('203.0.113.9')).toBe(200);
    expect(up.received[0]?.headers['x-forwarded-for']).toBe('127.0.0.1');
    // A forged header does not buy a new bucket.
    expect(await get('198.51.100.1')).toBe(429);
  });

  it('trusts nobody with an empty list', async () => {
    const { up, get } = await setup('    trusted_proxies: []');
    expect(await get('203.0.113.9, 10.0.0.1')).toBe(200);
    expect(up.received[0]?.headers['x-forwarded-for']).toBe('127.0.0.1');
  });
});
