/**
 * Keys that the schema accepts but that would change nothing where they are written: refused at
 * load, with what would make them count, so that an operator never tunes a setting that is not
 * read. (Keys that belong to another level entirely, such as a route's `retry.budget`, are not
 * in that level's schema and are explained by explain.ts.)
 *
 * Policy blocks are layered (`resilience` <- upstream), so a key is judged with the other keys of
 * its upstream's merged block: `minimum_calls` on an upstream is read when `resilience` gives the
 * rate threshold. A key in `resilience` is refused only when no upstream reads it.
 */
import { DEFAULTS } from './defaults.js';
import { flattenFallbacks } from './inline-fallbacks.js';

import type { Config } from './schema.js';

export interface IgnoredKey {
  readonly path: (string | number)[];
  readonly message: string;
}

type Block = 'circuit_breaker' | 'rate_limiter' | 'bulkhead';
/** A key of a merged policy block: the upstream's value, else resilience's. */
type Merged = (key: string) => unknown;
type Check = (m: Merged) => string | undefined;

const RATE_ONLY =
  (key: string): Check =>
  (m) =>
    m('failure_rate_threshold') !== undefined || m('slow_call_rate_threshold') !== undefined
      ? undefined
      : `${key} is read only with failure_rate_threshold or slow_call_rate_threshold (the consecutive-failure rule counts no window); set one, or remove ${key}`;
const GLOBAL_ONLY =
  (key: string, what: string): Check =>
  (m) =>
    m('scope') === 'global'
      ? undefined
      : `${key} is read only with scope: global (${what}); set scope: global, or remove ${key}`;
const SHAPE_ONLY =
  (key: string): Check =>
  (m) =>
    m('mode') === 'shape' ? undefined : `${key} is read only in mode: shape (this limiter rejects at once)`;

/** Per block: the keys that are read only with others, and why not. */
const CHECKS: Record<Block, Record<string, Check>> = {
  circuit_breaker: {
    window: RATE_ONLY('window'),
    minimum_calls: RATE_ONLY('minimum_calls'),
    slow_call_duration: (m) =>
      m('slow_call_rate_threshold') !== undefined
        ? undefined
        : 'slow_call_duration is read only with slow_call_rate_threshold; set it, or remove slow_call_duration',
    slow_call_rate_threshold: (m) =>
      m('slow_call_duration') !== undefined
        ? undefined
        : 'slow_call_rate_threshold needs slow_call_duration (what counts as slow)',
  },
  rate_limiter: {
    max_delay: SHAPE_ONLY('max_delay'),
    max_queue: SHAPE_ONLY('max_queue'),
    max_keys: (m) =>
      m('key') !== undefined ? undefined : 'max_keys is read only with key (client_ip or header:<name>)',
    on_store_error: GLOBAL_ONLY('on_store_error', 'a local limit never calls Redis'),
    replicas: GLOBAL_ONLY('replicas', "it sizes each replica's share of a global limit"),
  },
  bulkhead: {
    queue_timeout: (m) =>
      ((m('max_queue') as number | undefined) ?? DEFAULTS.bulkhead.maxQueue) > 0
        ? undefined
        : 'queue_timeout is read only with max_queue above 0 (no request waits for a slot)',
  },
};

export function ignoredKeys(cfg: Config): IgnoredKey[] {
  const out: IgnoredKey[] = [];
  const refuse = (path: (string | number)[], message: string) => out.push({ path, message });
  const r = cfg.resilience;
  const upstreams = Object.entries(cfg.upstreams);

  for (const block of Object.keys(CHECKS) as Block[]) {
    const base = r[block] as Record<string, unknown> | undefined;
    const merged =
      (own: Record<string, unknown> | undefined): Merged =>
      (k) =>
        own?.[k] ?? base?.[k];
    const on = (m: Merged) => m('enabled') !== false;
    for (const [key, check] of Object.entries(CHECKS[block])) {
      for (const [un, u] of upstreams) {
        const own = u[block] as Record<string, unknown> | undefined;
        if (own?.[key] === undefined || !on(merged(own))) continue;
        const why = check(merged(own));
        if (why) refuse(['upstreams', un, block, key], why);
      }
      // In resilience: refused when every upstream that would read it (its block on, the key not
      // its own) has no use for it.
      if (base?.[key] === undefined) continue;
      const readers = upstreams
        .map(([, u]) => u[block] as Record<string, unknown> | undefined)
        .filter((own) => own?.[key] === undefined && on(merged(own)));
      const reasons = readers.map((own) => check(merged(own)));
      if (reasons.length && reasons.every((x) => x !== undefined))
        refuse(['resilience', block, key], reasons[0] as string);
    }
  }

  // A rate_limiter without a rate is no limiter at all.
  const hasRate = (own: Config['upstreams'][string]['rate_limiter']) =>
    (own?.max_requests_per_second ?? r.rate_limiter?.max_requests_per_second) !== undefined;
  const limiterOn = (own: Config['upstreams'][string]['rate_limiter']) =>
    (own?.enabled ?? r.rate_limiter?.enabled) !== false;
  for (const [un, u] of upstreams) {
    if (u.rate_limiter && limiterOn(u.rate_limiter) && !hasRate(u.rate_limiter))
      refuse(
        ['upstreams', un, 'rate_limiter'],
        'a rate_limiter needs max_requests_per_second (here or in resilience.rate_limiter); without it there is no limiter',
      );
  }
  if (
    r.rate_limiter &&
    r.rate_limiter.max_requests_per_second === undefined &&
    r.rate_limiter.enabled !== false
  ) {
    const others = upstreams.filter(([, u]) => !u.rate_limiter);
    if (others.length && others.every(([, u]) => !hasRate(u.rate_limiter)))
      refuse(
        ['resilience', 'rate_limiter'],
        'a rate_limiter needs max_requests_per_second; without it, upstreams that do not set one have no limiter',
      );
  }

  if (cfg.deferred_store?.lease !== undefined && (cfg.deferred_store.backend ?? 'embedded') !== 'redis')
    refuse(
      ['deferred_store', 'lease'],
      'lease is read only with backend: redis (the embedded store has one delivering process, nothing to hand over)',
    );

  for (const [un, u] of upstreams) {
    if (u.max_concurrent_streams !== undefined && (u.protocol ?? DEFAULTS.upstream.protocol) === 'http1')
      refuse(
        ['upstreams', un, 'max_concurrent_streams'],
        'max_concurrent_streams is read only with protocol: h2 or h2c',
      );
    const priorities = new Set(
      u.endpoints.map((e) =>
        typeof e === 'string'
          ? DEFAULTS.upstream.endpointPriority
          : (e.priority ?? DEFAULTS.upstream.endpointPriority),
      ),
    );
    if (u.failover_threshold !== undefined && priorities.size < 2)
      refuse(
        ['upstreams', un, 'failover_threshold'],
        'failover_threshold is read only when endpoints have more than one priority',
      );
  }

  // Fallbacks: one per upstream, and `on` only where it is read.
  const flat = flattenFallbacks(cfg);
  for (const un of Object.keys(r.fallback?.services ?? {})) {
    if (flat.upstreamFallback[un] !== undefined)
      refuse(
        ['resilience', 'fallback', 'services', un],
        `upstreams.${un}.fallback is set too, and wins; keep one of them`,
      );
  }
  const heads = new Set([
    ...Object.values(flat.upstreamFallback),
    ...Object.values(r.fallback?.services ?? {}).map((s) => s.fallback_strategy),
  ]);
  const reachedByThen = new Set(Object.values(flat.fallbacks).flatMap((f) => (f.then ? [f.then] : [])));
  for (const [fn, f] of Object.entries(flat.fallbacks)) {
    if (f.on !== undefined && !heads.has(fn) && reachedByThen.has(fn))
      refuse(
        [...(flat.paths[fn] ?? ['fallbacks', fn]), 'on'],
        "on is read only on the first fallback of an upstream; this one is reached through then, where the first fallback's on decides",
      );
  }

  const degraded = new Map<string, number>();
  cfg.degradation?.services.forEach((s, i) => {
    const first = degraded.get(s.name);
    if (first === undefined) degraded.set(s.name, i);
    else
      refuse(
        ['degradation', 'services', i, 'name'],
        `upstream "${s.name}" is already in degradation.services[${first}]; one entry per upstream (put both conditions in it)`,
      );
  });

  cfg.listeners.forEach((l, li) => {
    l.routes.forEach((rt, ri) => {
      // A TRACE request never reaches a route whose match leaves TRACE out.
      const methods = rt.match?.methods;
      if (rt.allow_trace === true && methods !== undefined && !methods.includes('TRACE'))
        refuse(
          ['listeners', li, 'routes', ri, 'allow_trace'],
          `allow_trace is read only when the route takes TRACE requests; its match.methods (${methods.join(', ')}) leaves TRACE out: add TRACE to them, or remove allow_trace`,
        );
      // Only a shared store can be unreachable.
      if (rt.idempotency?.on_store_error !== undefined && rt.idempotency.store !== 'redis')
        refuse(
          ['listeners', li, 'routes', ri, 'idempotency', 'on_store_error'],
          'on_store_error is read only with store: redis (the memory store is never unreachable); set store: redis, or remove on_store_error',
        );
      if (rt.websocket !== false) return;
      for (const key of ['websocket_idle_timeout', 'websocket_max_duration'] as const)
        if (rt[key] !== undefined)
          refuse(
            ['listeners', li, 'routes', ri, key],
            `${key} is read only when the route passes WebSockets (websocket: false here)`,
          );
    });
  });

  if (!cfg.logging.access_log && cfg.logging.access_log_headers.length)
    refuse(['logging', 'access_log_headers'], 'access_log_headers is read only with access_log: true');
  return out;
}
