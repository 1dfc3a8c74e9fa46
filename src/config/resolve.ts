/**
 * Parsed YAML -> the model the runtime uses: policy blocks layered (built-in defaults <- `resilience`
 * <- upstream <- route), names resolved, files read, everything frozen. After this, nothing on the
 * request path re-checks or re-reads configuration.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, resolve as resolvePath } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { RETRIABLE_GRPC } from '../attempt/grpc.js';
import { type TrustCheck, trustCheck } from '../listener/client-address.js';
import { type SagaModel, sagasOf } from '../sagas/model.js';
import { DEFAULTS } from './defaults.js';
import { flattenFallbacks } from './inline-fallbacks.js';
import type {
  BulkheadInput,
  CircuitBreakerInput,
  Config,
  DegradationInput,
  RateLimiterInput,
  RedisStoreInput,
  RetryInput,
  RouteInput,
  TlsInput,
  UpstreamInput,
} from './schema.js';

export type RetryOutcome =
  | 'connect-failure'
  | 'reset'
  | 'timeout'
  | '5xx'
  | 'gateway-error'
  | (typeof RETRIABLE_GRPC)[number]
  | number;
export type FailureOutcome = RetryOutcome | '4xx';

export interface Timeouts {
  /** Per attempt, until response headers (ms). */
  readonly attempt: number;
  /** Whole request including retries and waits (ms). */
  readonly request: number;
  readonly connect: number;
  /** Longest silence while a response body streams (ms). */
  readonly body: number;
}

/** WebSocket pass-through on a route (layered like the timeouts: resilience <- upstream <- route). */
export interface WebSocketPolicy {
  /** Upgrades are passed through (false: refused with 403). */
  readonly enabled: boolean;
  /** No bytes either way for this long closes the tunnel (ms); 0: never. */
  readonly idleTimeout: number;
  /** The tunnel is closed this long after its handshake (ms); 0: no limit. */
  readonly maxDuration: number;
}

export interface RetryPolicy {
  readonly enabled: boolean;
  readonly maxAttempts: number;
  readonly initialWait: number;
  readonly maxWait: number;
  readonly multiplier: number;
  readonly jitter: 'full' | 'equal' | 'none';
  readonly retryOn: readonly RetryOutcome[];
  readonly maxBodyBytes: number;
  readonly retryNonIdempotent: boolean;
  /** `retry.methods`: only these are retried once the request may have been processed (undefined: no such limit). */
  readonly methods: ReadonlySet<string> | undefined;
  readonly attemptsHeader: boolean;
  readonly budget: { readonly ratio: number; readonly minPerSecond: number; readonly window: number };
}

export interface CircuitBreakerPolicy {
  readonly failureThreshold: number;
  readonly resetTimeout: number;
  readonly halfOpenRequests: number;
  readonly successThreshold: number;
  readonly window: { readonly type: 'count' | 'time'; readonly size: number };
  readonly minimumCalls: number;
  readonly failureRateThreshold: number | undefined;
  readonly slowCallDuration: number | undefined;
  readonly slowCallRateThreshold: number | undefined;
  readonly failureOn: readonly FailureOutcome[];
}

export interface RateLimiterPolicy {
  readonly ratePerSecond: number;
  readonly burst: number;
  readonly mode: 'reject' | 'shape';
  readonly maxDelay: number;
  readonly maxQueue: number;
  readonly key:
    | { readonly kind: 'none' }
    | { readonly kind: 'client_ip' }
    | { readonly kind: 'header'; readonly header: string };
  readonly maxKeys: number;
  /** local: this process's bucket; global: shared through stores.redis. */
  readonly scope: 'local' | 'global';
  /** scope global, Redis unreachable: the local share, no limit, or 503. */
  readonly onStoreError: 'local' | 'allow' | 'deny';
  /** scope global: replicas sharing the limit (the local share is the limit divided by this). */
  readonly replicas: number;
}

export interface BulkheadPolicy {
  readonly maxConcurrent: number;
  readonly maxQueue: number;
  readonly queueTimeout: number;
}

export interface EndpointModel {
  readonly url: string;
  /** `http://host:port` or `https://host:port` (default port filled in), the key of the connection pool. */
  readonly origin: string;
  readonly authority: string;
  readonly weight: number;
  readonly priority: number;
  readonly group: string | undefined;
  /** For an endpoint found by resolving a host name: the configured URL it came from. */
  readonly source?: string;
}

export interface HealthCheckPolicy {
  readonly path: string;
  readonly interval: number;
  readonly timeout: number;
  readonly healthyThreshold: number;
  readonly unhealthyThreshold: number;
  readonly expectedStatuses: ReadonlySet<number> | undefined;
  readonly jitter: number;
}

export interface OutlierPolicy {
  readonly consecutiveFailures: number;
  readonly baseEjectionTime: number;
  readonly maxEjectionTime: number;
  readonly maxEjectionPercent: number;
}

/**
 * TLS towards an upstream's https endpoints. File contents are read at load (and at every reload)
 * and kept as bytes: a reload compares them, so a changed file makes new connection pools.
 */
export interface TlsModel {
  /** PEM CA certificates trusted in addition to Node's default roots (`ca_file`). */
  readonly ca: Buffer | undefined;
  /** PEM client certificate (chain) and its key, for mutual TLS. */
  readonly cert: Buffer | undefined;
  readonly key: Buffer | undefined;
  /** SNI and the name the certificate must match, instead of the endpoint URL's host. */
  readonly serverName: string | undefined;
  /** Accept any certificate (warned about at every load). */
  readonly insecureSkipVerify: boolean;
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
}

export interface UpstreamModel {
  readonly name: string;
  readonly endpoints: readonly EndpointModel[];
  readonly hostHeader:
    | { readonly kind: 'endpoint' }
    | { readonly kind: 'preserve' }
    | { readonly kind: 'literal'; readonly value: string };
  readonly maxConnections: number;
  readonly keepaliveTimeout: number;
  readonly loadBalancing: 'round_robin' | 'least_conn' | 'random' | 'p2c_ewma';
  readonly groupWeights: Readonly<Record<string, number>> | undefined;
  readonly failoverThreshold: number;
  readonly panic: boolean;
  /** Re-resolution interval of endpoint host names (ms); 0: off. */
  readonly dnsRefresh: number;
  readonly healthCheck: HealthCheckPolicy | undefined;
  readonly outlierDetection: OutlierPolicy | undefined;
  readonly timeouts: Timeouts;
  readonly retry: RetryPolicy;
  readonly circuitBreaker: CircuitBreakerPolicy | undefined;
  readonly rateLimiter: RateLimiterPolicy | undefined;
  readonly bulkhead: BulkheadPolicy | undefined;
  readonly fallback: string | undefined;
  /**
   * `idempotency_keys`: whether the upstream deduplicates requests by their Idempotency-Key itself
   * (then a keyed request may be retried after it may have been processed).
   */
  readonly idempotencyKeys: 'honored' | 'ignored';
  /** Set when the upstream has a `tls` block (its endpoints are then all https). */
  readonly tls: TlsModel | undefined;
  /** HTTP version spoken to the endpoints. */
  readonly protocol: 'http1' | 'h2' | 'h2c';
  /** HTTP/2: streams at once per connection. */
  readonly maxConcurrentStreams: number;
  /**
   * Requests streaming at the client's pace (unbuffered uploads and responses) that one endpoint
   * may carry at once: `streaming_connections` of its connections (HTTP/2: of its streams), at least 1.
   */
  readonly streamingLimit: number;
}

export interface RouteModel {
  readonly name: string;
  readonly listener: string;
  readonly match: {
    readonly pathPrefix: string | undefined;
    readonly host: string | undefined;
    /** `*.example.com` -> `.example.com`. */
    readonly hostSuffix: string | undefined;
    readonly methods: ReadonlySet<string> | undefined;
    readonly headers: readonly (readonly [string, string])[];
  };
  readonly upstream: string;
  readonly stripPrefix: string | undefined;
  readonly timeouts: Timeouts;
  readonly retry: RetryPolicy;
  readonly idempotency: IdempotencyPolicy | undefined;
  /** Request bodies larger than this get 413 (0: no limit). */
  readonly maxBodyBytes: number;
  /** The listener's trusted proxies (undefined: none). */
  readonly trust: TrustCheck | undefined;
  readonly websocket: WebSocketPolicy;
  /** Request bodies are read whole (memory, then a temporary file) before the pipeline. */
  readonly requestBuffering: boolean;
  /** A response the client falls behind on is read on into memory, then a temporary file. */
  readonly responseBuffering: boolean;
  /** TRACE is forwarded (else 405). */
  readonly allowTrace: boolean;
  /** Deferred delivery of writes the upstream cannot take now (undefined: off). */
  readonly deferred: DeferredPolicy | undefined;
}

/** A route's `deferred:` block, defaults applied. */
export interface DeferredPolicy {
  /** connect_failure, breaker_open, timeout_before_send, bulkhead_full, rate_limited. */
  readonly on: ReadonlySet<string>;
  /** 5xx statuses the upstream answered that defer the request. */
  readonly onStatus: ReadonlySet<number>;
  readonly methods: ReadonlySet<string>;
  readonly requireIdempotencyKey: boolean;
  /** ms */
  readonly maxAge: number;
  /** 0: no limit. */
  readonly maxAttempts: number;
  /** ms before each delivery attempt; the last repeats. */
  readonly schedule: readonly number[];
  /** Lower-case header name, or undefined (no ordering). */
  readonly orderingKey: string | undefined;
}

/** `saga_store`: where the saga log lives. */
export interface SagaStoreModel {
  readonly backend: 'embedded' | 'redis';
  /** ms a replica owns a saga in flight without renewing it (redis). */
  readonly lease: number;
}

export interface DeferredStoreModel {
  readonly maxItems: number;
  readonly maxBytes: number;
  readonly retention: number;
  readonly concurrency: number;
  /** embedded: LMDB in data_dir; redis: a Redis Stream on stores.redis shared by the replicas. */
  readonly backend: 'embedded' | 'redis';
  /** backend redis: ms a claimed item stays its claimer's without renewal. */
  readonly lease: number;
}

export interface IdempotencyPolicy {
  readonly methods: ReadonlySet<string>;
  readonly required: boolean;
  readonly ttl: number;
  readonly maxBodyBytes: number;
  readonly keyScope:
    | { readonly kind: 'client_ip' }
    | { readonly kind: 'global' }
    | { readonly kind: 'header'; readonly header: string };
  readonly conflict: 'reject' | 'wait';
  readonly storeServerErrors: boolean;
  /** memory: this process; redis: stores.redis, shared by the replicas. */
  readonly store: 'memory' | 'redis';
  /** store redis, Redis unreachable: 503 for requests with a key, or forward them unprotected. */
  readonly onStoreError: 'reject' | 'forward';
}

/** `stores.redis`: where and how to reach Redis (credentials kept out of `address`). */
export interface RedisStoreModel {
  readonly host: string;
  readonly port: number;
  readonly db: number;
  readonly username: string | undefined;
  readonly password: string | undefined;
  /** Set for rediss:// or a tls block. */
  readonly tls: TlsModel | undefined;
  /** host:port/db with the scheme, for logs, /state and metrics (no credentials). */
  readonly address: string;
  readonly keyPrefix: string;
  readonly commandTimeout: number;
  readonly connectTimeout: number;
  readonly breaker: { readonly failureThreshold: number; readonly resetTimeout: number };
}

export interface ListenerLimits {
  readonly maxHeaderBytes: number;
  readonly maxHeaders: number;
  readonly maxBodyBytes: number;
  readonly headerTimeout: number;
  /** Longest silence while a request body arrives (ms, 0: none). */
  readonly bodyIdleTimeout: number;
  /** Request bodies up to this size are read whole before the pipeline (0: none). */
  readonly bodyBufferBytes: number;
  readonly keepaliveTimeout: number;
  readonly maxRequestsPerConnection: number;
  readonly maxConnections: number;
  /** A client that accepts no byte of its response this long is cut (ms, 0: none). */
  readonly sendTimeout: number;
}

/** Temporary files and memory for buffered bodies (the `buffering` block). */
export interface BufferingModel {
  /** Where breakwater makes its directory of temporary files. */
  readonly tempDir: string;
  /** Per response, memory for what the client has not taken yet. */
  readonly responseBufferBytes: number;
  /** Per response, the temporary file at most (0: none). */
  readonly maxTempFileBytes: number;
  /** Lower-case name of the response header whose value `no` turns buffering off. */
  readonly optOutHeader: string;
}

export interface ListenerModel {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  /** h2c: HTTP/2 with prior knowledge alongside HTTP/1.1. */
  readonly protocol: 'http1' | 'h2c';
  readonly limits: ListenerLimits;
  /** CIDR blocks whose X-Forwarded-For is believed. */
  readonly trustedProxies: readonly string[];
  readonly routes: readonly RouteModel[];
}

/** What makes a fallback answer (a fallback's `on`). */
export type FallbackTrigger =
  | 'breaker_open'
  | 'timeout'
  | 'error'
  | 'rate_limited'
  | 'bulkhead_full'
  | 'degraded';

interface FallbackCommon {
  /** The triggers it answers (only the head of a chain's list is read). */
  readonly on: readonly FallbackTrigger[];
  /** `then`: the fallback tried when this one cannot serve (a name; not called `then`, which would make the model a thenable). */
  readonly next: string | undefined;
}

/** A fallback, named or written in place (then named after its place: `payments/fallback`). */
export type FallbackModel =
  | (FallbackCommon & {
      readonly type: 'static_response';
      readonly status: number;
      readonly headers: Readonly<Record<string, string>>;
      /** `body`, or the bytes of `body_file` read at load. */
      readonly body: Buffer;
    })
  | (FallbackCommon & {
      readonly type: 'cache';
      /** The oldest stored response served (ms). */
      readonly maxStale: number;
      /** Request headers (lower case) that are part of the cache key. */
      readonly vary: readonly string[];
    })
  | (FallbackCommon & { readonly type: 'upstream'; readonly upstream: string });

/** A degradation condition, defaults applied (a latency threshold in ms). */
export type DegradationCondition =
  | { readonly type: 'latency'; readonly threshold: number; readonly quantile: number }
  | { readonly type: 'error_rate'; readonly threshold: number }
  | { readonly type: 'availability'; readonly threshold: number };

/** `degradation`, defaults applied; undefined when absent or `enabled: false`. */
export interface DegradationModel {
  /** ms */
  readonly window: number;
  readonly minimumRequests: number;
  /** ms */
  readonly recovery: number;
  readonly probeRatio: number;
  /** The services in the order written (the first entry of an upstream is the one used). */
  readonly services: readonly {
    readonly name: string;
    /** A fallback name, or static_response / cache_only. */
    readonly fallback: string;
    readonly conditions: readonly DegradationCondition[];
  }[];
}

export interface ResolvedConfig {
  readonly file: string;
  readonly listeners: readonly ListenerModel[];
  readonly admin: {
    readonly host: string;
    readonly port: number;
    /** The environment variable holding the admin bearer token (`token_env`). */
    readonly tokenEnv: string;
  };
  readonly upstreams: Readonly<Record<string, UpstreamModel>>;
  readonly fallbacks: Readonly<Record<string, FallbackModel>>;
  readonly degradation: DegradationModel | undefined;
  readonly cache: {
    readonly maxBytes: number;
    readonly maxEntryBytes: number;
    readonly statuses: readonly number[];
  };
  readonly logging: {
    readonly level: Config['logging']['level'];
    readonly accessLog: boolean;
    /** Lower case. */
    readonly accessLogHeaders: readonly string[];
  };
  /** ms */
  readonly shutdown: { readonly delay: number; readonly drainTimeout: number };
  readonly readiness: { readonly requireUpstreams: readonly string[] };
  /** Shared stores (fleet mode). */
  readonly stores: { readonly redis: RedisStoreModel | undefined };
  readonly buffering: BufferingModel;
  /**
   * Where the embedded store lives (absolute): `data_dir`, else $BREAKWATER_DATA_DIR, else
   * breakwater-data beside the config file. Opened only by a feature that needs it.
   */
  readonly dataDir: string;
  /** `sagas.<name>`, templates compiled (empty: no saga, and the embedded store is never opened). */
  readonly sagas: Readonly<Record<string, SagaModel>>;
  /** Caps and retention of the deferred-delivery queue (in the embedded store). */
  readonly deferredStore: DeferredStoreModel;
  readonly sagaStore: SagaStoreModel;
  /** Which fallback each upstream uses, from `upstreams.<n>.fallback` or `resilience.fallback.services`. */
  readonly fallbackOf: Readonly<Record<string, string>>;
}

export { DEFAULTS };

export interface ResolveProblem {
  readonly path: (string | number)[];
  readonly message: string;
}

function pick<T>(...values: (T | undefined)[]): T | undefined {
  for (const v of values) if (v !== undefined) return v;
  return undefined;
}

function timeoutsOf(
  layers: readonly (
    | { timeout?: number; request_timeout?: number; connect_timeout?: number; body_timeout?: number }
    | undefined
  )[],
): Timeouts {
  const get = (k: 'timeout' | 'request_timeout' | 'connect_timeout' | 'body_timeout') =>
    pick(...layers.map((l) => l?.[k]));
  return {
    attempt: get('timeout') ?? DEFAULTS.timeouts.attempt,
    request: get('request_timeout') ?? Math.max(DEFAULTS.timeouts.request, get('timeout') ?? 0),
    connect: get('connect_timeout') ?? DEFAULTS.timeouts.connect,
    body: get('body_timeout') ?? DEFAULTS.timeouts.body,
  };
}

/** `layers` first wins (route, upstream, resilience), as for the timeouts. */
function websocketOf(
  enabled: boolean | undefined,
  layers: readonly ({ websocket_idle_timeout?: number; websocket_max_duration?: number } | undefined)[],
): WebSocketPolicy {
  const d = DEFAULTS.websocket;
  return {
    enabled: enabled ?? d.enabled,
    idleTimeout: pick(...layers.map((l) => l?.websocket_idle_timeout)) ?? d.idleTimeout,
    maxDuration: pick(...layers.map((l) => l?.websocket_max_duration)) ?? d.maxDuration,
  };
}

function methodsOf(methods: readonly string[] | undefined): ReadonlySet<string> | undefined {
  return methods === undefined ? undefined : new Set(methods);
}

/** Layers later in the list win (route over upstream over resilience). */
function retryOf(layers: readonly (RetryInput | undefined)[]): RetryPolicy {
  const ordered = [...layers].reverse();
  const get = <K extends keyof RetryInput>(k: K) => pick(...ordered.map((l) => l?.[k]));
  const budget = (k: 'ratio' | 'min_per_second' | 'window') => pick(...ordered.map((l) => l?.budget?.[k]));
  const d = DEFAULTS.retry;
  return {
    enabled: get('enabled') ?? d.enabled,
    maxAttempts: get('max_attempts') ?? d.maxAttempts,
    initialWait: get('initial_wait') ?? d.initialWait,
    maxWait: get('max_wait') ?? d.maxWait,
    multiplier: get('multiplier') ?? d.multiplier,
    jitter: get('jitter') ?? d.jitter,
    retryOn: get('retry_on') ?? d.retryOn,
    maxBodyBytes: get('max_body_bytes') ?? d.maxBodyBytes,
    retryNonIdempotent: get('retry_non_idempotent') ?? d.retryNonIdempotent,
    methods: methodsOf(get('methods')),
    attemptsHeader: get('attempts_header') ?? d.attemptsHeader,
    budget: {
      ratio: budget('ratio') ?? d.budget.ratio,
      minPerSecond: budget('min_per_second') ?? d.budget.minPerSecond,
      window: budget('window') ?? d.budget.window,
    },
  };
}

function breakerOf(layers: readonly (CircuitBreakerInput | undefined)[]): CircuitBreakerPolicy | undefined {
  const ordered = [...layers].reverse();
  if (ordered.every((l) => l === undefined)) return undefined;
  const get = <K extends keyof CircuitBreakerInput>(k: K) => pick(...ordered.map((l) => l?.[k]));
  if (get('enabled') === false) return undefined;
  const d = DEFAULTS.circuitBreaker;
  const windowType = pick(...ordered.map((l) => l?.window?.type)) ?? d.window.type;
  const windowSize =
    pick(...ordered.map((l) => l?.window?.size)) ??
    (windowType === 'count' ? d.window.size : d.timeWindowSize);
  return {
    failureThreshold: get('failure_threshold') ?? d.failureThreshold,
    resetTimeout: get('reset_timeout') ?? d.resetTimeout,
    halfOpenRequests: get('half_open_requests') ?? d.halfOpenRequests,
    successThreshold: get('success_threshold') ?? d.successThreshold,
    window: { type: windowType, size: windowSize },
    minimumCalls: get('minimum_calls') ?? d.minimumCalls,
    failureRateThreshold: get('failure_rate_threshold'),
    slowCallDuration: get('slow_call_duration'),
    slowCallRateThreshold: get('slow_call_rate_threshold'),
    failureOn: get('failure_on') ?? d.failureOn,
  };
}

function limiterOf(layers: readonly (RateLimiterInput | undefined)[]): RateLimiterPolicy | undefined {
  const ordered = [...layers].reverse();
  if (ordered.every((l) => l === undefined)) return undefined;
  const get = <K extends keyof RateLimiterInput>(k: K) => pick(...ordered.map((l) => l?.[k]));
  const rate = get('max_requests_per_second');
  if (get('enabled') === false || rate === undefined) return undefined;
  const key = get('key');
  const d = DEFAULTS.rateLimiter;
  return {
    ratePerSecond: rate,
    burst: get('burst_limit') ?? Math.max(1, Math.ceil(rate)),
    mode: get('mode') ?? d.mode,
    maxDelay: get('max_delay') ?? d.maxDelay,
    maxQueue: get('max_queue') ?? d.maxQueue,
    key:
      key === undefined
        ? { kind: 'none' }
        : key === 'client_ip'
          ? { kind: 'client_ip' }
          : { kind: 'header', header: key.slice('header:'.length).toLowerCase() },
    maxKeys: get('max_keys') ?? d.maxKeys,
    scope: get('scope') ?? d.scope,
    onStoreError: get('on_store_error') ?? d.onStoreError,
    replicas: get('replicas') ?? d.replicas,
  };
}

function bulkheadOf(layers: readonly (BulkheadInput | undefined)[]): BulkheadPolicy | undefined {
  const ordered = [...layers].reverse();
  if (ordered.every((l) => l === undefined)) return undefined;
  const get = <K extends keyof BulkheadInput>(k: K) => pick(...ordered.map((l) => l?.[k]));
  if (get('enabled') === false) return undefined;
  const d = DEFAULTS.bulkhead;
  return {
    maxConcurrent: get('max_concurrent') ?? d.maxConcurrent,
    maxQueue: get('max_queue') ?? d.maxQueue,
    queueTimeout: get('queue_timeout') ?? d.queueTimeout,
  };
}

function deferredOf(d: RouteInput['deferred']): DeferredPolicy | undefined {
  if (!d) return undefined;
  const dd = DEFAULTS.deferred;
  const on: readonly (string | number)[] = d.on ?? dd.on;
  return {
    on: new Set(on.filter((x): x is string => typeof x === 'string')),
    onStatus: new Set(on.filter((x): x is number => typeof x === 'number')),
    methods: new Set(d.methods ?? dd.methods),
    requireIdempotencyKey: d.require_idempotency_key ?? dd.requireIdempotencyKey,
    maxAge: d.max_age ?? dd.maxAge,
    maxAttempts: d.max_attempts ?? dd.maxAttempts,
    schedule: d.schedule ?? dd.schedule,
    orderingKey:
      d.ordering_key === undefined || d.ordering_key === 'none' ? undefined : d.ordering_key.toLowerCase(),
  };
}

function idempotencyOf(i: RouteInput['idempotency']): IdempotencyPolicy | undefined {
  if (i === undefined || i.enabled === false) return undefined;
  const d = DEFAULTS.idempotency;
  const scope = i.key_scope ?? d.keyScope;
  return {
    methods: new Set(i.methods ?? d.methods),
    required: i.required ?? d.required,
    ttl: i.ttl ?? d.ttl,
    maxBodyBytes: i.max_body_bytes ?? d.maxBodyBytes,
    keyScope:
      scope === 'client_ip' || scope === 'global'
        ? { kind: scope }
        : { kind: 'header', header: scope.slice('header:'.length).toLowerCase() },
    conflict: i.conflict ?? d.conflict,
    storeServerErrors: i.store_server_errors ?? d.storeServerErrors,
    store: i.store ?? d.store,
    onStoreError: i.on_store_error ?? d.onStoreError,
  };
}

function degradationOf(d: DegradationInput | undefined): DegradationModel | undefined {
  const dd = DEFAULTS.degradation;
  if (d === undefined || (d.enabled ?? dd.enabled) === false) return undefined;
  return {
    window: d.window ?? dd.window,
    minimumRequests: d.minimum_requests ?? dd.minimumRequests,
    recovery: d.recovery ?? dd.recovery,
    probeRatio: d.probe_ratio ?? dd.probeRatio,
    services: d.services.map((svc) => ({
      name: svc.name,
      fallback: svc.fallback,
      conditions: svc.conditions.map(
        (c): DegradationCondition =>
          c.type === 'latency'
            ? { type: 'latency', threshold: c.threshold, quantile: c.quantile ?? dd.quantile }
            : { type: c.type, threshold: c.threshold },
      ),
    })),
  };
}

/** `streaming_connections` of an endpoint's connections (HTTP/2: its streams), at least one. */
function streamingLimitOf(u: UpstreamInput): number {
  const connections = u.max_connections ?? DEFAULTS.maxConnections;
  const perConnection =
    (u.protocol ?? DEFAULTS.upstream.protocol) === 'http1'
      ? 1
      : (u.max_concurrent_streams ?? DEFAULTS.upstream.maxConcurrentStreams);
  return Math.max(
    1,
    Math.floor((u.streaming_connections ?? DEFAULTS.streamingShare) * connections * perConnection),
  );
}

function endpointOf(e: UpstreamInput['endpoints'][number]): EndpointModel {
  const url = typeof e === 'string' ? e : e.url;
  const u = new URL(url);
  const port = u.port || (u.protocol === 'https:' ? '443' : '80');
  return {
    url,
    origin: `${u.protocol}//${u.hostname}:${port}`,
    authority: u.port ? `${u.hostname}:${u.port}` : u.hostname,
    weight:
      typeof e === 'string'
        ? DEFAULTS.upstream.endpointWeight
        : (e.weight ?? DEFAULTS.upstream.endpointWeight),
    priority:
      typeof e === 'string'
        ? DEFAULTS.upstream.endpointPriority
        : (e.priority ?? DEFAULTS.upstream.endpointPriority),
    group: typeof e === 'string' ? undefined : e.group,
  };
}

/**
 * Reads the files of a `tls` block (relative to the config file) and checks that they hold what
 * they should, so a bad file is a config error naming its key rather than a failure at the first
 * connection.
 */
async function tlsOf(
  t: TlsInput,
  base: string,
  at: readonly (string | number)[],
  problems: ResolveProblem[],
): Promise<TlsModel> {
  const read = async (key: 'ca_file' | 'cert_file' | 'key_file'): Promise<Buffer | undefined> => {
    const file = t[key];
    if (file === undefined) return undefined;
    try {
      return await readFile(resolvePath(base, file));
    } catch (err) {
      problems.push({ path: [...at, key], message: `cannot read ${file}: ${(err as Error).message}` });
      return undefined;
    }
  };
  const [ca, cert, key] = [await read('ca_file'), await read('cert_file'), await read('key_file')];
  if (ca !== undefined) {
    const problem = pemCertificatesProblem(ca);
    if (problem) problems.push({ path: [...at, 'ca_file'], message: `${t.ca_file}: ${problem}` });
  }
  if (cert !== undefined && key !== undefined) {
    const problem = pemCertificatesProblem(cert);
    if (problem) problems.push({ path: [...at, 'cert_file'], message: `${t.cert_file}: ${problem}` });
    else {
      try {
        createSecureContext({ cert, key });
      } catch (err) {
        problems.push({
          path: [...at, 'key_file'],
          message: `${t.key_file} is not the unencrypted PEM private key of ${t.cert_file}: ${(err as Error).message}`,
        });
      }
    }
  }
  return {
    ca,
    cert,
    key,
    serverName: t.server_name,
    insecureSkipVerify: t.insecure_skip_verify ?? DEFAULTS.tls.insecureSkipVerify,
    minVersion: t.min_version ?? DEFAULTS.tls.minVersion,
  };
}

async function redisStoreOf(
  r: RedisStoreInput,
  base: string,
  problems: ResolveProblem[],
): Promise<RedisStoreModel> {
  const u = new URL(r.url);
  const secure = u.protocol === 'rediss:';
  const port = Number(u.port || 6379);
  const db = Number(u.pathname.replace('/', '') || 0);
  const tls =
    r.tls !== undefined
      ? await tlsOf(r.tls, base, ['stores', 'redis', 'tls'], problems)
      : secure
        ? {
            ca: undefined,
            cert: undefined,
            key: undefined,
            serverName: undefined,
            insecureSkipVerify: false,
            minVersion: DEFAULTS.tls.minVersion,
          }
        : undefined;
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port,
    db,
    // An empty value (an unset ${VAR:-}) means none.
    username: r.username || (u.username ? decodeURIComponent(u.username) : undefined),
    password: r.password || (u.password ? decodeURIComponent(u.password) : undefined),
    tls,
    address: `${tls ? 'rediss' : 'redis'}://${u.host}/${db}`,
    keyPrefix: r.key_prefix,
    commandTimeout: r.command_timeout,
    connectTimeout: r.connect_timeout,
    breaker: { failureThreshold: r.breaker.failure_threshold, resetTimeout: r.breaker.reset_timeout },
  };
}

/** Why `pem` is not a list of PEM certificates, or undefined when it is one. */
function pemCertificatesProblem(pem: Buffer): string | undefined {
  const blocks = pem
    .toString('latin1')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  if (!blocks) return 'no PEM certificate (-----BEGIN CERTIFICATE-----) in it';
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `certificate ${i + 1} cannot be parsed: ${(err as Error).message}`;
    }
  }
  return undefined;
}

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value) && !Buffer.isBuffer(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

export async function resolveConfig(
  cfg: Config,
  file: string,
): Promise<{ config: ResolvedConfig; problems: ResolveProblem[] }> {
  const problems: ResolveProblem[] = [];
  const r = cfg.resilience;
  const base = dirname(resolvePath(file));

  const flat = flattenFallbacks(cfg);
  const upstreams: Record<string, UpstreamModel> = {};
  for (const [name, u] of Object.entries(cfg.upstreams)) {
    const hh = u.host_header ?? DEFAULTS.upstream.hostHeader;
    upstreams[name] = {
      name,
      endpoints: u.endpoints.map(endpointOf),
      hostHeader: hh === 'endpoint' || hh === 'preserve' ? { kind: hh } : { kind: 'literal', value: hh },
      maxConnections: u.max_connections ?? DEFAULTS.maxConnections,
      keepaliveTimeout: u.keepalive_timeout ?? DEFAULTS.keepaliveTimeout,
      loadBalancing: u.load_balancing ?? DEFAULTS.upstream.loadBalancing,
      groupWeights: u.group_weights,
      failoverThreshold: u.failover_threshold ?? DEFAULTS.upstream.failoverThreshold,
      panic: u.panic ?? DEFAULTS.upstream.panic,
      dnsRefresh: u.dns_refresh ?? DEFAULTS.upstream.dnsRefresh,
      healthCheck: u.health_check
        ? {
            path: u.health_check.path ?? DEFAULTS.healthCheck.path,
            interval: u.health_check.interval ?? DEFAULTS.healthCheck.interval,
            timeout: u.health_check.timeout ?? DEFAULTS.healthCheck.timeout,
            healthyThreshold: u.health_check.healthy_threshold ?? DEFAULTS.healthCheck.healthyThreshold,
            unhealthyThreshold: u.health_check.unhealthy_threshold ?? DEFAULTS.healthCheck.unhealthyThreshold,
            expectedStatuses: u.health_check.expected_statuses
              ? new Set(u.health_check.expected_statuses)
              : undefined,
            jitter: u.health_check.jitter ?? DEFAULTS.healthCheck.jitter,
          }
        : undefined,
      outlierDetection: u.outlier_detection
        ? {
            consecutiveFailures:
              u.outlier_detection.consecutive_failures ?? DEFAULTS.outlierDetection.consecutiveFailures,
            baseEjectionTime:
              u.outlier_detection.base_ejection_time ?? DEFAULTS.outlierDetection.baseEjectionTime,
            maxEjectionTime:
              u.outlier_detection.max_ejection_time ?? DEFAULTS.outlierDetection.maxEjectionTime,
            maxEjectionPercent:
              u.outlier_detection.max_ejection_percent ?? DEFAULTS.outlierDetection.maxEjectionPercent,
          }
        : undefined,
      timeouts: timeoutsOf([u, r]),
      retry: retryOf([r.retry, u.retry]),
      circuitBreaker: breakerOf([r.circuit_breaker, u.circuit_breaker]),
      rateLimiter: limiterOf([r.rate_limiter, u.rate_limiter]),
      bulkhead: bulkheadOf([r.bulkhead, u.bulkhead]),
      fallback: flat.upstreamFallback[name] ?? r.fallback?.services?.[name]?.fallback_strategy,
      idempotencyKeys: u.idempotency_keys ?? DEFAULTS.upstream.idempotencyKeys,
      tls: u.tls ? await tlsOf(u.tls, base, ['upstreams', name, 'tls'], problems) : undefined,
      protocol: u.protocol ?? DEFAULTS.upstream.protocol,
      maxConcurrentStreams: u.max_concurrent_streams ?? DEFAULTS.upstream.maxConcurrentStreams,
      streamingLimit: streamingLimitOf(u),
    };
  }

  const listeners: ListenerModel[] = cfg.listeners.map((l, li) => {
    const trustedProxies = l.trusted_proxies ?? DEFAULTS.listener.trustedProxies;
    const dl = DEFAULTS.listener.limits;
    const trust = trustCheck(trustedProxies);
    return {
      name: l.name,
      protocol: l.protocol ?? DEFAULTS.listener.protocol,
      trustedProxies,
      host: l.host ?? DEFAULTS.listener.host,
      port: l.port,
      limits: {
        maxHeaderBytes: l.limits?.max_header_bytes ?? dl.maxHeaderBytes,
        maxHeaders: l.limits?.max_headers ?? dl.maxHeaders,
        maxBodyBytes: l.limits?.max_body_bytes ?? dl.maxBodyBytes,
        headerTimeout: l.limits?.header_timeout ?? dl.headerTimeout,
        bodyIdleTimeout: l.limits?.body_idle_timeout ?? dl.bodyIdleTimeout,
        bodyBufferBytes: l.limits?.body_buffer_bytes ?? dl.bodyBufferBytes,
        keepaliveTimeout: l.limits?.keepalive_timeout ?? dl.keepaliveTimeout,
        maxRequestsPerConnection: l.limits?.max_requests_per_connection ?? dl.maxRequestsPerConnection,
        maxConnections: l.limits?.max_connections ?? dl.maxConnections,
        sendTimeout: l.limits?.send_timeout ?? dl.sendTimeout,
      },
      routes: l.routes.map((rt, ri) => {
        const u = cfg.upstreams[rt.upstream];
        const host = rt.match?.host?.toLowerCase();
        const timeouts = timeoutsOf([rt, u, r]);
        if (timeouts.attempt > timeouts.request) {
          problems.push({
            path: ['listeners', li, 'routes', ri, 'timeout'],
            message: 'timeout (per attempt) must not exceed request_timeout',
          });
        }
        return {
          name: rt.name ?? `${l.name}-${ri}`,
          listener: l.name,
          match: {
            pathPrefix: rt.match?.path_prefix,
            host: host?.startsWith('*.') ? undefined : host,
            hostSuffix: host?.startsWith('*.') ? host.slice(1) : undefined,
            methods: rt.match?.methods ? new Set(rt.match.methods) : undefined,
            headers: Object.entries(rt.match?.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v] as const),
          },
          upstream: rt.upstream,
          stripPrefix:
            rt.strip_prefix === true
              ? rt.match?.path_prefix
              : rt.strip_prefix === false
                ? undefined
                : rt.strip_prefix,
          timeouts,
          retry: retryOf([r.retry, u?.retry, rt.retry]),
          idempotency: idempotencyOf(rt.idempotency),
          maxBodyBytes: rt.max_body_bytes ?? l.limits?.max_body_bytes ?? dl.maxBodyBytes,
          trust,
          websocket: websocketOf(rt.websocket, [rt, u, r]),
          requestBuffering: rt.request_buffering ?? DEFAULTS.route.requestBuffering,
          responseBuffering: rt.response_buffering ?? DEFAULTS.route.responseBuffering,
          allowTrace: rt.allow_trace ?? DEFAULTS.route.allowTrace,
          deferred: deferredOf(rt.deferred),
        };
      }),
    };
  });

  const fallbacks: Record<string, FallbackModel> = {};
  for (const [name, f] of Object.entries(flat.fallbacks)) {
    const common = { on: f.on ?? DEFAULTS.fallback.on, next: f.then };
    if (f.type === 'static_response') {
      let body = Buffer.from(f.body ?? '', 'utf8');
      if (f.body_file !== undefined) {
        try {
          body = await readFile(resolvePath(base, f.body_file));
        } catch (err) {
          problems.push({
            path: [...(flat.paths[name] ?? ['fallbacks', name]), 'body_file'],
            message: `cannot read ${f.body_file}: ${(err as Error).message}`,
          });
        }
      }
      fallbacks[name] = {
        type: 'static_response',
        ...common,
        status: f.status ?? DEFAULTS.fallback.status,
        headers: f.headers ?? {},
        body,
      };
    } else if (f.type === 'cache') {
      fallbacks[name] = {
        type: 'cache',
        ...common,
        maxStale: f.max_stale ?? DEFAULTS.fallback.maxStale,
        vary: (f.vary ?? []).map((h) => h.toLowerCase()),
      };
    } else {
      fallbacks[name] = { type: 'upstream', ...common, upstream: f.upstream };
    }
  }

  const fallbackOf: Record<string, string> = {};
  for (const u of Object.values(upstreams)) if (u.fallback !== undefined) fallbackOf[u.name] = u.fallback;

  const config: ResolvedConfig = {
    file,
    listeners,
    admin: { host: cfg.admin.host, port: cfg.admin.port, tokenEnv: cfg.admin.token_env },
    upstreams,
    fallbacks,
    degradation: degradationOf(cfg.degradation),
    cache: {
      maxBytes: cfg.cache.max_bytes,
      maxEntryBytes: cfg.cache.max_entry_bytes,
      statuses: cfg.cache.statuses,
    },
    logging: {
      level: cfg.logging.level,
      accessLog: cfg.logging.access_log,
      accessLogHeaders: cfg.logging.access_log_headers.map((h) => h.toLowerCase()),
    },
    shutdown: { delay: cfg.shutdown.delay, drainTimeout: cfg.shutdown.drain_timeout },
    readiness: { requireUpstreams: cfg.readiness.require_upstreams },
    stores: { redis: cfg.stores.redis ? await redisStoreOf(cfg.stores.redis, base, problems) : undefined },
    buffering: {
      tempDir: cfg.buffering.temp_dir === undefined ? tmpdir() : resolvePath(base, cfg.buffering.temp_dir),
      responseBufferBytes: cfg.buffering.response_buffer_bytes,
      maxTempFileBytes: cfg.buffering.max_temp_file_bytes,
      optOutHeader: cfg.buffering.opt_out_header.toLowerCase(),
    },
    dataDir: resolvePath(base, cfg.data_dir ?? process.env.BREAKWATER_DATA_DIR ?? DEFAULTS.dataDir),
    sagas: sagasOf(cfg.sagas, problems),
    sagaStore: { backend: cfg.saga_store.backend, lease: cfg.saga_store.lease ?? DEFAULTS.sagaStore.lease },
    deferredStore: {
      maxItems: cfg.deferred_store?.max_items ?? DEFAULTS.deferredStore.maxItems,
      maxBytes: cfg.deferred_store?.max_bytes ?? DEFAULTS.deferredStore.maxBytes,
      retention: cfg.deferred_store?.retention ?? DEFAULTS.deferredStore.retention,
      concurrency: cfg.deferred_store?.concurrency ?? DEFAULTS.deferredStore.concurrency,
      backend: cfg.deferred_store?.backend ?? DEFAULTS.deferredStore.backend,
      lease: cfg.deferred_store?.lease ?? DEFAULTS.deferredStore.lease,
    },
    fallbackOf,
  };
  return { config: deepFreeze(config), problems };
}
