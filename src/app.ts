/**
 * One running breakwater: upstreams, pipelines, data-plane listeners and the admin listener, built
 * from a resolved config, and the shutdown sequence (readiness off, stop accepting, drain, exit).
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { AdminListener } from './admin/admin.js';
import { ResponseCache } from './cache/response-cache.js';
import { type Clock, systemClock, systemRandom } from './clock.js';
import { ConfigError, type ConfigProblem, formatProblem, loadConfigFile } from './config/load.js';
import type { ResolvedConfig, RouteModel, UpstreamModel } from './config/resolve.js';
import { RedisIdempotencyStore } from './idempotency/redis-store.js';
import { type IdempotencyStore, MemoryIdempotencyStore } from './idempotency/store.js';
import { type HandlerDeps, ProxyHandler } from './listener/handler.js';
import { DataListener } from './listener/listener.js';
import { createLogger, type Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { countsFields } from './pipeline/circuit-breaker.js';
import {
  buildPipeline,
  buildUpgradePipeline,
  type PipelineServices,
  UpstreamPolicies,
} from './pipeline/index.js';
import type { Call, Handler, RequestContext } from './pipeline/types.js';
import type { ResponseHead } from './proxy/attempt.js';
import type { HandshakeResponse } from './proxy/handshake.js';
import { sweepLeftovers, TempFiles } from './proxy/temp-files.js';
import { RedisStore } from './stores/redis.js';
import { type EndpointEvents, Upstream } from './upstream/upstream.js';

export interface StartOptions {
  readonly logger?: Logger;
  readonly metrics?: Metrics;
  readonly clock?: Clock;
  /** Randomness (jitter, the balancers); the process's by default. */
  readonly random?: () => number;
  /** The config file's text, hashed into breakwater_config_info. */
  readonly source?: string;
}

type Phase = 'starting' | 'serving' | 'draining' | 'stopped';

export interface ReloadStatus {
  readonly ok: boolean;
  readonly trigger: string;
  readonly at: string;
  /** Hash of the config that is live after this attempt. */
  readonly hash: string;
  readonly problems: readonly ConfigProblem[];
}

/** Everything built from one config. */
interface Generation {
  readonly config: ResolvedConfig;
  readonly upstreams: Map<string, Upstream>;
  readonly policies: Map<string, UpstreamPolicies>;
  readonly cache: ResponseCache;
  /** stores.redis and the Idempotency-Key store on it (kept across reloads while unchanged). */
  readonly redis: { readonly store: RedisStore; readonly idempotency: IdempotencyStore } | undefined;
  readonly tempFiles: TempFiles;
  /** An upstream's pipeline for calls breakwater makes itself (see `Breakwater.internalPipeline`). */
  readonly pipelineOf: (upstream: string) => InternalPipeline;
}

/** A pipeline for a call without a client: its handler, the upstream, and the route it runs as. */
export interface InternalPipeline {
  readonly handler: Handler;
  readonly upstream: Upstream;
  readonly route: RouteModel;
}

/**
 * What decides whether an upstream's connection pools can be kept across a reload. The TLS model
 * holds the certificate files' bytes (JSON-serialized by content), so a changed file makes new pools.
 */
function poolSettings(m: UpstreamModel): unknown {
  const hc = m.healthCheck
    ? { ...m.healthCheck, expectedStatuses: [...(m.healthCheck.expectedStatuses ?? [])] }
    : undefined;
  return [
    m.endpoints,
    m.maxConnections,
    m.keepaliveTimeout,
    m.timeouts.connect,
    m.timeouts.body,
    hc,
    m.outlierDetection,
    m.tls,
    m.protocol,
    m.maxConcurrentStreams,
  ];
}

export class Breakwater {
  readonly listeners: DataListener[] = [];
  /** Listeners a reload removed or moved, while they drain. */
  private readonly retired = new Set<DataListener>();
  /** Redis clients a reload replaced, until requests that started on them are done. */
  private readonly retiredRedis = new Set<RedisStore>();
  admin: AdminListener | undefined;
  upstreams = new Map<string, Upstream>();
  policies = new Map<string, UpstreamPolicies>();
  cache: ResponseCache | undefined;
  configHash = '';
  lastReload: ReloadStatus | undefined;
  private current: Generation | undefined;
  private reloading: Promise<unknown> = Promise.resolve();
  private watcher: FSWatcher | undefined;
  readonly idempotencyStore: MemoryIdempotencyStore;
  private phase: Phase = 'starting';
  private stopping: Promise<void> | undefined;
  /** Every temporary-file directory made (a reload may move temp_dir); removed at stop. */
  private readonly tempDirs: TempFiles[] = [];

  private constructor(
    public config: ResolvedConfig,
    readonly logger: Logger,
    readonly metrics: Metrics,
    private readonly clock: Clock,
    private readonly random: () => number,
  ) {
    this.idempotencyStore = new MemoryIdempotencyStore({ clock });
  }

  static async start(config: ResolvedConfig, options: StartOptions = {}): Promise<Breakwater> {
    const logger = options.logger ?? createLogger({ level: config.logging.level });
    const metrics = options.metrics ?? createMetrics();
    const bw = new Breakwater(
      config,
      logger,
      metrics,
      options.clock ?? systemClock,
      options.random ?? systemRandom,
    );
    try {
      await bw.bind(options.source);
    } catch (err) {
      await bw.stop(0);
      throw err;
    }
    return bw;
  }

  private async bind(source: string | undefined): Promise<void> {
    const { config, metrics, logger } = this;
    metrics.ready.set(0);
    this.admin = await AdminListener.start({
      host: config.admin.host,
      port: config.admin.port,
      metrics,
      readiness: { ready: () => this.readiness() },
      runtime: this,
      adminToken: process.env[config.admin.token_env],
    });
    await this.apply(config, source);
    this.phase = 'serving';
    metrics.ready.set(1);
    logger.info({ event: 'ready', admin: `${config.admin.host}:${this.admin.port}` }, 'breakwater ready');
  }

  /**
   * Makes `config` live: upstreams, policies, cache and pipelines are built for it, carrying over
   * the state of whatever did not change; each listener gets the new routes in one swap (requests
   * in flight finish on what they started with); listeners that are new or moved are bound before
   * the old ones close. Used at start and by every reload.
   */
  private async apply(config: ResolvedConfig, source: string | undefined): Promise<void> {
    const { metrics, logger } = this;
    const previous = this.current;
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

    const cache =
      previous && same(previous.config.cache, config.cache)
        ? previous.cache
        : new ResponseCache(
            config.cache.max_bytes,
            config.cache.max_entry_bytes,
            new Set(config.cache.statuses),
            {
              evicted: () => metrics.cacheEvictions.inc(),
            },
          );
    metrics.collectors.set('cache', () => {
      metrics.cacheBytes.set(cache.bytes);
      metrics.cacheEntries.set(cache.entries);
    });
    const tempFiles = await this.tempFilesFor(config.buffering.tempDir, previous?.tempFiles);

    // One Redis client per process; a reload that changes stores.redis makes a new one and closes
    // the old one once requests that started on it are done with it.
    const redisModel = config.stores.redis;
    const keptRedis =
      previous?.redis && same(previous.config.stores.redis, redisModel) ? previous.redis : undefined;
    const redis =
      keptRedis ??
      (redisModel
        ? (() => {
            const store = new RedisStore(redisModel, metrics, logger, this.clock);
            return { store, idempotency: new RedisIdempotencyStore(store) };
          })()
        : undefined);
    const services: PipelineServices = {
      clock: this.clock,
      metrics,
      logger,
      random: this.random,
      redis: redis?.store,
    };
    if (redis && redis !== keptRedis) await redis.store.waitReady(redis.store.model.connectTimeout);
    if (redis) {
      metrics.collectors.set('store:redis', () =>
        metrics.storeUp.labels('redis').set(redis.store.up ? 1 : 0),
      );
    } else {
      // stores.redis removed: its series go, as a removed upstream's do.
      metrics.collectors.delete('store:redis');
      await metrics.forget({ store: 'redis' });
    }

    const upstreams = new Map<string, Upstream>();
    const policies = new Map<string, UpstreamPolicies>();
    // Fallbacks of type upstream call another upstream through its own policies, minus its
    // fallbacks (so two upstreams naming each other cannot loop).
    const fallbackPipelines = new Map<string, InternalPipeline>();
    const pipelineOf = (name: string): InternalPipeline => {
      let p = fallbackPipelines.get(name);
      if (!p) {
        const upstream = upstreams.get(name) as Upstream;
        const route = fallbackRoute(upstream.model);
        const handler = buildPipeline(route, policies.get(name) as UpstreamPolicies, services, {
          withFallback: false,
        });
        p = { handler, upstream, route };
        fallbackPipelines.set(name, p);
      }
      return p;
    };
    const fallbackContext = {
      fallbacks: config.fallbacks,
      cache,
      degradation: config.degradation,
      pipelineOf,
      idempotency: this.idempotencyStore,
      sharedIdempotency: redis?.idempotency,
    };
    for (const [name, model] of Object.entries(config.upstreams)) {
      if (model.tls?.insecureSkipVerify) {
        logger.warn(
          { event: 'tls_insecure_skip_verify', upstream: name },
          `upstreams.${name}.tls.insecure_skip_verify is true: the certificates of ${name} are not verified, so anyone on the network path can read and change its traffic`,
        );
      }
      const old = previous?.upstreams.get(name);
      const upstream =
        old && same(poolSettings(old.model), poolSettings(model))
          ? old.withModel(model)
          : new Upstream(model, { clock: this.clock, random: this.random });
      upstream.startHealthChecks(this.endpointEvents(name));
      upstreams.set(name, upstream);
      policies.set(
        name,
        new UpstreamPolicies(model, services, fallbackContext, previous?.policies.get(name)),
      );
    }
    const teeFor = (ctx: RequestContext, head: ResponseHead) => {
      const p = policies.get(ctx.upstream.name);
      if (ctx.method !== 'GET' || !p?.caches || !cache.cacheable(head.status, head.rawHeaders))
        return undefined;
      const key = p.chain.cacheKey(ctx);
      return (headers: readonly string[]) => cache.tee(key, head.status, headers, () => this.clock.wall());
    };

    const handlers = new Map<string, HandlerDeps>();
    for (const l of config.listeners) {
      const pipelines = new Map<RouteModel, Handler>();
      const upgrades = new Map<RouteModel, Call<HandshakeResponse>>();
      for (const r of l.routes) {
        const p = policies.get(r.upstream) as UpstreamPolicies;
        pipelines.set(r, buildPipeline(r, p, services));
        upgrades.set(r, buildUpgradePipeline(p, services));
      }
      handlers.set(l.name, {
        listener: l,
        upstreams,
        pipelines,
        metrics,
        logger,
        accessLog: config.logging.access_log,
        accessLogHeaders: config.logging.access_log_headers.map((h) => h.toLowerCase()),
        draining: () => this.phase === 'draining',
        tempFiles,
        buffering: config.buffering,
        teeFor,
        statsOf: (name) => policies.get(name)?.stats,
        upgrades,
        clock: this.clock,
      });
    }

    // Listeners: keep those whose address did not change; bind new and moved ones first.
    const keep: DataListener[] = [];
    const bound: DataListener[] = [];
    try {
      for (const l of config.listeners) {
        const deps = handlers.get(l.name) as HandlerDeps;
        const existing = this.listeners.find(
          (x) =>
            x.model.name === l.name && x.model.host === l.host && x.model.port === l.port && l.port !== 0,
        );
        if (existing) {
          existing.update(l, deps);
          keep.push(existing);
        } else {
          const listener = await DataListener.start(l, new ProxyHandler(deps));
          bound.push(listener);
          logger.info(
            {
              event: 'listener_bound',
              listener: l.name,
              host: l.host,
              port: listener.port,
              routes: l.routes.length,
            },
            'listener bound',
          );
        }
      }
    } catch (err) {
      await Promise.all(bound.map((l) => l.close()));
      if (redis && redis !== keptRedis) await redis.store.close();
      throw err;
    }
    const retired = this.listeners.filter((l) => !keep.includes(l));
    this.listeners.splice(0, this.listeners.length, ...keep, ...bound);
    for (const l of retired) {
      logger.info(
        { event: 'listener_closing', listener: l.model.name, port: l.port },
        'listener closing (removed or moved by the new config)',
      );
      // It drains as at shutdown: what is still open after the drain timeout (WebSockets, slow
      // responses) is cut, and a stop meanwhile waits for it too.
      this.retired.add(l);
      const cut = setTimeout(() => l.forceClose(), config.shutdown.drain_timeout);
      cut.unref();
      void l.close().then(() => {
        clearTimeout(cut);
        this.retired.delete(l);
      });
    }
    // What a removed upstream (or endpoint) exported goes with it: its collectors first (so a
    // scrape does not set its gauges again), then every series with its label.
    if (previous) {
      for (const [name, u] of previous.upstreams) {
        const kept = upstreams.get(name);
        if (!kept) {
          metrics.collectors.delete(`upstream:${name}`);
          metrics.collectors.delete(`endpoints:${name}`);
          await metrics.forget({ upstream: name });
          continue;
        }
        const urls = new Set(kept.endpoints.map((e) => e.model.url));
        for (const e of u.endpoints)
          if (!urls.has(e.model.url)) await metrics.forget({ upstream: name, endpoint: e.model.url });
      }
    }
    // Pools no longer used finish their requests in flight, then close.
    if (previous) {
      const live = new Set([...upstreams.values()].flatMap((u) => u.endpoints));
      for (const u of previous.upstreams.values()) {
        for (const e of u.endpoints) if (!live.has(e)) void e.pool.close();
      }
    }

    const oldRedis = previous?.redis;
    if (oldRedis && oldRedis !== redis) {
      this.retiredRedis.add(oldRedis.store);
      const closeOld = setTimeout(() => {
        this.retiredRedis.delete(oldRedis.store);
        // (What it counted while draining goes too when no Redis replaced it.)
        void oldRedis.store
          .close()
          .then(() => (this.current?.redis ? undefined : metrics.forget({ store: 'redis' })));
      }, config.shutdown.drain_timeout);
      closeOld.unref();
    }
    this.current = { config, upstreams, policies, cache, redis, tempFiles, pipelineOf };
    this.config = config;
    this.upstreams = upstreams;
    this.policies = policies;
    this.cache = cache;
    if (source !== undefined) {
      this.configHash = createHash('sha256').update(source).digest('hex').slice(0, 16);
      metrics.configInfo.reset();
      metrics.configInfo.labels(this.configHash).set(1);
    }
    metrics.configLoaded.set(this.clock.wall() / 1000);
  }

  /**
   * Reads the config file again and makes it live if it is valid. An invalid file changes nothing:
   * the last good config keeps serving, and the problems are logged, counted and kept for
   * `GET /config/status`. Reloads run one at a time.
   */
  reload(trigger: string): Promise<ReloadStatus> {
    const run = async (): Promise<ReloadStatus> => {
      const at = new Date().toISOString();
      try {
        const loaded = await loadConfigFile(this.config.file);
        await this.apply(loaded.config, loaded.source);
        this.metrics.configReloads.labels('success').inc();
        this.lastReload = { ok: true, trigger, at, hash: this.configHash, problems: [] };
        this.logger.info(
          { event: 'config_reload', trigger, result: 'success', hash: this.configHash },
          'config reloaded',
        );
      } catch (err) {
        const problems =
          err instanceof ConfigError
            ? err.problems
            : [{ file: this.config.file, line: 0, column: 0, key: '', message: String(err) }];
        this.metrics.configReloads.labels('failure').inc();
        this.lastReload = { ok: false, trigger, at, hash: this.configHash, problems };
        this.logger.error(
          { event: 'config_reload', trigger, result: 'failure', problems },
          `config reload rejected, the last good config keeps serving:\n${problems.map(formatProblem).join('\n')}`,
        );
      }
      return this.lastReload;
    };
    const next = this.reloading.then(run, run);
    this.reloading = next;
    return next;
  }

  /**
   * The temporary files of buffered bodies in `root`: the current ones when the directory did not
   * change; else new ones, after removing what breakwater processes that are gone left in `root`.
   */
  private async tempFilesFor(root: string, current: TempFiles | undefined): Promise<TempFiles> {
    if (current && current.root === root) return current;
    const { metrics, logger } = this;
    try {
      const removed = await sweepLeftovers(root);
      if (removed.length > 0)
        logger.info(
          { event: 'temp_files_swept', temp_dir: root, removed },
          `removed ${removed.length} directories of temporary files left by breakwater processes that are gone`,
        );
    } catch (err) {
      logger.warn({ err, temp_dir: root }, 'could not remove leftover temporary files');
    }
    const temp = new TempFiles(root, (kind, err) => {
      metrics.tempFileErrors.labels(kind).inc();
      logger.warn(
        { event: 'temp_file_error', kind, errno: err.errno, err: err.message, temp_dir: root },
        'temporary file failed',
      );
    });
    this.tempDirs.push(temp);
    metrics.collectors.set('temp_files', () => {
      for (const kind of ['request', 'response'] as const) {
        let files = 0;
        let bytes = 0;
        for (const t of this.tempDirs) {
          files += t.files[kind];
          bytes += t.bytes[kind];
        }
        metrics.tempFiles.labels(kind).set(files);
        metrics.tempFileBytes.labels(kind).set(bytes);
      }
    });
    return temp;
  }

  /** Metrics and log lines for endpoint health changes and ejections. */
  private endpointEvents(upstream: string): EndpointEvents {
    const { metrics, logger } = this;
    const u = () => this.upstreams.get(upstream);
    metrics.collectors.set(`endpoints:${upstream}`, () => {
      const now = this.clock.now();
      for (const e of u()?.endpoints ?? []) {
        metrics.endpointHealthy.labels(upstream, e.model.url).set(e.available(now) ? 1 : 0);
        metrics.endpointInFlight.labels(upstream, e.model.url).set(e.inflight);
      }
      let streaming = 0;
      for (const e of u()?.endpoints ?? []) streaming += e.streaming;
      metrics.streamingInFlight.labels(upstream).set(streaming);
    });
    return {
      healthChanged: (e, health) => {
        const fields = { event: 'endpoint_health', upstream, endpoint: e.model.url, health };
        if (health === 'unhealthy')
          logger.warn(fields, `endpoint ${e.model.url} of ${upstream} failed its health check`);
        else logger.info(fields, `endpoint ${e.model.url} of ${upstream} is ${health}`);
      },
      ejected: (e, forMs) => {
        metrics.endpointEjections.labels(upstream, e.model.url).inc();
        logger.warn(
          {
            event: 'endpoint_ejected',
            upstream,
            endpoint: e.model.url,
            for_ms: forMs,
            ejections: e.ejections,
          },
          `endpoint ${e.model.url} of ${upstream} ejected for ${forMs} ms (outlier detection)`,
        );
      },
      endpointsChanged: (urls) =>
        logger.info(
          { event: 'endpoints_resolved', upstream, endpoints: urls },
          `endpoints of ${upstream} now ${urls.join(', ')}`,
        ),
      resolveFailed: (url, err) =>
        logger.warn(
          { event: 'endpoint_resolve_failed', upstream, endpoint: url, error: err.message },
          `cannot resolve ${url}; keeping the last good addresses`,
        ),
    };
  }

  /** Per upstream: breaker, limiter, bulkhead, degradation, endpoints; and the cache (GET /state). */
  state(): unknown {
    const now = this.clock.now();
    const upstreams: Record<string, unknown> = {};
    for (const [name, p] of this.policies) {
      const u = this.upstreams.get(name);
      const b = p.breaker;
      upstreams[name] = {
        breaker: b
          ? {
              state: b.state,
              // A forced breaker is the operator's: it never probes, so there is no time to wait.
              forced: b.state === 'forced_open' || b.state === 'forced_closed',
              ...countsFields(b.stats()),
              retry_after_ms: b.state === 'open' ? Math.round(b.retryAfterMs()) : null,
              recent_transitions: b.recent.map((t) => ({
                from: t.from,
                to: t.to,
                reason: t.reason,
                ago_ms: Math.round(now - t.at),
              })),
            }
          : null,
        // A global limit's rate and burst are the fleet's; `tokens` is then the local share's bucket.
        rate_limiter: p.limiter
          ? {
              mode: p.limiter.policy.mode,
              rate_per_second: (p.globalLimiter ?? p.limiter).policy.ratePerSecond,
              burst: (p.globalLimiter ?? p.limiter).policy.burst,
              tokens: p.limiter.tokens(),
              queued: p.limiter.queueLength,
              scope: p.limiter.policy.scope,
              global: p.globalLimiter?.state() ?? null,
            }
          : null,
        bulkhead: p.bulkhead
          ? {
              max_concurrent: p.bulkhead.policy.maxConcurrent,
              in_flight: p.bulkhead.inFlight,
              queued: p.bulkhead.queueLength,
            }
          : null,
        degradation: p.degradation
          ? { degraded: p.degradation.monitor.degraded, last: p.degradation.monitor.last ?? null }
          : null,
        fallback: p.chain.head ?? null,
        traffic: p.stats.snapshot(now),
        endpoints:
          u?.endpoints.map((e) => ({
            url: e.model.url,
            weight: e.weight,
            priority: e.model.priority,
            group: e.model.group ?? null,
            health: e.health,
            ejected_for_ms: Math.max(0, Math.round(e.ejectedUntil - now)),
            in_flight: e.inflight,
            streaming: e.streaming,
          })) ?? [],
      };
    }
    const cache = this.cache;
    return {
      phase: this.phase,
      config_hash: this.configHash,
      upstreams,
      cache: cache ? { bytes: cache.bytes, entries: cache.entries, max_bytes: cache.maxBytes } : null,
      stores: { redis: this.current?.redis?.store.health() ?? null },
    };
  }

  /** Operator control of an upstream's breaker (POST /upstreams/<name>/breaker). */
  forceBreaker(
    upstream: string,
    mode: 'open' | 'close' | 'auto',
  ): { ok: true; state: string } | { ok: false; status: 404 | 409; error: string } {
    const p = this.policies.get(upstream);
    if (!p) return { ok: false, status: 404, error: `no upstream ${upstream}` };
    if (!p.breaker)
      return { ok: false, status: 409, error: `upstream ${upstream} has no circuit_breaker configured` };
    p.breaker.force(mode);
    return { ok: true, state: p.breaker.state };
  }

  /** Watches the config file's directory (a Kubernetes ConfigMap swaps its `..data` symlink). */
  watchConfig(debounceMs = 300): void {
    const dir = dirname(this.config.file);
    const base = basename(this.config.file);
    let timer: NodeJS.Timeout | undefined;
    // The hash of the file as last seen. It starts from the running config's hash, known at once,
    // not from a read of the file at start: such a read can finish after the file changed, and the
    // change would then pass unseen. An unchanged file therefore never reloads, and an edit made
    // right after start is not mistaken for the file the running config came from.
    let lastSeen = this.configHash;
    const check = async () => {
      try {
        const text = await readFile(this.config.file, 'utf8');
        const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
        if (hash === lastSeen) return;
        lastSeen = hash;
        // A file back to the running version changes nothing, but after a failed reload it is
        // validated again so that /config/status stops showing the failure.
        if (hash !== this.configHash || this.lastReload?.ok === false) await this.reload('file change');
      } catch {
        // the file is being replaced; the next event will tell
      }
    };
    this.watcher = watch(dir, (_event, name) => {
      if (name !== null && name !== base && !name.startsWith('..')) return;
      clearTimeout(timer);
      timer = setTimeout(() => void check(), debounceMs);
    });
    this.watcher.on('error', (err) =>
      this.logger.warn({ err }, 'config watch failed; SIGHUP and POST /config/reload still work'),
    );
  }

  readiness(): { ready: boolean; reason: string } {
    switch (this.phase) {
      case 'serving': {
        const waiting = this.config.readiness.require_upstreams.filter(
          (u) => !this.upstreams.get(u)?.hasHealthyEndpoint(),
        );
        if (waiting.length)
          return { ready: false, reason: `waiting for a healthy endpoint of ${waiting.join(', ')}` };
        return { ready: true, reason: 'config loaded, listeners bound' };
      }
      case 'starting':
        return { ready: false, reason: 'starting' };
      default:
        return { ready: false, reason: 'draining' };
    }
  }

  /**
   * The pipeline of `upstream` for a call breakwater makes itself, with no client connection (a
   * fallback of type upstream; a replayed or composed call): the upstream's own timeouts and retry
   * policy, its limiter, bulkhead and breaker, without its fallbacks. Its context is made with
   * `newContext` and `callRequest` (pipeline/types.ts), `res: undefined`; its maker runs
   * `runFinishers(ctx)` once done with the response (that gives back the bulkhead slot). Undefined
   * for an unknown upstream.
   */
  internalPipeline(upstream: string): InternalPipeline | undefined {
    const current = this.current;
    return current?.upstreams.has(upstream) ? current.pipelineOf(upstream) : undefined;
  }

  /** The port a listener is bound to (useful with port 0). */
  listenerPort(name: string): number {
    const l = this.listeners.find((x) => x.model.name === name);
    if (!l) throw new Error(`no listener ${name}`);
    return l.port;
  }

  /**
   * Graceful stop: readiness turns 503 at once; after `shutdown.delay` the listeners stop accepting;
   * requests in flight finish (responses carry Connection: close) until `drain_timeout`, after which
   * the connections left are cut; then the admin listener and the upstream pools close.
   */
  stop(drainTimeout = this.config.shutdown.drain_timeout): Promise<void> {
    this.stopping ??= this.doStop(drainTimeout);
    return this.stopping;
  }

  private async doStop(drainTimeout: number): Promise<void> {
    const started = this.clock.now();
    this.phase = 'draining';
    this.metrics.ready.set(0);
    this.logger.info(
      {
        event: 'shutdown',
        phase: 'draining',
        drain_timeout_ms: drainTimeout,
        delay_ms: this.config.shutdown.delay,
      },
      'shutdown: draining',
    );
    if (this.config.shutdown.delay > 0 && drainTimeout > 0) await sleep(this.config.shutdown.delay);
    const all = [...this.listeners, ...this.retired];
    const closing = Promise.all(all.map((l) => l.close()));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      closing.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), drainTimeout);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.logger.warn(
        { drain_timeout_ms: drainTimeout },
        'shutdown: drain timeout passed, closing remaining connections',
      );
      for (const l of all) l.forceClose();
      await closing;
    }
    this.watcher?.close();
    await Promise.all([...this.upstreams.values()].map((u) => u.destroy()));
    await this.current?.redis?.store.close();
    for (const r of this.retiredRedis) await r.close();
    await Promise.all(this.tempDirs.map((t) => t.dispose()));
    await this.admin?.close();
    this.phase = 'stopped';
    this.logger.info(
      { event: 'shutdown', phase: 'done', took_ms: Math.round(this.clock.now() - started) },
      'shutdown: done',
    );
    this.logger.flush?.();
  }
}

/** The route a fallback of type upstream uses: the upstream's own timeouts and retry policy. */
function fallbackRoute(model: UpstreamModel): RouteModel {
  return {
    name: `fallback-${model.name}`,
    listener: '',
    match: { pathPrefix: undefined, host: undefined, hostSuffix: undefined, methods: undefined, headers: [] },
    upstream: model.name,
    stripPrefix: undefined,
    timeouts: model.timeouts,
    retry: model.retry,
    idempotency: undefined,
    maxBodyBytes: 0,
    trust: undefined,
    websocket: { enabled: false, idleTimeout: 0, maxDuration: 0 },
    requestBuffering: true,
    responseBuffering: true,
    allowTrace: false,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
