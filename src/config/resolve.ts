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
import { type FlatFallback, flattenFallbacks } from './inline-fallbacks.js';
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

/** The app in the pod: loopback. */
const DEFAULT_TRUSTED_PROXIES = ['127.0.0.0/8', '::1'];

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
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3' | undefined;
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

/** A fallback, named or written in place (then named after its place: `payments/fallback`). */
export type FallbackModel =
  | (Extract<FlatFallback, { type: 'static_response' }> & { readonly bodyBytes: Buffer })
  | Extract<FlatFallback, { type: 'cache' }>
  | Extract<FlatFallback, { type: 'upstream' }>;

export interface ResolvedConfig {
  readonly file: string;
  readonly listeners: readonly ListenerModel[];
  readonly admin: { readonly host: string; readonly port: number; readonly token_env: string };
  readonly upstreams: Readonly<Record<string, UpstreamModel>>;
  readonly fallbacks: Readonly<Record<string, FallbackModel>>;
  readonly degradation: DegradationInput | undefined;
  readonly cache: Config['cache'];
  readonly logging: Config['logging'];
  readonly shutdown: Config['shutdown'];
  readonly readiness: Config['readiness'];
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
  /** Which fallback each upstream uses, from `upstreams.<n>.fallback` or `resilience.fallback.services`. */
  readonly fallbackOf: Readonly<Record<string, string>>;
}

export const DEFAULTS = {
  timeouts: { attempt: 5_000, request: 15_000, connect: 2_000, body: 30_000 },
  maxConnections: 128,
  keepaliveTimeout: 4_000,
  streamingShare: 0.5,
  retry: {
    enabled: true,
    maxAttempts: 3,
    initialWait: 100,
    maxWait: 10_000,
    multiplier: 2,
    jitter: 'full',
    retryOn: ['connect-failure', 'reset', '5xx'],
    maxBodyBytes: 65_536,
    retryNonIdempotent: false,
    methods: undefined,
    attemptsHeader: true,
    budget: { ratio: 0.2, minPerSecond: 10, window: 10_000 },
  } satisfies RetryPolicy,
  circuitBreaker: {
    failureThreshold: 5,
    resetTimeout: 30_000,
    halfOpenRequests: 1,
    successThreshold: 1,
    window: { type: 'count', size: 100 },
    minimumCalls: 20,
    failureRateThreshold: undefined,
    slowCallDuration: undefined,
    slowCallRateThreshold: undefined,
    failureOn: ['5xx', 408, 429, 'connect-failure', 'reset', 'timeout'],
  } satisfies CircuitBreakerPolicy,
  rateLimiter: {
    mode: 'reject',
    maxDelay: 1_000,
    maxQueue: 1_000,
    maxKeys: 10_000,
    scope: 'local',
    onStoreError: 'local',
    replicas: 1,
  },
  bulkhead: { maxConcurrent: 100, maxQueue: 0, queueTimeout: 1_000 } satisfies BulkheadPolicy,
  /** `degradation`'s window, minimum_requests, recovery and probe_ratio. */
  degradation: { window: 10_000, minimumRequests: 20, recovery: 10_000, probeRatio: 0.05 },
  /** A cache fallback's `max_stale`, and how stale an answer `cache_only` degradation serves. */
  cacheMaxStale: 300_000,
  websocket: { enabled: true, idleTimeout: 300_000, maxDuration: 0 } satisfies WebSocketPolicy,
} as const;

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
  const windowSize = pick(...ordered.map((l) => l?.window?.size)) ?? (windowType === 'count' ? 100 : 60_000);
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

const DEFERRED_ON: readonly (string | number)[] = [
  'connect_failure',
  'breaker_open',
  503,
  'timeout_before_send',
];

function deferredOf(d: RouteInput['deferred']): DeferredPolicy | undefined {
  if (!d) return undefined;
  const on = d.on ?? DEFERRED_ON;
  return {
    on: new Set(on.filter((x): x is string => typeof x === 'string')),
    onStatus: new Set(on.filter((x): x is number => typeof x === 'number')),
    methods: new Set(d.methods ?? ['POST', 'PUT', 'PATCH', 'DELETE']),
    requireIdempotencyKey: d.require_idempotency_key ?? true,
    maxAge: d.max_age ?? 24 * 3_600_000,
    maxAttempts: d.max_attempts ?? 0,
    schedule: d.schedule ?? [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000],
    orderingKey:
      d.ordering_key === undefined || d.ordering_key === 'none' ? undefined : d.ordering_key.toLowerCase(),
  };
}

function idempotencyOf(i: RouteInput['idempotency']): IdempotencyPolicy | undefined {
  if (i === undefined || i.enabled === false) return undefined;
  const scope = i.key_scope ?? 'client_ip';
  return {
    methods: new Set(i.methods ?? ['POST', 'PATCH']),
    required: i.required ?? false,
    ttl: i.ttl ?? 86_400_000,
    maxBodyBytes: i.max_body_bytes ?? 1024 * 1024,
    keyScope:
      scope === 'client_ip' || scope === 'global'
        ? { kind: scope }
        : { kind: 'header', header: scope.slice('header:'.length).toLowerCase() },
    conflict: i.conflict ?? 'reject',
    storeServerErrors: i.store_server_errors ?? true,
    store: i.store ?? 'memory',
    onStoreError: i.on_store_error ?? 'reject',
  };
}

/** `streaming_connections` of an endpoint's connections (HTTP/2: its streams), at least one. */
function streamingLimitOf(u: UpstreamInput): number {
  const connections = u.max_connections ?? DEFAULTS.maxConnections;
  const perConnection = (u.protocol ?? 'http1') === 'http1' ? 1 : (u.max_concurrent_streams ?? 100);
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
    weight: typeof e === 'string' ? 1 : (e.weight ?? 1),
    priority: typeof e === 'string' ? 0 : (e.priority ?? 0),
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
    insecureSkipVerify: t.insecure_skip_verify ?? false,
    minVersion: t.min_version,
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
            minVersion: undefined,
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
    const hh = u.host_header ?? 'endpoint';
    upstreams[name] = {
      name,
      endpoints: u.endpoints.map(endpointOf),
      hostHeader: hh === 'endpoint' || hh === 'preserve' ? { kind: hh } : { kind: 'literal', value: hh },
      maxConnections: u.max_connections ?? DEFAULTS.maxConnections,
      keepaliveTimeout: u.keepalive_timeout ?? DEFAULTS.keepaliveTimeout,
      loadBalancing: u.load_balancing ?? 'round_robin',
      groupWeights: u.group_weights,
      failoverThreshold: u.failover_threshold ?? 0.5,
      panic: u.panic ?? false,
      dnsRefresh: u.dns_refresh ?? 30_000,
      healthCheck: u.health_check
        ? {
            path: u.health_check.path ?? '/health',
            interval: u.health_check.interval ?? 10_000,
            timeout: u.health_check.timeout ?? 2_000,
            healthyThreshold: u.health_check.healthy_threshold ?? 2,
            unhealthyThreshold: u.health_check.unhealthy_threshold ?? 3,
            expectedStatuses: u.health_check.expected_statuses
              ? new Set(u.health_check.expected_statuses)
              : undefined,
            jitter: u.health_check.jitter ?? 0.1,
          }
        : undefined,
      outlierDetection: u.outlier_detection
        ? {
            consecutiveFailures: u.outlier_detection.consecutive_failures ?? 5,
            baseEjectionTime: u.outlier_detection.base_ejection_time ?? 30_000,
            maxEjectionTime: u.outlier_detection.max_ejection_time ?? 300_000,
            maxEjectionPercent: u.outlier_detection.max_ejection_percent ?? 0.5,
          }
        : undefined,
      timeouts: timeoutsOf([u, r]),
      retry: retryOf([r.retry, u.retry]),
      circuitBreaker: breakerOf([r.circuit_breaker, u.circuit_breaker]),
      rateLimiter: limiterOf([r.rate_limiter, u.rate_limiter]),
      bulkhead: bulkheadOf([r.bulkhead, u.bulkhead]),
      fallback: flat.upstreamFallback[name] ?? r.fallback?.services?.[name]?.fallback_strategy,
      idempotencyKeys: u.idempotency_keys ?? 'ignored',
      tls: u.tls ? await tlsOf(u.tls, base, ['upstreams', name, 'tls'], problems) : undefined,
      protocol: u.protocol ?? 'http1',
      maxConcurrentStreams: u.max_concurrent_streams ?? 100,
      streamingLimit: streamingLimitOf(u),
    };
  }

  const listeners: ListenerModel[] = cfg.listeners.map((l, li) => {
    const trustedProxies = l.trusted_proxies ?? DEFAULT_TRUSTED_PROXIES;
    const trust = trustCheck(trustedProxies);
    return {
      name: l.name,
      protocol: l.protocol ?? 'http1',
      trustedProxies,
      host: l.host ?? '127.0.0.1',
      port: l.port,
      limits: {
        maxHeaderBytes: l.limits?.max_header_bytes ?? 16 * 1024,
        maxHeaders: l.limits?.max_headers ?? 100,
        maxBodyBytes: l.limits?.max_body_bytes ?? 1024 * 1024,
        headerTimeout: l.limits?.header_timeout ?? 60_000,
        bodyIdleTimeout: l.limits?.body_idle_timeout ?? 60_000,
        bodyBufferBytes: l.limits?.body_buffer_bytes ?? 64 * 1024,
        keepaliveTimeout: l.limits?.keepalive_timeout ?? 75_000,
        maxRequestsPerConnection: l.limits?.max_requests_per_connection ?? 0,
        maxConnections: l.limits?.max_connections ?? 10_000,
        sendTimeout: l.limits?.send_timeout ?? 60_000,
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
          maxBodyBytes: rt.max_body_bytes ?? l.limits?.max_body_bytes ?? 1024 * 1024,
          trust,
          websocket: websocketOf(rt.websocket, [rt, u, r]),
          requestBuffering: rt.request_buffering ?? true,
          responseBuffering: rt.response_buffering ?? true,
          allowTrace: rt.allow_trace ?? false,
          deferred: deferredOf(rt.deferred),
        };
      }),
    };
  });

  const fallbacks: Record<string, FallbackModel> = {};
  for (const [name, f] of Object.entries(flat.fallbacks)) {
    if (f.type === 'static_response') {
      let bodyBytes = Buffer.from(f.body ?? '', 'utf8');
      if (f.body_file !== undefined) {
        try {
          bodyBytes = await readFile(resolvePath(base, f.body_file));
        } catch (err) {
          problems.push({
            path: [...(flat.paths[name] ?? ['fallbacks', name]), 'body_file'],
            message: `cannot read ${f.body_file}: ${(err as Error).message}`,
          });
        }
      }
      fallbacks[name] = { ...f, bodyBytes };
    } else {
      fallbacks[name] = f;
    }
  }

  const fallbackOf: Record<string, string> = {};
  for (const u of Object.values(upstreams)) if (u.fallback !== undefined) fallbackOf[u.name] = u.fallback;

  const config: ResolvedConfig = {
    file,
    listeners,
    admin: cfg.admin,
    upstreams,
    fallbacks,
    degradation: cfg.degradation,
    cache: cfg.cache,
    logging: cfg.logging,
    shutdown: cfg.shutdown,
    readiness: cfg.readiness,
    stores: { redis: cfg.stores.redis ? await redisStoreOf(cfg.stores.redis, base, problems) : undefined },
    buffering: {
      tempDir: cfg.buffering.temp_dir === undefined ? tmpdir() : resolvePath(base, cfg.buffering.temp_dir),
      responseBufferBytes: cfg.buffering.response_buffer_bytes,
      maxTempFileBytes: cfg.buffering.max_temp_file_bytes,
      optOutHeader: cfg.buffering.opt_out_header.toLowerCase(),
    },
    dataDir: resolvePath(base, cfg.data_dir ?? process.env.BREAKWATER_DATA_DIR ?? 'breakwater-data'),
    sagas: sagasOf(cfg.sagas, problems),
    deferredStore: {
      maxItems: cfg.deferred_store?.max_items ?? 100_000,
      maxBytes: cfg.deferred_store?.max_bytes ?? 256 * 1024 * 1024,
      retention: cfg.deferred_store?.retention ?? 7 * 24 * 3_600_000,
      concurrency: cfg.deferred_store?.concurrency ?? 4,
      backend: cfg.deferred_store?.backend ?? 'embedded',
      lease: cfg.deferred_store?.lease ?? 30_000,
    },
    fallbackOf,
  };
  return { config: deepFreeze(config), problems };
}
