/**
 * Fallbacks written in place: an upstream's `fallback: { ... }` and a fallback's `then: { ... }`
 * serve like named ones.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('inline fallbacks', () => {
  it('an inline fallback answers for a dead upstream; a cache miss goes on to its inline then', async () => {
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    routes:
      - { match: { path_prefix: /static }, upstream: down }
      - { upstream: chained }
admin: { port: 0 }
upstreams:
  down:
    endpoints: ["http://127.0.0.1:1"]
    retry: { enabled: false }
    fallback: { type: static_response, status: 503, headers: { content-type: text/plain }, body: busy }
  chained:
    endpoints: ["http://127.0.0.1:1"]
    retry: { enabled: false }
    fallback: from_cache
fallbacks:
  from_cache:
    type: cache
    then: { type: static_response, body: '[]' }
`);
    cleanup.push(() => bw.stop());
    const a = await request(`${bw.url()}/static/x`);
    expect(a.statusCode).toBe(503);
    expect(a.headers['x-breakwater-fallback']).toBe('down/fallback');
    expect(await a.body.text()).toBe('busy');
    const b = await request(`${bw.url()}/other`);
    expect(b.statusCode).toBe(200);
    expect(b.headers['x-breakwater-fallback']).toBe('from_cache/then');
    expect(await b.body.text()).toBe('[]');
    const metrics = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(
      /breakwater_fallbacks_total\{upstream="down",fallback="down\/fallback",reason="error"\} 1/,
    );
    expect(metrics).toMatch(
      /breakwater_fallbacks_total\{upstream="chained",fallback="from_cache\/then",reason="error"\} 1/,
    );
  });
});
