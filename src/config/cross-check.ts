/**
 * The checks that need the whole config file (names that refer to other sections, clashing ports,
 * timeouts, keys that would be ignored where they are written), run on the schema's output. Kept
 * apart from schema.ts so that the modules these checks use (ignored-keys.ts, inline-fallbacks.ts),
 * which read the schema's types, are not imported by the schema itself.
 */
import type { z } from 'zod';
import { DEFAULTS } from './defaults.js';
import { ignoredKeys } from './ignored-keys.js';
import { flattenFallbacks } from './inline-fallbacks.js';
import { configSchema, type RateLimiterInput } from './schema.js';

/** The schema with the whole-file checks: what a config file is validated against. */
export const checkedConfigSchema = configSchema.superRefine((cfg, ctx) => crossCheck(cfg, ctx));

type Ctx = z.core.$RefinementCtx<z.output<typeof configSchema>>;
type ParsedConfig = z.output<typeof configSchema>;

/** Checks that need the whole file: names that refer to other sections, clashing ports, timeouts. */
function crossCheck(cfg: ParsedConfig, ctx: Ctx): void {
  const upstreams = new Set(Object.keys(cfg.upstreams));
  const fallbacks = new Set(Object.keys(cfg.fallbacks));
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: 'custom', path, message });
  const known = (set: Set<string>) => (set.size ? `; defined: ${[...set].join(', ')}` : '; none is defined');

  const listenerNames = new Set<string>();
  const bound = new Map<string, string>();
  bound.set(`${cfg.admin.host}:${cfg.admin.port}`, 'admin');
  cfg.listeners.forEach((l, li) => {
    if (listenerNames.has(l.name))
      issue(['listeners', li, 'name'], `listener name "${l.name}" is used twice`);
    listenerNames.add(l.name);
    const addr = `${l.host ?? DEFAULTS.listener.host}:${l.port}`;
    if (l.port !== 0 && bound.has(addr))
      issue(['listeners', li, 'port'], `${addr} is already used by ${bound.get(addr)}`);
    bound.set(addr, `listener ${l.name}`);
    const routeNames = new Set<string>();
    l.routes.forEach((r, ri) => {
      if (!upstreams.has(r.upstream)) {
        issue(
          ['listeners', li, 'routes', ri, 'upstream'],
          `upstream "${r.upstream}" is not defined${known(upstreams)}`,
        );
      }
      if (r.name !== undefined) {
        if (routeNames.has(r.name))
          issue(['listeners', li, 'routes', ri, 'name'], `route name "${r.name}" is used twice`);
        routeNames.add(r.name);
      }
      if (r.strip_prefix === true && !r.match?.path_prefix) {
        issue(['listeners', li, 'routes', ri, 'strip_prefix'], 'strip_prefix: true needs match.path_prefix');
      }
    });
  });

  for (const [un, u] of Object.entries(cfg.upstreams)) {
    /** Every endpoint of this upstream must use `scheme`; `why` says which setting asks it. */
    const schemeOfEndpoints = (scheme: 'http:' | 'https:', why: string) =>
      u.endpoints.forEach((e, ei) => {
        const url = typeof e === 'string' ? e : e.url;
        if (new URL(url).protocol !== scheme)
          issue(
            typeof e === 'string'
              ? ['upstreams', un, 'endpoints', ei]
              : ['upstreams', un, 'endpoints', ei, 'url'],
            `${url} is not ${scheme}//: ${why}`,
          );
      });
    if (typeof u.fallback === 'string' && !fallbacks.has(u.fallback)) {
      issue(['upstreams', un, 'fallback'], `fallback "${u.fallback}" is not defined${known(fallbacks)}`);
    }
    if (u.tls) {
      if (u.tls.cert_file !== undefined && u.tls.key_file === undefined)
        issue(
          ['upstreams', un, 'tls', 'cert_file'],
          "cert_file needs key_file (the client certificate's private key)",
        );
      if (u.tls.key_file !== undefined && u.tls.cert_file === undefined)
        issue(['upstreams', un, 'tls', 'key_file'], 'key_file needs cert_file (the client certificate)');
      schemeOfEndpoints('https:', 'an upstream with a tls block sends nothing in clear text');
    }
    if (u.protocol === 'h2')
      schemeOfEndpoints('https:', 'protocol h2 is HTTP/2 over TLS (use h2c for clear text)');
    if (u.protocol === 'h2c')
      schemeOfEndpoints('http:', 'protocol h2c is HTTP/2 in clear text (use h2 for https)');
    const attempt = u.timeout ?? cfg.resilience.timeout;
    const total = u.request_timeout ?? cfg.resilience.request_timeout;
    if (attempt !== undefined && total !== undefined && attempt > total) {
      issue(
        ['upstreams', un, u.timeout !== undefined ? 'timeout' : 'request_timeout'],
        'timeout (per attempt) must not exceed request_timeout',
      );
    }
  }
  const rt = cfg.resilience;
  if (rt.timeout !== undefined && rt.request_timeout !== undefined && rt.timeout > rt.request_timeout) {
    issue(['resilience', 'timeout'], 'timeout (per attempt) must not exceed request_timeout');
  }
  for (const [svc, s] of Object.entries(cfg.resilience.fallback?.services ?? {})) {
    if (!upstreams.has(svc))
      issue(
        ['resilience', 'fallback', 'services', svc],
        `upstream "${svc}" is not defined${known(upstreams)}`,
      );
    if (!fallbacks.has(s.fallback_strategy)) {
      issue(
        ['resilience', 'fallback', 'services', svc, 'fallback_strategy'],
        `fallback "${s.fallback_strategy}" is not defined${known(fallbacks)}`,
      );
    }
  }
  // Named and inline fallbacks alike; an error names where the fallback is written.
  const flat = flattenFallbacks(cfg);
  for (const [fn, f] of Object.entries(flat.fallbacks)) {
    const at = flat.paths[fn] ?? ['fallbacks', fn];
    // A `then` written in place is always defined; a name must be one of `fallbacks`.
    if (f.then !== undefined && !flat.fallbacks[f.then])
      issue([...at, 'then'], `fallback "${f.then}" is not defined${known(fallbacks)}`);
    if (f.type === 'upstream' && !upstreams.has(f.upstream))
      issue([...at, 'upstream'], `upstream "${f.upstream}" is not defined${known(upstreams)}`);
    if (f.type === 'static_response' && f.body !== undefined && f.body_file !== undefined) {
      issue([...at, 'body_file'], 'give body or body_file, not both');
    }
    // A `then` chain must end (only names can loop: an inline `then` is new).
    if (!fallbacks.has(fn)) continue;
    const seen = new Set<string>([fn]);
    let next = f.then;
    while (next !== undefined && flat.fallbacks[next]) {
      if (seen.has(next)) {
        issue([...at, 'then'], `fallback chain loops: ${[...seen, next].join(' -> ')}`);
        break;
      }
      seen.add(next);
      next = flat.fallbacks[next]?.then;
    }
  }
  const redis = cfg.stores.redis;
  if (redis && redis.command_timeout <= 0)
    issue(['stores', 'redis', 'command_timeout'], 'command_timeout must be more than 0');
  if (cfg.deferred_store?.backend === 'redis' && !redis)
    issue(
      ['deferred_store', 'backend'],
      'backend: redis needs stores.redis (the queue is a Redis Stream the replicas share); add a stores.redis block or use backend: embedded',
    );
  if (cfg.deferred_store?.lease !== undefined && cfg.deferred_store.lease < 1_000)
    issue(
      ['deferred_store', 'lease'],
      'lease must be 1s or more (the owner renews its claims every third of it)',
    );
  const globalScope = (where: (string | number)[], rl: RateLimiterInput | undefined) => {
    const scope = rl?.scope ?? cfg.resilience.rate_limiter?.scope;
    if (scope !== 'global') return;
    if (!redis)
      issue(
        [...where, 'scope'],
        'scope: global needs stores.redis (the limit is shared through Redis); add a stores.redis block or use scope: local',
      );
    if ((rl?.mode ?? cfg.resilience.rate_limiter?.mode) === 'shape')
      issue(
        [...where, 'mode'],
        'mode: shape works with scope: local only (a global limit rejects with 429; queueing across replicas is not supported)',
      );
  };
  if (cfg.resilience.rate_limiter?.scope === 'global')
    globalScope(['resilience', 'rate_limiter'], cfg.resilience.rate_limiter);
  for (const [un, u] of Object.entries(cfg.upstreams))
    if (u.rate_limiter?.scope !== undefined || u.rate_limiter?.mode !== undefined)
      globalScope(['upstreams', un, 'rate_limiter'], u.rate_limiter);
  if (cfg.saga_store.backend === 'redis' && !redis)
    issue(
      ['saga_store', 'backend'],
      'backend: redis needs stores.redis (the saga log is shared through Redis); add a stores.redis block or use backend: embedded',
    );
  const lease = cfg.saga_store.lease;
  if (lease !== undefined && cfg.saga_store.backend !== 'redis')
    issue(
      ['saga_store', 'lease'],
      'lease is read only with backend: redis (one process owns every saga of an embedded log); set backend: redis, or remove lease',
    );
  else if (lease !== undefined && lease < 1000)
    issue(['saga_store', 'lease'], 'lease must be at least 1s (it is renewed every lease/3)');
  cfg.listeners.forEach((l, li) => {
    l.routes.forEach((r, ri) => {
      if (r.deferred && r.request_buffering === false)
        issue(
          ['listeners', li, 'routes', ri, 'deferred'],
          'deferred needs the request body read whole to store it: remove request_buffering: false from this route, or remove deferred',
        );
      if (r.idempotency?.store === 'redis' && !redis)
        issue(
          ['listeners', li, 'routes', ri, 'idempotency', 'store'],
          'store: redis needs stores.redis; add a stores.redis block or use store: memory',
        );
    });
  });
  // A key that would be ignored is refused, unless its block has another problem already (a
  // rate_limiter whose rate is misspelt is not also told that it has no rate).
  const troubled = ctx.issues.map((i) => (i.path ?? []).join('\0'));
  for (const k of ignoredKeys(cfg)) {
    const block = k.path.slice(0, -1).join('\0');
    if (!troubled.some((t) => t === block || t.startsWith(`${block}\0`))) issue(k.path, k.message);
  }
  cfg.readiness.require_upstreams.forEach((u, i) => {
    if (!upstreams.has(u))
      issue(['readiness', 'require_upstreams', i], `upstream "${u}" is not defined${known(upstreams)}`);
    else if (!cfg.upstreams[u]?.health_check)
      issue(['readiness', 'require_upstreams', i], `upstream "${u}" needs a health_check to gate readiness`);
  });
  for (const [un, u] of Object.entries(cfg.upstreams)) {
    const groups = new Set(
      u.endpoints.map((e) => (typeof e === 'string' ? undefined : e.group)).filter((g) => g !== undefined),
    );
    for (const g of Object.keys(u.group_weights ?? {})) {
      if (!groups.has(g))
        issue(['upstreams', un, 'group_weights', g], `no endpoint of ${un} is in group "${g}"`);
    }
  }
  const triggers = new Map<string, string>();
  for (const [sn, saga] of Object.entries(cfg.sagas ?? {})) {
    const at = ['sagas', sn];
    if (!listenerNames.has(saga.trigger.listener))
      issue(
        [...at, 'trigger', 'listener'],
        `listener "${saga.trigger.listener}" is not defined${known(listenerNames)}`,
      );
    const shape = `${saga.trigger.listener} ${saga.trigger.method} ${saga.trigger.path.replace(/:[^/]+/g, ':')}`;
    const other = triggers.get(shape);
    if (other !== undefined)
      issue(
        [...at, 'trigger', 'path'],
        `saga ${other} has the same trigger (${saga.trigger.method} ${saga.trigger.path})`,
      );
    triggers.set(shape, sn);
    const stepNames = new Set<string>();
    saga.steps.forEach((step, si) => {
      if (stepNames.has(step.name))
        issue([...at, 'steps', si, 'name'], `step name "${step.name}" is used twice`);
      stepNames.add(step.name);
      for (const part of ['call', 'compensate', 'status'] as const) {
        const c = step[part];
        if (c && !upstreams.has(c.upstream))
          issue(
            [...at, 'steps', si, part, 'upstream'],
            `upstream "${c.upstream}" is not defined${known(upstreams)}`,
          );
      }
    });
    if (saga.response && 'step' in saga.response && !stepNames.has(saga.response.step))
      issue(
        [...at, 'response', 'step'],
        `no step "${saga.response.step}"; steps: ${[...stepNames].join(', ')}`,
      );
  }
  cfg.degradation?.services.forEach((s, i) => {
    if (!upstreams.has(s.name))
      issue(['degradation', 'services', i, 'name'], `upstream "${s.name}" is not defined${known(upstreams)}`);
    if (s.fallback !== 'static_response' && s.fallback !== 'cache_only' && !fallbacks.has(s.fallback)) {
      issue(
        ['degradation', 'services', i, 'fallback'],
        `fallback "${s.fallback}" is not defined (or use static_response / cache_only)${known(fallbacks)}`,
      );
    }
  });
}
