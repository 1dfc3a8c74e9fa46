/**
 * The router's candidate lists (used beyond a few routes) against the plain first-match scan: for
 * any routes and any request, the same route wins.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { RouteModel } from '../../src/config/resolve.js';
import { matches, Router } from '../../src/listener/router.js';

type Match = RouteModel['match'];

function route(name: string, match: Partial<Match>): RouteModel {
  const full: Match = {
    pathPrefix: undefined,
    host: undefined,
    hostSuffix: undefined,
    methods: undefined,
    headers: [],
    ...match,
  };
  return { name, upstream: 'u', match: full } as unknown as RouteModel;
}

const segment = fc.constantFrom('api', 'ap', 'apix', 'v1', 'x', '');
const prefix = fc.oneof(
  fc.constant(undefined),
  fc.constant('/'),
  fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => `/${s.join('/')}`),
  fc.array(segment, { minLength: 1, maxLength: 2 }).map((s) => `/${s.join('/')}/`),
);
const host = fc.constantFrom('a.example', 'b.example', 'x.a.example', '127.0.0.1');
const routeArb = fc.record({
  pathPrefix: prefix,
  host: fc.option(host, { nil: undefined }),
  hostSuffix: fc.option(fc.constantFrom('.example', '.a.example'), { nil: undefined }),
  methods: fc.option(fc.constantFrom(new Set(['GET']), new Set(['POST', 'PUT'])), { nil: undefined }),
  headers: fc.constantFrom([], [['x-v', '1'] as const]),
});
const requestArb = fc.record({
  method: fc.constantFrom('GET', 'POST', 'DELETE'),
  path: fc.array(segment, { maxLength: 4 }).map((s) => `/${s.join('/')}`),
  host: fc.oneof(
    host,
    host.map((h) => `${h.toUpperCase()}:8080`),
    fc.constant(undefined),
  ),
  xv: fc.constantFrom(undefined, '1', '2'),
});

describe('Router', () => {
  it('picks the same route as trying every route in order, with 1 to 40 routes', () => {
    fc.assert(
      fc.property(
        fc.array(routeArb, { minLength: 1, maxLength: 40 }),
        fc.array(requestArb, { maxLength: 20 }),
        (ms, reqs) => {
          const routes = ms.map((m, i) => route(`r${i}`, m));
          const router = new Router(routes);
          for (const r of reqs) {
            const headers = { host: r.host, 'x-v': r.xv };
            const expected = routes.find((x) => matches(x, r.method, r.path, headers));
            // Twice: the second answer comes from the candidate list kept by the first.
            expect(router.match(r.method, r.path, headers)?.name).toBe(expected?.name);
            expect(router.match(r.method, r.path, headers)?.name).toBe(expected?.name);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('finds the last of 1000 host routes and of 1000 prefix routes', () => {
    const byHost = [
      ...Array.from({ length: 999 }, (_, i) => route(`h${i}`, { host: `svc${i}.internal` })),
      route('last', { host: '127.0.0.1' }),
    ];
    const byPrefix = [
      ...Array.from({ length: 999 }, (_, i) => route(`p${i}`, { pathPrefix: `/svc${i}/api` })),
      route('last', { pathPrefix: '/' }),
    ];
    expect(new Router(byHost).match('GET', '/x', { host: '127.0.0.1:8080' })?.name).toBe('last');
    expect(new Router(byHost).match('GET', '/x', { host: 'svc7.internal' })?.name).toBe('h7');
    expect(new Router(byPrefix).match('GET', '/svc12/api/y', { host: 'h' })?.name).toBe('p12');
    expect(new Router(byPrefix).match('GET', '/svc12/apix', { host: 'h' })?.name).toBe('last');
  });
});
