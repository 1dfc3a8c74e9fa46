/**
 * The cost of routing alone, in process: Router.match (dist/listener/router.js) for a request that
 * matches the last of 1, 100 or 1000 routes (the others on other path prefixes or other hosts, as
 * the routes-* scenarios of run.mjs), against the plain first-match scan (`matches` over every
 * route in order, what the router did before its candidate lists). Steadier than the end-to-end
 * route-count rows on a shared machine: no sockets, only the routing.
 *
 *   node test/bench/routing.mjs            (dist/ must be built: npm run build)
 */
import { matches, Router } from '../../dist/listener/router.js';

const ITERATIONS = 200_000;

function route(name, match) {
  return {
    name,
    upstream: 'backend',
    match: {
      pathPrefix: undefined,
      host: undefined,
      hostSuffix: undefined,
      methods: undefined,
      headers: [],
      ...match,
    },
  };
}

function routes(count, by) {
  const out = [];
  for (let i = 0; i < count - 1; i++)
    out.push(
      route(`r${i}`, by === 'prefix' ? { pathPrefix: `/svc${i}/api` } : { host: `svc${i}.bench.internal` }),
    );
  out.push(route('last', by === 'prefix' ? { pathPrefix: '/' } : { host: '127.0.0.1' }));
  return out;
}

/** ns per call of fn over ITERATIONS (after as many to warm up); the best of 5 runs. */
function time(fn) {
  for (let i = 0; i < ITERATIONS; i++) fn();
  let best = Number.POSITIVE_INFINITY;
  for (let run = 0; run < 5; run++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ITERATIONS; i++) fn();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / ITERATIONS);
  }
  return best;
}

const headers = { host: '127.0.0.1:18001', 'user-agent': 'bench' };
console.log('| routes | match by | Router.match ns | first-match scan ns |');
console.log('| ---: | --- | ---: | ---: |');
for (const [count, by] of [
  [1, 'prefix'],
  [100, 'prefix'],
  [1000, 'prefix'],
  [100, 'host'],
  [1000, 'host'],
]) {
  const list = routes(count, by);
  const router = new Router(list);
  if (router.match('GET', '/', headers)?.name !== 'last') throw new Error('the last route did not match');
  const indexed = time(() => router.match('GET', '/', headers));
  const scan = time(() => {
    for (const r of list) if (matches(r, 'GET', '/', headers)) return r;
    return undefined;
  });
  console.log(`| ${count} | ${by} | ${indexed.toFixed(0)} | ${scan.toFixed(0)} |`);
}
