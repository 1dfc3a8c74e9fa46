/**
 * An upstream: its endpoints, a bounded keep-alive connection pool per endpoint (undici Pool), each
 * endpoint's health (active checks and passive outlier ejection), and the choice of endpoint for
 * each attempt:
 *
 *   1. the endpoints that are not unhealthy and not ejected (all of them in panic mode when none is);
 *   2. the lowest priority level whose healthy share is at least `failover_threshold` (else the
 *      lowest level with any healthy endpoint);
 *   3. a group by `group_weights` (blue-green), among the groups present there;
 *   4. one endpoint by the balancer (round_robin, least_conn, random, p2c_ewma), preferring one a
 *      retry has not tried yet.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import type { buildConnector as Connector, Dispatcher, Pool as UndiciPool } from 'undici';
import { type Clock, systemClock, systemRandom } from '../clock.js';
import type { EndpointModel, TlsModel, UpstreamModel } from '../config/resolve.js';
import { type Balancer, createBalancer, PeakEwma } from './balancer.js';
import { StreamingShare } from './streaming-share.js';
import { buildConnector, Pool, request } from './undici-parts.js';

export type Health = 'unknown' | 'healthy' | 'unhealthy';

export interface EndpointEvents {
  healthChanged(e: Endpoint, health: Health): void;
  ejected(e: Endpoint, forMs: number): void;
  endpointsChanged?(urls: readonly string[]): void;
  resolveFailed?(url: string, err: Error): void;
}

/** One secure context per TLS model, built once: Node would otherwise parse the CA list at every connect. */
const secureContexts = new WeakMap<TlsModel, SecureContext>();

export function secureContextOf(t: TlsModel): SecureContext {
  let ctx = secureContexts.get(t);
  if (!ctx) {
    ctx = createSecureContext({
      // Added to the default roots, not replacing them (a `ca` option alone would replace them).
      ...(t.ca ? { ca: [...rootCertificates, t.ca] } : {}),
      ...(t.cert && t.key ? { cert: t.cert, key: t.key } : {}),
      ...(t.minVersion ? { minVersion: t.minVersion } : {}),
    });
    secureContexts.set(t, ctx);
  }
  return ctx;
}

/**
 * The name an https endpoint's certificate is checked against, also sent as SNI: `tls.server_name`,
 * else the host name of the configured URL (an endpoint DNS expanded to an address keeps its name).
 * Undefined for an IP address (the certificate must then hold that IP; SNI cannot carry one) and for
 * http.
 */
export function tlsNameOf(model: EndpointModel, upstream: UpstreamModel): string | undefined {
  if (!model.origin.startsWith('https:')) return undefined;
  if (upstream.tls?.serverName !== undefined) return upstream.tls.serverName;
  const host = new URL(model.source ?? model.url).hostname.replace(/^\[|\]$/g, '');
  return isIP(host) === 0 ? host : undefined;
}

/**
 * The undici Pool options of one endpoint: limits, timeouts and, for https, TLS. Every pool option
 * is decided here (a protocol option such as `allowH2` belongs here too; for https it must also go
 * into the connector's options, which undici no longer builds itself).
 */
export function poolOptions(model: EndpointModel, upstream: UpstreamModel): UndiciPool.Options {
  const options: UndiciPool.Options = {
    connections: upstream.maxConnections,
    pipelining: 1,
    keepAliveTimeout: upstream.keepaliveTimeout,
    keepAliveMaxTimeout: upstream.keepaliveTimeout,
    connect: { timeout: upstream.timeouts.connect },
    headersTimeout: 0,
    bodyTimeout: upstream.timeouts.body,
    strictContentLength: true,
  };
  const h2 = upstream.protocol !== 'http1';
  if (h2) {
    // One connection carries many requests at once: undici's pipelining is its stream limit.
    options.allowH2 = true;
    options.pipelining = upstream.maxConcurrentStreams;
    options.maxConcurrentStreams = upstream.maxConcurrentStreams;
  }
  if (!model.origin.startsWith('https:')) {
    // undici's connector takes `useH2c` (HTTP/2 with prior knowledge); its types do not list it yet.
    if (upstream.protocol === 'h2c')
      options.connect = { timeout: upstream.timeouts.connect, useH2c: true } as Connector.BuildOptions;
    return options;
  }
  const t = upstream.tls;
  const connector = buildConnector({
    timeout: upstream.timeouts.connect,
    allowH2: h2,
    rejectUnauthorized: !t?.insecureSkipVerify,
    ...(t ? { secureContext: secureContextOf(t) } : {}),
  });
  // undici would take the TLS name from each request's Host header (with host_header: preserve, the
  // client's): the connector always uses the endpoint's.
  const servername = tlsNameOf(model, upstream);
  return { ...options, connect: (opts, callback) => connector({ ...opts, servername }, callback) };
}

export class Endpoint {
  readonly pool: UndiciPool;
  /**
   * Sent as `servername` with every request to this pool, the same value each time: undici reconnects
   * when a request's name differs from the connection's, and would otherwise derive one from each
   * Host header. The pool's connector decides the real TLS name (`tlsNameOf`).
   */
  readonly servername: string | undefined;
  /** Attempts in flight to this endpoint. */
  inflight = 0;
  /** Of those, attempts streaming at the client's pace (see StreamingShare). */
  streaming = 0;
  /** The streaming share of this endpoint's upstream (set by the Upstream). */
  share: StreamingShare | undefined;
  readonly weight: number;
  readonly latency: PeakEwma;
  /** From active health checks; `unknown` until the first check (routable, not yet ready). */
  health: Health = 'unknown';
  healthRun = 0;
  /** Passive outlier detection. */
  consecutiveFailures = 0;
  ejections = 0;
  ejectedUntil = 0;

  constructor(
    readonly model: EndpointModel,
    upstream: UpstreamModel,
    now: () => number,
  ) {
    this.weight = model.weight;
    this.latency = new PeakEwma(10_000, now);
    this.pool = new Pool(model.origin, poolOptions(model, upstream));
    this.servername = model.origin.startsWith('https:')
      ? (tlsNameOf(model, upstream) ?? new URL(model.origin).hostname)
      : undefined;
  }

  available(now: number): boolean {
    return this.health !== 'unhealthy' && now >= this.ejectedUntil;
  }
}

/** Resolves a host name to its addresses (dns.lookup with all: true, by default). */
export type Resolver = (host: string) => Promise<string[]>;

const systemResolver: Resolver = async (host) => (await lookup(host, { all: true })).map((a) => a.address);

export class Upstream {
  readonly name: string;
  private eps: readonly Endpoint[];
  private readonly balancer: Balancer<Endpoint>;
  private readonly now: () => number;
  /** Time (DNS refresh, health checks) and randomness (the balancer, health-check jitter). */
  readonly clock: Clock;
  readonly random: () => number;
  private events: EndpointEvents | undefined;
  private checker: HealthChecker | undefined;
  private dnsTimer: unknown;
  /** The DNS refresh under way, if any (see refreshDns). */
  private dnsRefreshing: Promise<void> | undefined;
  private resolver: Resolver = systemResolver;
  /** The share of each endpoint's connections that streaming attempts may hold. */
  readonly share: StreamingShare;

  /** The endpoints now: configured IP addresses, and one per address of each configured host name. */
  get endpoints(): readonly Endpoint[] {
    return this.eps;
  }

  constructor(
    readonly model: UpstreamModel,
    options: {
      clock?: Clock;
      random?: () => number;
      endpoints?: readonly Endpoint[];
      events?: EndpointEvents;
      share?: StreamingShare;
    } = {},
  ) {
    this.name = model.name;
    const clock = options.clock ?? systemClock;
    this.clock = clock;
    this.now = () => clock.now();
    this.random = options.random ?? systemRandom;
    this.events = options.events;
    this.eps = options.endpoints ?? model.endpoints.map((e) => new Endpoint(e, model, this.now));
    this.balancer = createBalancer<Endpoint>(model.loadBalancing, this.random);
    this.share = options.share ?? new StreamingShare(model.streamingLimit, clock);
    this.share.limit = model.streamingLimit;
    for (const e of this.eps) e.share = this.share;
  }

  /** The same endpoints, pools and health under a changed model (a reload that kept them). */
  withModel(model: UpstreamModel): Upstream {
    const next = new Upstream(model, {
      clock: this.clock,
      random: this.random,
      endpoints: this.endpoints,
      events: this.events,
      share: this.share,
    });
    next.checker = this.checker;
    next.checker?.retarget(next);
    next.resolver = this.resolver;
    this.checker = undefined;
    if (this.dnsTimer !== undefined) {
      this.clock.clearTimeout(this.dnsTimer);
      this.dnsTimer = undefined;
      next.scheduleDns(model.dnsRefresh);
    }
    return next;
  }

  /** Picks an endpoint for an attempt; undefined when none is available (and panic is off). */
  pick(avoid?: Endpoint): Endpoint | undefined {
    const now = this.now();
    let candidates = this.endpoints.filter((e) => e.available(now));
    if (candidates.length === 0) {
      if (!this.model.panic) return undefined;
      candidates = [...this.endpoints];
    }
    candidates = this.byPriority(candidates);
    candidates = this.byGroup(candidates);
    return this.balancer.pick(candidates, avoid);
  }

  /**
   * Picks an endpoint for a streaming attempt and takes its place in the streaming share: the
   * balancer's choice when it has room, else another available endpoint that has; 'full' when
   * every available endpoint's share is in use, undefined when none is available.
   */
  pickStreaming(avoid?: Endpoint): Endpoint | 'full' | undefined {
    const first = this.pick(avoid);
    if (first === undefined) return undefined;
    if (this.share.tryTake(first)) return first;
    const now = this.now();
    const roomy = this.endpoints.filter((e) => e !== first && e.available(now) && this.share.hasRoom(e));
    if (roomy.length === 0) return 'full';
    const other = this.balancer.pick(roomy, avoid);
    if (other === undefined || !this.share.tryTake(other)) return 'full';
    return other;
  }

  private byPriority(candidates: Endpoint[]): Endpoint[] {
    const first = candidates[0] as Endpoint;
    if (
      candidates.every((e) => e.model.priority === first.model.priority) &&
      this.endpoints.every((e) => e.model.priority === first.model.priority)
    ) {
      return candidates;
    }
    const levels = [...new Set(this.endpoints.map((e) => e.model.priority))].sort((a, b) => a - b);
    let fallback: Endpoint[] | undefined;
    for (const level of levels) {
      const healthy = candidates.filter((e) => e.model.priority === level);
      if (healthy.length === 0) continue;
      const total = this.endpoints.filter((e) => e.model.priority === level).length;
      if (healthy.length / total >= this.model.failoverThreshold) return healthy;
      fallback ??= healthy;
    }
    return fallback ?? candidates;
  }

  private byGroup(candidates: Endpoint[]): Endpoint[] {
    const weights = this.model.groupWeights;
    if (!weights) return candidates;
    const groups = new Map<string, number>();
    for (const e of candidates) {
      const g = e.model.group;
      if (g !== undefined && (weights[g] ?? 0) > 0) groups.set(g, weights[g] ?? 0);
    }
    if (groups.size === 0) return candidates;
    let total = 0;
    for (const w of groups.values()) total += w;
    let r = this.random() * total;
    for (const [g, w] of groups) {
      r -= w;
      if (r < 0) return candidates.filter((e) => e.model.group === g);
    }
    return candidates;
  }

  /** Passive outlier detection: one attempt's result on `e`. */
  recordResult(e: Endpoint, failed: boolean, latencyMs: number | undefined): void {
    if (latencyMs !== undefined) e.latency.observe(latencyMs);
    const od = this.model.outlierDetection;
    if (!od) return;
    if (!failed) {
      e.consecutiveFailures = 0;
      return;
    }
    e.consecutiveFailures++;
    if (e.consecutiveFailures < od.consecutiveFailures) return;
    const now = this.now();
    const ejectedNow = this.endpoints.filter((x) => now < x.ejectedUntil).length;
    if ((ejectedNow + 1) / this.endpoints.length > od.maxEjectionPercent) return;
    e.ejections++;
    const forMs = Math.min(od.baseEjectionTime * e.ejections, od.maxEjectionTime);
    e.ejectedUntil = now + forMs;
    e.consecutiveFailures = 0;
    this.events?.ejected(e, forMs);
  }

  /** Whether at least one endpoint passed its health check (readiness gating). */
  hasHealthyEndpoint(): boolean {
    return this.endpoints.some((e) => e.health === 'healthy');
  }

  /** Starts active health checks, if the model asks for them. */
  startHealthChecks(events: EndpointEvents, resolver?: Resolver): void {
    this.events = events;
    if (resolver) this.resolver = resolver;
    if (this.model.healthCheck && !this.checker) this.checker = new HealthChecker(this, events);
    const named = this.model.endpoints.some(
      (e) => isIP(new URL(e.url).hostname.replace(/^\[|\]$/g, '')) === 0,
    );
    if (!this.dnsTimer && this.model.dnsRefresh > 0 && named) this.scheduleDns(0);
  }

  private scheduleDns(delay: number): void {
    this.dnsTimer = this.clock.setTimeout(
      () => {
        void this.refreshDns().finally(() => {
          if (this.dnsTimer !== undefined) this.scheduleDns(this.model.dnsRefresh);
        });
      },
      delay,
      true,
    );
  }

  /**
   * Re-resolves the endpoints' host names: one endpoint per address (a Kubernetes headless service
   * name gives one per pod), keeping the endpoints, pools and health of addresses that stay. A name
   * that fails to resolve keeps the endpoints it had. A refresh asked for while one is under way
   * joins it: two at once would each make their own endpoint for a new address from the set they
   * started with, and the later would replace the earlier's, pool, connections and health included.
   */
  refreshDns(): Promise<void> {
    this.dnsRefreshing ??= this.resolveEndpoints().finally(() => {
      this.dnsRefreshing = undefined;
    });
    return this.dnsRefreshing;
  }

  private async resolveEndpoints(): Promise<void> {
    const next: Endpoint[] = [];
    for (const m of this.model.endpoints) {
      const u = new URL(m.url);
      const host = u.hostname.replace(/^\[|\]$/g, '');
      if (isIP(host) !== 0) {
        next.push(...this.eps.filter((e) => e.model.url === m.url));
        continue;
      }
      const current = this.eps.filter((e) => e.model.source === m.url || e.model.url === m.url);
      let addresses: string[];
      try {
        addresses = [...new Set(await this.resolver(host))];
      } catch (err) {
        this.events?.resolveFailed?.(m.url, err as Error);
        next.push(...current);
        continue;
      }
      if (addresses.length === 0) {
        next.push(...current);
        continue;
      }
      const port = u.port || (u.protocol === 'https:' ? '443' : '80');
      for (const address of addresses) {
        const origin = `${u.protocol}//${isIP(address) === 6 ? `[${address}]` : address}:${port}`;
        const kept = current.find((e) => e.model.origin === origin && e.model.source === m.url);
        next.push(kept ?? new Endpoint({ ...m, url: origin, origin, source: m.url }, this.model, this.now));
      }
    }
    const removed = this.eps.filter((e) => !next.includes(e));
    const added = next.filter((e) => !this.eps.includes(e));
    if (removed.length === 0 && added.length === 0) return;
    this.eps = next;
    for (const e of added) {
      e.share = this.share;
      this.checker?.track(e);
    }
    for (const e of removed) void e.pool.close();
    this.events?.endpointsChanged?.(next.map((e) => e.model.url));
  }

  private stopTimers(): void {
    this.checker?.stop();
    if (this.dnsTimer !== undefined) this.clock.clearTimeout(this.dnsTimer);
    this.dnsTimer = undefined;
  }

  /** Host header for an attempt to `ep`. */
  hostFor(ep: Endpoint, clientHost: string | undefined): string {
    const hh = this.model.hostHeader;
    if (hh.kind === 'endpoint') return ep.model.authority;
    if (hh.kind === 'preserve') return clientHost ?? ep.model.authority;
    return hh.value;
  }

  /** Closes pools gracefully: requests in flight finish. */
  async close(): Promise<void> {
    this.stopTimers();
    await Promise.all(this.endpoints.map((e) => e.pool.close()));
  }

  async destroy(): Promise<void> {
    this.stopTimers();
    await Promise.all(this.endpoints.map((e) => e.pool.destroy()));
  }
}

/** Active health checks: GET `path` on every endpoint every `interval` (with jitter). */
class HealthChecker {
  private readonly timers = new Set<unknown>();
  private stopped = false;

  constructor(
    private upstream: Upstream,
    private readonly events: EndpointEvents,
  ) {
    for (const e of upstream.endpoints) void this.check(e);
  }

  /** A reload kept the endpoints under a new Upstream object. */
  retarget(upstream: Upstream): void {
    this.upstream = upstream;
  }

  /** Starts checking an endpoint that DNS added. */
  track(e: Endpoint): void {
    void this.check(e);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) this.upstream.clock.clearTimeout(t);
    this.timers.clear();
  }

  private schedule(e: Endpoint): void {
    const hc = this.upstream.model.healthCheck;
    if (!hc || this.stopped) return;
    const spread = hc.interval * hc.jitter * (this.upstream.random() * 2 - 1);
    const clock = this.upstream.clock;
    const t = clock.setTimeout(
      () => {
        this.timers.delete(t);
        void this.check(e);
      },
      Math.max(10, hc.interval + spread),
      true,
    );
    this.timers.add(t);
  }

  private async check(e: Endpoint): Promise<void> {
    const hc = this.upstream.model.healthCheck;
    // An endpoint DNS removed is no longer checked.
    if (!hc || this.stopped || !this.upstream.endpoints.includes(e)) return;
    let ok = false;
    try {
      const options: Dispatcher.RequestOptions & { servername?: string | undefined } = {
        path: hc.path,
        method: 'GET',
        headers: { host: e.model.authority, 'user-agent': 'breakwater-health-check' },
        headersTimeout: hc.timeout,
        bodyTimeout: hc.timeout,
        signal: AbortSignal.timeout(hc.timeout),
        servername: e.servername,
      };
      const res = await request(e.pool, options);
      await res.body.dump();
      ok = hc.expectedStatuses
        ? hc.expectedStatuses.has(res.statusCode)
        : res.statusCode >= 200 && res.statusCode < 400;
    } catch {
      ok = false;
    }
    if (this.stopped) return;
    const before = e.health;
    if (ok) {
      e.healthRun = e.healthRun > 0 ? e.healthRun + 1 : 1;
      // The first pass makes an unknown endpoint healthy at once; an unhealthy one needs healthy_threshold.
      if (before === 'unknown' || (before === 'unhealthy' && e.healthRun >= hc.healthyThreshold))
        e.health = 'healthy';
    } else {
      e.healthRun = e.healthRun < 0 ? e.healthRun - 1 : -1;
      if (before !== 'unhealthy' && -e.healthRun >= (before === 'unknown' ? 1 : hc.unhealthyThreshold))
        e.health = 'unhealthy';
    }
    if (e.health !== before) this.events.healthChanged(e, e.health);
    this.schedule(e);
  }
}
