/**
 * Every default of the config, in one table: what a key is when the file does not write it. The
 * schema's `.default()`s (schema.ts) and the layering (resolve.ts) both read it; nothing else
 * holds a default. Durations are in ms, sizes in bytes, ratios in [0, 1], names as the resolved
 * model spells them. docs/configuration.md states the same values: test/config/docs-defaults.test.ts
 * fails when the two disagree.
 *
 * A leaf module (no imports), so that the schema and the resolver can both read it.
 */
export const DEFAULTS = {
  timeouts: { attempt: 5_000, request: 15_000, connect: 2_000, body: 30_000 },
  maxConnections: 128,
  keepaliveTimeout: 4_000,
  streamingShare: 0.5,
  upstream: {
    hostHeader: 'endpoint',
    loadBalancing: 'round_robin',
    failoverThreshold: 0.5,
    panic: false,
    dnsRefresh: 30_000,
    idempotencyKeys: 'ignored',
    protocol: 'http1',
    maxConcurrentStreams: 100,
    /** An endpoint written as an object without weight or priority. */
    endpointWeight: 1,
    endpointPriority: 0,
  },
  healthCheck: {
    path: '/health',
    interval: 10_000,
    timeout: 2_000,
    healthyThreshold: 2,
    unhealthyThreshold: 3,
    jitter: 0.1,
  },
  outlierDetection: {
    consecutiveFailures: 5,
    baseEjectionTime: 30_000,
    maxEjectionTime: 300_000,
    maxEjectionPercent: 0.5,
  },
  tls: { insecureSkipVerify: false, minVersion: 'TLSv1.2' },
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
  },
  circuitBreaker: {
    failureThreshold: 5,
    resetTimeout: 30_000,
    halfOpenRequests: 1,
    successThreshold: 1,
    window: { type: 'count', size: 100 },
    /** The window's size when its type is time and no size is written. */
    timeWindowSize: 60_000,
    minimumCalls: 20,
    failureRateThreshold: undefined,
    slowCallDuration: undefined,
    slowCallRateThreshold: undefined,
    failureOn: ['5xx', 408, 429, 'connect-failure', 'reset', 'timeout'],
  },
  rateLimiter: {
    mode: 'reject',
    maxDelay: 1_000,
    maxQueue: 1_000,
    maxKeys: 10_000,
    scope: 'local',
    onStoreError: 'local',
    replicas: 1,
  },
  bulkhead: { maxConcurrent: 100, maxQueue: 0, queueTimeout: 1_000 },
  websocket: { enabled: true, idleTimeout: 300_000, maxDuration: 0 },
  /** A fallback's `on`, a static answer's status, a cache fallback's `max_stale`. */
  fallback: {
    on: ['breaker_open', 'timeout', 'error', 'bulkhead_full', 'degraded'],
    status: 200,
    maxStale: 300_000,
  },
  /** `degradation`'s window, minimum_requests, recovery, probe_ratio; a latency condition's quantile. */
  degradation: {
    enabled: true,
    window: 10_000,
    minimumRequests: 20,
    recovery: 10_000,
    probeRatio: 0.05,
    quantile: 0.99,
    /** How stale an answer `cache_only` degradation serves (a cache fallback's default max_stale). */
    cacheOnlyMaxStale: 300_000,
  },
  listener: {
    host: '127.0.0.1',
    protocol: 'http1',
    /** The app in the pod: loopback. */
    trustedProxies: ['127.0.0.0/8', '::1'],
    limits: {
      maxHeaderBytes: 16 * 1024,
      maxHeaders: 100,
      maxBodyBytes: 1024 * 1024,
      headerTimeout: 60_000,
      bodyIdleTimeout: 60_000,
      bodyBufferBytes: 64 * 1024,
      keepaliveTimeout: 75_000,
      maxRequestsPerConnection: 0,
      maxConnections: 10_000,
      sendTimeout: 60_000,
    },
  },
  route: { requestBuffering: true, responseBuffering: true, allowTrace: false },
  idempotency: {
    methods: ['POST', 'PATCH'],
    required: false,
    ttl: 86_400_000,
    maxBodyBytes: 1024 * 1024,
    keyScope: 'client_ip',
    conflict: 'reject',
    storeServerErrors: true,
    store: 'memory',
    onStoreError: 'reject',
  },
  deferred: {
    on: ['connect_failure', 'breaker_open', 503, 'timeout_before_send'],
    methods: ['POST', 'PUT', 'PATCH', 'DELETE'],
    requireIdempotencyKey: true,
    maxAge: 24 * 3_600_000,
    maxAttempts: 0,
    schedule: [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000],
  },
  deferredStore: {
    maxItems: 100_000,
    maxBytes: 256 * 1024 * 1024,
    retention: 7 * 24 * 3_600_000,
    concurrency: 4,
  },
  sagaStore: { backend: 'embedded', lease: 30_000 },
  admin: { host: '127.0.0.1', port: 9901, tokenEnv: 'BREAKWATER_ADMIN_TOKEN' },
  cache: { maxBytes: 64 * 1024 * 1024, maxEntryBytes: 1024 * 1024, statuses: [200] },
  logging: { level: 'info', accessLog: true },
  shutdown: { delay: 0, drainTimeout: 25_000 },
  buffering: {
    responseBufferBytes: 64 * 1024,
    maxTempFileBytes: 1024 ** 3,
    optOutHeader: 'x-accel-buffering',
  },
  /** data_dir when neither the file nor $BREAKWATER_DATA_DIR says: beside the config file. */
  dataDir: 'breakwater-data',
  redis: {
    keyPrefix: 'breakwater:',
    commandTimeout: 20,
    connectTimeout: 1_000,
    breaker: { failureThreshold: 3, resetTimeout: 1_000 },
  },
  saga: {
    method: 'POST',
    timeout: 30_000,
    longRunningAction: false,
    maxResponseBytes: 256 * 1024,
    retention: 86_400_000,
    callMethod: 'POST',
    statusMethod: 'GET',
    compensate: {
      maxAttempts: 10,
      initialWait: 100,
      maxWait: 30_000,
      maxAge: 3_600_000,
      successStatuses: [404, 410],
    },
    status: { maxAttempts: 3, initialWait: 100, maxWait: 30_000, notAppliedStatuses: [404] },
  },
} as const;
