/**
 * One running breakwater: upstreams, pipelines, data-plane listeners and the admin listener, built
 * from a resolved config, and the shutdown sequence (readiness off, stop accepting, drain, exit).
 */
import { createHash } from 'node:crypto';
import type { FSWatcher } from 'node:fs';
import { AdminListener } from './admin/admin.js';
import type { ResponseHead } from './attempt/attempt.js';
import type { HandshakeResponse } from './attempt/handshake.js';
import { ResponseCache } from './cache/response-cache.js';
import { type Clock, systemClock, systemRandom } from './clock.js';
import { loadConfigFile } from './config/load.js';
import type { ResolvedConfig, RouteModel, UpstreamModel } from './config/resolve.js';
import { Deferred, DeferredQueue, RedisDeferredQueue } from './deferred/index.js';
import { RedisIdempotencyStore } from './idempotency/redis-store.js';
import { type IdempotencyStore, MemoryIdempotencyStore } from './idempotency/store.js';
import { type BreakerCommandResult, forceBreaker } from './lifecycle/breaker-command.js';
import { type ReloadStatus, Reloads, retireAfter, retireListener } from './lifecycle/reload.js';
import { delay, drain } from './lifecycle/shutdown.js';
import { stateOf } from './lifecycle/state.js';
import { poolSettings, sameSettings } from './lifecycle/survives.js';
import { watchConfigFile } from './lifecycle/watch.js';
import { type HandlerDeps, ProxyHandler } from './listener/handler.js';
import { DataListener } from './listener/listener.js';
import { problem } from './listener/problem.js';
import { createLogger, type Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import {
  buildPipeline,
  buildUpgradePipeline,
  type PipelineServices,
  UpstreamPolicies,
} from './pipeline/index.js';
import { type InternalRequest, type InternalResult, internalCall } from './pipeline/internal-call.js';
import type { Call, Handler, RequestContext, UpstreamPipeline } from './pipeline/types.js';
import { SagaService } from './sagas/service.js';
import { EmbeddedStore } from './stores/embedded.js';
import { RedisStore } from './stores/redis.js';
import { sweepLeftovers, TempFiles } from './stores/temp-files.js';
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

export type { ReloadStatus } from './lifecycle/reload.js';

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
  readonly pipelineOf: (upstream: string) => UpstreamPipeline;
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
  private current: Generation | undefined;
  private watcher: FSWatcher | undefined;
  private readonly reloads: Reloads;
  readonly idempotencyStore: MemoryIdempotencyStore;
  private phase: Phase = 'starting';
  private stopping: Promise<void> | undefined;
  /** Every temporary-file directory made (a reload may move temp_dir); removed at stop. */
  private readonly tempDirs: TempFiles[] = [];
  /** The embedded store in data_dir, opened by the first feature that needs it (kept until stop). */
  private store: Promise<EmbeddedStore> | undefined;
  /** Sagas, once a config has had `sagas:` (kept across reloads: sagas in flight go on). */
  private sagaService: SagaService | undefined;
  /** Deferred delivery, opened with the first config that has a route with `deferred:`. */
  deferred: Deferred | undefined;

  private constructor(
    public config: ResolvedConfig,
    readonly logger: Logger,
    readonly metrics: Metrics,
    private readonly clock: Clock,
    private readonly random: () => number,
  ) {
    this.idempotencyStore = new MemoryIdempotencyStore({ clock });
    this.reloads = new Reloads({
      metrics,
      logger,
      file: () => this.config.file,
      load: async () => {
        const loaded = await loadConfigFile(this.config.file);
        await this.apply(loaded.config, loaded.source);
      },
      hash: () => this.configHash,
    });
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
      adminToken: process.env[config.admin.tokenEnv],
    });
    await this.apply(config, source);
    this.phase = 'serving';
    this.deferred?.deliverer.start();
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

    const cache =
      previous && sameSettings(previous.config.cache, config.cache)
        ? previous.cache
        : new ResponseCache(
            config.cache.maxBytes,
            config.cache.maxEntryBytes,
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
      previous?.redis && sameSettings(previous.config.stores.redis, redisModel) ? previous.redis : undefined;
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
    const fallbackPipelines = new Map<string, UpstreamPipeline>();
    const pipelineOf = (name: string): UpstreamPipeline => {
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
        old && sameSettings(poolSettings(old.model), poolSettings(model))
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

    const openStore = await this.store?.catch(() => undefined);
    if (openStore && openStore.dir !== config.dataDir)
      logger.warn(
        { event: 'data_dir_changed', data_dir: config.dataDir, in_use: openStore.dir },
        `data_dir changed to ${config.dataDir}; the store in ${openStore.dir} stays in use until breakwater restarts`,
      );
    // Sagas: the log is opened (and the sagas in flight recovered, below) only when configured.
    let sagasOpened = false;
    if (!this.sagaService && Object.keys(config.sagas).length > 0) {
      this.sagaService = await SagaService.open({
        backend:
          config.sagaStore.backend === 'redis'
            ? { kind: 'redis', store: () => this.current?.redis?.store, lease: config.sagaStore.lease }
            : { kind: 'embedded', store: await this.embeddedStore(config.dataDir) },
        clock: this.clock,
        call: (upstream, request, max) => this.callUpstream(upstream, request, max),
        metrics,
        logger,
        models: () => this.config.sagas,
        sagaUrl: (id) => `${this.adminBase()}/sagas/${id}`,
      });
      sagasOpened = true;
    } else if (this.sagaService && this.sagaService.backend !== config.sagaStore.backend)
      logger.warn(
        { event: 'saga_store_changed', backend: config.sagaStore.backend, in_use: this.sagaService.backend },
        `saga_store.backend changed to ${config.sagaStore.backend}; the ${this.sagaService.backend} saga log stays in use until breakwater restarts`,
      );
    if (!this.deferred && Deferred.wanted(config.listeners.flatMap((l) => l.routes))) {
      const deps = {
        metrics,
        logger,
        clock: this.clock,
        random: this.random,
        caps: () => this.config.deferredStore,
        send: (u: string, r: InternalRequest, max: number) => this.callUpstream(u, r, max),
        base: () => this.adminBase(),
      };
      const shared = config.deferredStore.backend === 'redis' ? redis?.store : undefined;
      this.deferred = Deferred.open(
        shared
          ? await RedisDeferredQueue.open(() => this.current?.redis?.store ?? shared, deps)
          : await DeferredQueue.open(await this.embeddedStore(config.dataDir), deps),
        deps,
      );
    } else if (this.deferred && this.deferred.queue.backend !== config.deferredStore.backend)
      logger.warn(
        {
          event: 'deferred_backend_changed',
          backend: config.deferredStore.backend,
          in_use: this.deferred.queue.backend,
        },
        `deferred_store.backend changed to ${config.deferredStore.backend}; the ${this.deferred.queue.backend} queue stays in use until breakwater restarts`,
      );
    const deferredPipeline = (r: RouteModel) =>
      buildPipeline(r, policies.get(r.upstream) as UpstreamPolicies, services, { withFallback: false });

    const handlers = new Map<string, HandlerDeps>();
    for (const l of config.listeners) {
      const pipelines = new Map<RouteModel, Handler>();
      const upgrades = new Map<RouteModel, Call<HandshakeResponse>>();
      for (const r of l.routes) {
        const p = policies.get(r.upstream) as UpstreamPolicies;
        pipelines.set(r, buildPipeline(r, p, services));
        upgrades.set(r, buildUpgradePipeline(r, p, services));
      }
      handlers.set(l.name, {
        listener: l,
        upstreams,
        pipelines,
        metrics,
        logger,
        accessLog: config.logging.accessLog,
        accessLogHeaders: config.logging.accessLogHeaders,
        draining: () => this.phase === 'draining',
        tempFiles,
        buffering: config.buffering,
        teeFor,
        statsOf: (name) => policies.get(name)?.stats,
        sagaTrigger: this.sagaService?.triggerFor(
          l.name,
          { maxBodyBytes: l.limits.maxBodyBytes },
          config.sagas,
        ),
        deferred: this.deferred?.routes(l.routes, deferredPipeline),
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
    for (const l of retired) retireListener(l, config.shutdown.drainTimeout, this.retired, logger);
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
      retireAfter(config.shutdown.drainTimeout, () => {
        this.retiredRedis.delete(oldRedis.store);
        // (What it counted while draining goes too when no Redis replaced it.)
        void oldRedis.store
          .close()
          .then(() => (this.current?.redis ? undefined : metrics.forget({ store: 'redis' })));
      });
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
    if (this.phase === 'serving') this.deferred?.deliverer.start();
    if (sagasOpened) await this.sagaService?.recover();
  }

  /** Sagas (the admin API), when a config has had `sagas:`. */
  sagas(): SagaService | undefined {
    return this.sagaService;
  }

  /**
   * The process's one embedded store (data_dir), opened on first use (in `dir`, the live config's
   * data_dir unless a config being applied says otherwise); later calls get the same one. A reload
   * that changes data_dir keeps it (a warning says a restart is needed).
   */
  embeddedStore(dir = this.config.dataDir): Promise<EmbeddedStore> {
    if (!this.store) {
      this.store = EmbeddedStore.open(dir);
      this.store.catch(() => {
        this.store = undefined;
      });
    }
    return this.store;
  }

  /** The admin listener's URL as a client on this host reaches it (Location of deferred items). */
  private adminBase(): string {
    const h = this.config.admin.host;
    const host =
      h === '0.0.0.0' || h === '' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
    return `http://${host}:${this.admin?.port ?? this.config.admin.port}`;
  }

  /**
   * Reads the config file again and makes it live if it is valid. An invalid file changes nothing:
   * the last good config keeps serving, and the problems are logged, counted and kept for
   * `GET /config/status`. Reloads run one at a time.
   */
  reload(trigger: string): Promise<ReloadStatus> {
    return this.reloads.reload(trigger);
  }

  get lastReload(): ReloadStatus | undefined {
    return this.reloads.last;
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
    return stateOf({
      phase: this.phase,
      configHash: this.configHash,
      policies: this.policies,
      upstreams: this.upstreams,
      cache: this.cache,
      redis: this.current?.redis?.store,
      deferred: this.deferred ? { upstreams: this.deferred.queue.upstreams() } : undefined,
      sagas: this.sagaService?.state(),
      now: this.clock.now(),
    });
  }

  /** Operator control of an upstream's breaker (POST /upstreams/<name>/breaker). */
  forceBreaker(upstream: string, mode: 'open' | 'close' | 'auto'): BreakerCommandResult {
    return forceBreaker(this.policies, upstream, mode);
  }

  /** Watches the config file's directory (a Kubernetes ConfigMap swaps its `..data` symlink). */
  watchConfig(debounceMs = 300): void {
    this.watcher = watchConfigFile(
      {
        file: this.config.file,
        runningHash: () => this.configHash,
        lastFailed: () => this.lastReload?.ok === false,
        reload: (trigger) => this.reload(trigger),
        logger: this.logger,
      },
      debounceMs,
    );
  }

  readiness(): { ready: boolean; reason: string } {
    switch (this.phase) {
      case 'serving': {
        const waiting = this.config.readiness.requireUpstreams.filter(
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
   * A call breakwater makes itself (deferred delivery, saga steps) through `upstream`'s pipeline
   * on the live config; never rejects. An upstream the config no longer has is a 503 failure.
   */
  callUpstream(
    upstream: string,
    request: InternalRequest,
    maxResponseBytes: number,
  ): Promise<InternalResult> {
    const g = this.current;
    if (!g?.upstreams.has(upstream)) {
      return Promise.resolve({
        type: 'failure',
        problem: problem('no-healthy-endpoint', `the config has no upstream ${upstream}`, {
          upstream,
          requestId: request.requestId,
        }),
        cause: 'refused',
        maybeProcessed: false,
        attempts: 0,
      });
    }
    return internalCall(g.pipelineOf(upstream), request, maxResponseBytes, () => this.clock.now());
  }

  /**
   * The pipeline of `upstream` for a call breakwater makes itself, with no client connection (a
   * fallback of type upstream; a replayed or composed call): the upstream's own timeouts and retry
   * policy, its limiter, bulkhead and breaker, without its fallbacks. Its context is made with
   * `newContext` and `callRequest` (pipeline/types.ts), `res: undefined`; its maker runs
   * `runFinishers(ctx)` once done with the response (that gives back the bulkhead slot). Undefined
   * for an unknown upstream.
   */
  internalPipeline(upstream: string): UpstreamPipeline | undefined {
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
  stop(drainTimeout = this.config.shutdown.drainTimeout): Promise<void> {
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
    if (this.config.shutdown.delay > 0 && drainTimeout > 0) await delay(this.config.shutdown.delay);
    await drain([...this.listeners, ...this.retired], drainTimeout, this.logger);
    this.watcher?.close();
    await this.sagaService?.stop();
    // Deliveries in flight get a moment to finish; the others go back to pending.
    await this.deferred?.stop(Math.min(drainTimeout, 5_000));
    await Promise.all([...this.upstreams.values()].map((u) => u.destroy()));
    if (this.store) await (await this.store).close();
    await this.current?.redis?.store.close();
    for (const r of this.retiredRedis) await r.close();
    await Promise.all(this.tempDirs.map((t) => t.dispose()));
    await this.admin?.close();
    const store = await this.store?.catch(() => undefined);
    await store?.close();
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
    deferred: undefined,
  };
}
