/**
 * One running breakwater: upstreams, pipelines, data-plane listeners and the admin listener, built
 * from a resolved config, and the shutdown sequence (readiness off, stop accepting, drain, exit).
 */
import { createHash } from 'node:crypto';
import { AdminListener } from './admin/admin.js';
import { ResponseCache } from './cache/response-cache.js';
import type { ResolvedConfig, RouteModel, UpstreamModel } from './config/resolve.js';
import { MemoryIdempotencyStore } from './idempotency/store.js';
import { ProxyHandler } from './listener/handler.js';
import { DataListener } from './listener/listener.js';
import { createLogger, type Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { buildPipeline, UpstreamPolicies } from './pipeline/index.js';
import { type Clock, type Handler, type RequestContext, systemClock } from './pipeline/types.js';
import type { ResponseHead } from './proxy/attempt.js';
import { Upstream } from './upstream/upstream.js';

export interface StartOptions {
  readonly logger?: Logger;
  readonly metrics?: Metrics;
  readonly clock?: Clock;
  /** The config file's text, hashed into breakwater_config_info. */
  readonly source?: string;
}

type Phase = 'starting' | 'serving' | 'draining' | 'stopped';

export class Breakwater {
  readonly listeners: DataListener[] = [];
  admin: AdminListener | undefined;
  readonly upstreams = new Map<string, Upstream>();
  readonly policies = new Map<string, UpstreamPolicies>();
  cache: ResponseCache | undefined;
  readonly idempotencyStore = new MemoryIdempotencyStore();
  private phase: Phase = 'starting';
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: ResolvedConfig,
    readonly logger: Logger,
    readonly metrics: Metrics,
    private readonly clock: Clock,
  ) {}

  static async start(config: ResolvedConfig, options: StartOptions = {}): Promise<Breakwater> {
    const logger = options.logger ?? createLogger({ level: config.logging.level });
    const metrics = options.metrics ?? createMetrics();
    const bw = new Breakwater(config, logger, metrics, options.clock ?? systemClock);
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
    if (source !== undefined) {
      metrics.configInfo.labels(createHash('sha256').update(source).digest('hex').slice(0, 16)).set(1);
    }
    metrics.configLoaded.set(Date.now() / 1000);
    this.admin = await AdminListener.start({
      host: config.admin.host,
      port: config.admin.port,
      metrics,
      readiness: { ready: () => this.readiness() },
    });
    const services = { clock: this.clock, metrics, logger, random: Math.random };
    const cache = new ResponseCache(
      config.cache.max_bytes,
      config.cache.max_entry_bytes,
      new Set(config.cache.statuses),
      {
        evicted: () => metrics.cacheEvictions.inc(),
      },
    );
    this.cache = cache;
    metrics.collectors.push(() => {
      metrics.cacheBytes.set(cache.bytes);
      metrics.cacheEntries.set(cache.entries);
    });
    // Fallbacks of type upstream call another upstream through its own policies, minus its
    // fallbacks (so two upstreams naming each other cannot loop).
    const fallbackPipelines = new Map<string, { handler: Handler; upstream: Upstream; route: RouteModel }>();
    const pipelineOf = (name: string) => {
      let p = fallbackPipelines.get(name);
      if (!p) {
        const upstream = this.upstreams.get(name) as Upstream;
        const route = fallbackRoute(upstream.model);
        p = {
          handler: buildPipeline(route, this.policies.get(name) as UpstreamPolicies, services, {
            withFallback: false,
          }),
          upstream,
          route,
        };
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
    };
    for (const [name, model] of Object.entries(config.upstreams)) {
      this.upstreams.set(name, new Upstream(model));
      this.policies.set(name, new UpstreamPolicies(model, services, fallbackContext));
    }
    const teeFor = (ctx: RequestContext, head: ResponseHead) => {
      if (ctx.method !== 'GET' || !this.policies.get(ctx.upstream.name)?.caches) return undefined;
      if (!cache.cacheable(head.status, head.rawHeaders)) return undefined;
      const key = (this.policies.get(ctx.upstream.name) as UpstreamPolicies).chain.cacheKey(ctx);
      return (headers: readonly string[]) => cache.tee(key, head.status, headers, () => this.clock.wall());
    };
    for (const l of config.listeners) {
      const pipelines = new Map<RouteModel, Handler>();
      for (const r of l.routes)
        pipelines.set(r, buildPipeline(r, this.policies.get(r.upstream) as UpstreamPolicies, services));
      const handler = new ProxyHandler({
        listener: l,
        upstreams: this.upstreams,
        pipelines,
        metrics,
        logger,
        accessLog: config.logging.access_log,
        accessLogHeaders: config.logging.access_log_headers.map((h) => h.toLowerCase()),
        draining: () => this.phase === 'draining',
        teeFor,
      });
      const listener = await DataListener.start(l, handler);
      this.listeners.push(listener);
      logger.info(
        { listener: l.name, host: l.host, port: listener.port, routes: l.routes.length },
        'listener bound',
      );
    }
    this.phase = 'serving';
    metrics.ready.set(1);
    logger.info({ admin: `${config.admin.host}:${this.admin.port}` }, 'breakwater ready');
  }

  readiness(): { ready: boolean; reason: string } {
    switch (this.phase) {
      case 'serving':
        return { ready: true, reason: 'config loaded, listeners bound' };
      case 'starting':
        return { ready: false, reason: 'starting' };
      default:
        return { ready: false, reason: 'draining' };
    }
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
    const started = Date.now();
    this.phase = 'draining';
    this.metrics.ready.set(0);
    this.logger.info(
      { drain_timeout_ms: drainTimeout, delay_ms: this.config.shutdown.delay },
      'shutdown: draining',
    );
    if (this.config.shutdown.delay > 0 && drainTimeout > 0) await sleep(this.config.shutdown.delay);
    const closing = Promise.all(this.listeners.map((l) => l.close()));
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
      for (const l of this.listeners) l.forceClose();
      await closing;
    }
    await Promise.all([...this.upstreams.values()].map((u) => u.destroy()));
    await this.admin?.close();
    this.phase = 'stopped';
    this.logger.info({ took_ms: Date.now() - started }, 'shutdown: done');
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
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
