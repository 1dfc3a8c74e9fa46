/**
 * The schema of breakwater's YAML file: one source for validation, the TypeScript types and the
 * committed JSON Schema (`config/breakwater.schema.json`).
 *
 * Policy blocks (`timeout`, `retry`, `circuit_breaker`, ...) are written here without defaults:
 * they are layered built-in defaults <- `resilience:` <- `upstreams.<name>` <- route, in
 * `resolve.ts`, and a default filled in at parse time would hide the layer below it.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { RETRIABLE_GRPC } from '../attempt/grpc.js';
import { parseCidr } from '../listener/client-address.js';
import { DEFAULTS } from './defaults.js';
import { DURATION_PATTERN, parseDuration, parsePercent, parseRatio, RATIO_PATTERN } from './units.js';

const DURATION_HINT = 'a duration such as 250ms, 2s, 1m, or a number of seconds';
const RATIO_HINT = 'a ratio such as 50% or 0.5';

/** A duration in the file; milliseconds in the model. */
/** The longest delay a Node.js timer takes (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2_147_483_647;

export const duration = z
  .union(
    [
      z.number().nonnegative(),
      z.string().regex(new RegExp(DURATION_PATTERN), {
        error: (i) => `expected ${DURATION_HINT}, got ${JSON.stringify(i.input)}`,
      }),
    ],
    {
      error: `expected ${DURATION_HINT}`,
    },
  )
  .transform((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected ${DURATION_HINT}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    // Timers cannot wait longer (Node fires a longer one at once, with a warning).
    if (ms > MAX_TIMER_MS) {
      ctx.addIssue({
        code: 'custom',
        message: `at most 24 days (${MAX_TIMER_MS} ms), got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return ms;
  });

/** A ratio in the file (`50%` or `0.5`); a number in [0, 1] in the model. */
export const ratio = z
  .union(
    [
      z.number(),
      z.string().regex(new RegExp(`${RATIO_PATTERN}|^\\s*[01](\\.\\d+)?\\s*$`), {
        error: (i) => `expected ${RATIO_HINT}, got ${JSON.stringify(i.input)}`,
      }),
    ],
    {
      error: `expected ${RATIO_HINT}`,
    },
  )
  .transform((v, ctx) => {
    const r = parseRatio(v);
    if (r === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `expected ${RATIO_HINT} (between 0% and 100%), got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return r;
  });

/**
 * A percentage in the file (keys named `*_percent`, as Envoy's `max_ejection_percent`): `50` or
 * `"50%"` both mean 50 %, so `0.5` is half of one percent; a number in [0, 1] in the model.
 */
export const percent = z
  .union([z.number(), z.string()], { error: 'expected a percentage from 0 to 100, such as 50 or "50%"' })
  .transform((v, ctx) => {
    const r = parsePercent(v);
    if (r === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a percentage from 0 to 100, such as 50 or "50%", got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return r;
  });

const positiveInt = z.number().int().positive();

const BYTE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};
/** A size in bytes: a number, or `512KiB`, `64MiB`, `1GB`. */
export const byteSize = z
  .union([z.number().int().nonnegative(), z.string().regex(/^\s*\d+(\.\d+)?\s*([KMG]i?B|B)\s*$/i)], {
    error: 'expected a size such as 1048576, 512KiB or 64MiB',
  })
  .transform((v) => {
    if (typeof v === 'number') return v;
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$/i.exec(v) as RegExpExecArray;
    return Math.round(Number(m[1]) * (BYTE_UNITS[(m[2] as string).toLowerCase()] ?? 1));
  });
const nonNegativeInt = z.number().int().nonnegative();
const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, {
  error: 'expected a name of letters, digits, "_", "." or "-"',
});
const headerName = z
  .string()
  .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, { error: 'expected an HTTP header name' });
const httpUrl = z.string().refine(
  (v) => {
    try {
      const u = new URL(v);
      return (
        (u.protocol === 'http:' || u.protocol === 'https:') &&
        u.hostname !== '' &&
        (u.pathname === '/' || u.pathname === '') &&
        !u.search &&
        !u.username
      );
    } catch {
      return false;
    }
  },
  {
    error:
      'expected an endpoint URL such as http://127.0.0.1:8080 or https://api.example.com (scheme, host and port, no path)',
  },
);
const port = z.number().int().min(0).max(65535);

/** Status classes and codes a policy can react to. */
const statusMatcher = z.union([z.number().int().min(100).max(599), z.enum(['5xx', '4xx', 'gateway-error'])]);
const retryOn = z.array(
  z.union(
    [
      z.enum(['connect-failure', 'reset', 'timeout', '5xx', 'gateway-error']),
      z.number().int().min(100).max(599),
      z.enum(RETRIABLE_GRPC),
    ],
    {
      error: `expected connect-failure, reset, timeout, 5xx, gateway-error, a status code or a gRPC code (${RETRIABLE_GRPC.join(', ')})`,
    },
  ),
);
const failureOn = z.array(
  z.union([statusMatcher, z.enum(['connect-failure', 'reset', 'timeout'])], {
    error: 'expected connect-failure, reset, timeout, 5xx, 4xx, gateway-error or a status code',
  }),
);

export const retrySchema = z
  .strictObject({
    enabled: z.boolean().optional().describe('Turns retries on or off. Default: true.'),
    max_attempts: positiveInt
      .max(10)
      .optional()
      .describe('Attempts in all, the first included (3 = the first and 2 retries). Default: 3.'),
    methods: z
      .array(z.string().regex(/^[A-Z]+$/, { error: 'expected an upper-case HTTP method' }))
      .min(1)
      .optional()
      .describe(
        'Only these methods are retried once the upstream may have processed the request (e.g. [GET]); any method is retried when it certainly was not (connect failure, refused stream). Non-idempotent methods listed here still need an opt-in. Default: every method the safety rule allows (the idempotent ones).',
      ),
    initial_wait: duration
      .optional()
      .describe('Wait before the first retry (before jitter). Default: 100ms.'),
    max_wait: duration.optional().describe('Upper bound of any wait. Default: 10s.'),
    multiplier: z.number().min(1).max(10).optional().describe('Growth of the wait per retry. Default: 2.'),
    jitter: z.enum(['full', 'equal', 'none']).optional().describe('Jitter of the wait. Default: full.'),
    retry_on: retryOn
      .optional()
      .describe('Outcomes that are retried. Default: [connect-failure, reset, 5xx].'),
    max_body_bytes: nonNegativeInt
      .optional()
      .describe('Request bodies up to this size are buffered for replay. Default: 65536.'),
    retry_non_idempotent: z
      .boolean()
      .optional()
      .describe(
        'Retry POST, PATCH and other non-idempotent methods on the usual conditions, as if idempotent (not on a route with idempotency). Default: false.',
      ),
    attempts_header: z
      .boolean()
      .optional()
      .describe('Add x-breakwater-attempts to responses. Default: true.'),
    budget: z
      .strictObject({
        ratio: ratio.optional().describe('Retries may add at most this share of requests. Default: 20%.'),
        min_per_second: nonNegativeInt.optional().describe('Retries always allowed per second. Default: 10.'),
        window: duration.optional().describe('Sliding window of the budget. Default: 10s.'),
      })
      .optional(),
  })
  .describe('Retries of failed attempts.');

export const circuitBreakerSchema = z
  .strictObject({
    enabled: z.boolean().optional().describe('Default: true when the block is present.'),
    failure_threshold: positiveInt
      .optional()
      .describe('Consecutive failures that open the breaker. Default: 5.'),
    reset_timeout: duration.optional().describe('Time open before a half-open probe. Default: 30s.'),
    half_open_requests: positiveInt.optional().describe('Probes let through while half-open. Default: 1.'),
    success_threshold: positiveInt
      .optional()
      .describe('Successful probes that close the breaker. Default: 1.'),
    window: z
      .strictObject({
        type: z.enum(['count', 'time']).optional().describe('Default: count.'),
        size: z
          .union([positiveInt, duration])
          .optional()
          .describe('Calls (count) or a duration (time). Default: 100 / 60s.'),
      })
      .optional(),
    minimum_calls: positiveInt
      .optional()
      .describe('Calls in the window before rates are judged. Default: 20.'),
    failure_rate_threshold: ratio
      .optional()
      .describe('Open when the failure rate reaches this. Default: off.'),
    slow_call_duration: duration.optional().describe('A call slower than this is slow. Default: off.'),
    slow_call_rate_threshold: ratio
      .optional()
      .describe('Open when the slow-call rate reaches this. Default: off.'),
    failure_on: failureOn
      .optional()
      .describe(
        'Outcomes that count as failures. Default: [5xx, 408, 429, connect-failure, reset, timeout].',
      ),
  })
  .describe('Circuit breaker per upstream.');

export const rateLimiterSchema = z
  .strictObject({
    enabled: z.boolean().optional().describe('Default: true when the block is present.'),
    max_requests_per_second: z.number().positive().optional().describe('Token refill rate.'),
    burst_limit: positiveInt.optional().describe('Bucket capacity. Default: max_requests_per_second.'),
    mode: z
      .enum(['reject', 'shape'])
      .optional()
      .describe('reject: 429 at once; shape: queue up to max_delay. Default: reject.'),
    max_delay: duration.optional().describe('shape: longest wait in the queue. Default: 1s.'),
    max_queue: nonNegativeInt.optional().describe('shape: queued requests at most. Default: 1000.'),
    key: z
      .union([z.literal('client_ip'), z.string().regex(/^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$/)], {
        error: 'expected client_ip or header:<name>',
      })
      .optional()
      .describe('One bucket per client address or header value. Default: one bucket.'),
    max_keys: positiveInt.optional().describe('Keys remembered at most (LRU). Default: 10000.'),
    scope: z
      .enum(['local', 'global'])
      .optional()
      .describe(
        'local: a bucket in this process; global: one limit shared by every replica through stores.redis (mode reject only). Default: local.',
      ),
    on_store_error: z
      .enum(['local', 'allow', 'deny'])
      .optional()
      .describe(
        "scope global, while Redis is unreachable: local (a bucket of this replica's share, the limit divided by replicas), allow (no limit) or deny (503). Default: local.",
      ),
    replicas: positiveInt
      .optional()
      .describe(
        'scope global: replicas sharing the limit, for the local share while Redis is down; usually substituted from an environment variable. Default: 1.',
      ),
  })
  .describe('Token bucket per upstream: a rate and a burst (e.g. 10000 requests/s, burst 5000).');

export const bulkheadSchema = z
  .strictObject({
    enabled: z.boolean().optional().describe('Default: true when the block is present.'),
    max_concurrent: positiveInt.optional().describe('In-flight requests at most. Default: 100.'),
    max_queue: nonNegativeInt.optional().describe('Requests waiting for a slot at most. Default: 0.'),
    queue_timeout: duration.optional().describe('Longest wait for a slot. Default: 1s.'),
  })
  .describe('Concurrency limit per upstream.');

/** Timeouts: each key may stand in `resilience`, an upstream or a route. */
const timeoutKeys = {
  timeout: duration.optional().describe('Per attempt: until the response headers arrive. Default: 5s.'),
  request_timeout: duration
    .optional()
    .describe('Whole request, retries and waits included. Default: 15s, or timeout when that is longer.'),
  connect_timeout: duration.optional().describe('TCP connect per attempt. Default: 2s.'),
  body_timeout: duration.optional().describe('Longest silence while a response body streams. Default: 30s.'),
  websocket_idle_timeout: duration
    .optional()
    .describe('A WebSocket with no bytes either way this long is closed; 0: never. Default: 5m.'),
  websocket_max_duration: duration
    .optional()
    .describe('A WebSocket is closed this long after its handshake; 0: no limit. Default: 0.'),
};

const fallbackTriggers = z.enum([
  'breaker_open',
  'timeout',
  'error',
  'rate_limited',
  'bulkhead_full',
  'degraded',
]);
const fallbackOn = z
  .array(fallbackTriggers)
  .optional()
  .describe('Events that trigger it. Default: all but rate_limited.');
const THEN_HINT =
  'Fallback tried when this one cannot serve: a name in `fallbacks`, or a fallback written here.';
/** A fallback in `fallbacks`, or written in place (an upstream's `fallback`, a fallback's `then`). */
export const fallbackSchema = z.discriminatedUnion(
  'type',
  [
    z.strictObject({
      type: z.literal('static_response'),
      status: z.number().int().min(200).max(599).optional().describe('Default: 200.'),
      headers: z.record(headerName, z.string()).optional(),
      body: z.string().optional(),
      body_file: z.string().optional().describe('Path relative to the config file, read at load.'),
      on: fallbackOn,
      get then() {
        return fallbackRef.optional().describe(THEN_HINT);
      },
    }),
    z.strictObject({
      type: z.literal('cache'),
      max_stale: duration.optional().describe('Oldest response served. Default: 5m.'),
      vary: z.array(headerName).optional().describe('Request headers that are part of the key.'),
      on: fallbackOn,
      get then() {
        return fallbackRef.optional().describe(THEN_HINT);
      },
    }),
    z.strictObject({
      type: z.literal('upstream'),
      upstream: name.describe('The upstream that answers instead.'),
      on: fallbackOn,
      get then() {
        return fallbackRef.optional().describe(THEN_HINT);
      },
    }),
  ],
  { error: 'expected a fallback with type static_response, cache or upstream' },
);
/** A fallback's name, or the fallback itself written in place. */
const fallbackRef: z.ZodUnion<[typeof name, typeof fallbackSchema]> = z.union([name, fallbackSchema], {
  error: 'expected the name of a fallback, or a fallback such as { type: static_response, status: 503 }',
});

const policyKeys = {
  ...timeoutKeys,
  retry: retrySchema.optional(),
  circuit_breaker: circuitBreakerSchema.optional(),
  rate_limiter: rateLimiterSchema.optional(),
  bulkhead: bulkheadSchema.optional(),
};

const endpointSchema = z.union(
  [
    httpUrl,
    z.strictObject({
      url: httpUrl,
      weight: z.number().positive().max(1000).optional().describe('Relative share of traffic. Default: 1.'),
      priority: nonNegativeInt
        .max(10)
        .optional()
        .describe('0 is used first; higher levels take over when it fails. Default: 0.'),
      group: name
        .optional()
        .describe('A named set of endpoints (blue, green) that group_weights splits traffic between.'),
    }),
  ],
  { error: 'expected an endpoint URL, or { url, weight, priority, group }' },
);

export const healthCheckSchema = z.strictObject({
  path: z
    .string()
    .regex(/^\//, { error: 'a health check path starts with "/"' })
    .optional()
    .describe('Default: /health.'),
  interval: duration.optional().describe('Default: 10s.'),
  timeout: duration.optional().describe('Default: 2s.'),
  healthy_threshold: positiveInt
    .optional()
    .describe('Passing checks in a row to become healthy. Default: 2.'),
  unhealthy_threshold: positiveInt
    .optional()
    .describe('Failing checks in a row to become unhealthy. Default: 3.'),
  expected_statuses: z.array(z.number().int().min(100).max(599)).optional().describe('Default: 200-399.'),
  jitter: ratio.optional().describe('Random spread of the interval. Default: 10%.'),
});

export const outlierDetectionSchema = z.strictObject({
  consecutive_failures: positiveInt
    .optional()
    .describe('Failures in a row that eject an endpoint. Default: 5.'),
  base_ejection_time: duration
    .optional()
    .describe('First ejection; each next one is longer by this much. Default: 30s.'),
  max_ejection_time: duration.optional().describe('Default: 5m.'),
  max_ejection_percent: percent
    .optional()
    .describe(
      'Percent of the endpoints that may be ejected at once: 50 or "50%" (a bare number is a percent, as in Envoy: 0.5 is half of one percent). Default: 50.',
    ),
});

const hostName = z
  .string()
  .regex(
    /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/,
    {
      error: 'expected a host name such as api.internal',
    },
  )
  .refine((v) => isIP(v) === 0, {
    error:
      'expected a host name, not an IP address (SNI cannot carry one; an IP endpoint is checked against the IP addresses in its certificate)',
  });

export const tlsSchema = z
  .strictObject({
    ca_file: z
      .string()
      .min(1)
      .optional()
      .describe(
        "PEM file of CA certificates trusted in addition to Node's default roots; relative to the config file, read at load and at every reload. Default: none.",
      ),
    server_name: hostName
      .optional()
      .describe("SNI and the name the certificate must match. Default: the endpoint URL's host."),
    cert_file: z
      .string()
      .min(1)
      .optional()
      .describe('PEM client certificate (chain) for mutual TLS; needs key_file. Default: none.'),
    key_file: z
      .string()
      .min(1)
      .optional()
      .describe('PEM private key of cert_file, unencrypted; needs cert_file. Default: none.'),
    insecure_skip_verify: z
      .boolean()
      .optional()
      .describe(
        'Accept any certificate for any name. Dangerous: anyone on the path can read and change the traffic; logged as a warning at every load. Default: false.',
      ),
    min_version: z
      .enum(['TLSv1.2', 'TLSv1.3'])
      .optional()
      .describe('Oldest TLS version accepted. Default: TLSv1.2.'),
  })
  .describe('TLS towards the https:// endpoints of the upstream (all its endpoints must be https://).');

export const upstreamSchema = z.strictObject({
  endpoints: z.array(endpointSchema).min(1, { error: 'an upstream needs at least one endpoint' }),
  load_balancing: z
    .enum(['round_robin', 'least_conn', 'random', 'p2c_ewma'])
    .optional()
    .describe('Default: round_robin.'),
  group_weights: z
    .record(name, z.number().min(0))
    .optional()
    .describe('Traffic split between endpoint groups, e.g. { blue: 100, green: 0 }.'),
  failover_threshold: ratio
    .optional()
    .describe('A priority level keeps traffic while this share of it is healthy. Default: 50%.'),
  panic: z
    .boolean()
    .optional()
    .describe('When no endpoint is healthy, try them all anyway. Default: false (503 or the fallback).'),
  dns_refresh: duration
    .optional()
    .describe(
      'Re-resolve endpoint host names this often (one endpoint per address); 0 turns it off. Default: 30s.',
    ),
  health_check: healthCheckSchema.optional(),
  outlier_detection: outlierDetectionSchema.optional(),
  host_header: z
    .union(
      [
        z.enum(['endpoint', 'preserve']),
        z.string().regex(/^[A-Za-z0-9.:[\]-]+$/, {
          error: 'expected endpoint, preserve, or a host name such as api.example.com',
        }),
      ],
      {
        error: 'expected endpoint, preserve, or a host name such as api.example.com',
      },
    )
    .optional()
    .describe(
      "Host sent upstream: endpoint (its host:port), preserve (the client's), or a literal. Default: endpoint.",
    ),
  max_connections: positiveInt.optional().describe('Connections per endpoint at most. Default: 128.'),
  keepalive_timeout: duration
    .optional()
    .describe('Idle time before a pooled connection closes. Default: 4s.'),
  fallback: fallbackRef
    .optional()
    .describe('The fallback: the name of one in `fallbacks`, or a fallback written here.'),
  idempotency_keys: z
    .enum(['honored', 'ignored'])
    .optional()
    .describe(
      'honored: the upstream deduplicates requests by their Idempotency-Key itself, so breakwater may retry a request that carries one after a 5xx or a timeout. Default: ignored (a request that may not be sent twice is retried only when it certainly was not processed).',
    ),
  tls: tlsSchema.optional(),
  protocol: z
    .enum(['http1', 'h2', 'h2c'])
    .optional()
    .describe(
      'How breakwater speaks to the endpoints: http1, h2 (HTTP/2 over TLS, https:// endpoints, negotiated by ALPN) or h2c (HTTP/2 in clear text, http:// endpoints; gRPC). Default: http1.',
    ),
  max_concurrent_streams: positiveInt
    .max(1000)
    .optional()
    .describe('HTTP/2: requests at once on one connection. Default: 100.'),
  streaming_connections: ratio
    .refine((r) => r > 0, { error: 'expected more than 0% (at least one streaming request must fit)' })
    .optional()
    .describe(
      "Share of each endpoint's connections (HTTP/2: of its streams) that requests streaming at the client's pace may hold at once: unbuffered uploads (request_buffering: false, gRPC) and unbuffered responses (gRPC, text/event-stream, response_buffering: false, the opt-out header). One more waits within its attempt timeout, then 503 streaming-limit. Default: 50%.",
    ),
  ...policyKeys,
});

const routeMatch = z.strictObject({
  path_prefix: z
    .string()
    .regex(/^\//, { error: 'a path_prefix starts with "/"' })
    .optional()
    .describe('Segment-aware: /api matches /api and /api/x, not /apix. Default: everything.'),
  host: z
    .string()
    .regex(/^(\*\.)?[A-Za-z0-9.-]+$/, { error: 'expected a host name, optionally starting with *.' })
    .optional(),
  methods: z.array(z.string().regex(/^[A-Z]+$/, { error: 'expected an upper-case HTTP method' })).optional(),
  headers: z.record(headerName, z.string()).optional().describe('Header name -> exact value.'),
});

export const idempotencySchema = z
  .strictObject({
    enabled: z.boolean().optional().describe('Default: true when the block is present.'),
    methods: z
      .array(z.string().regex(/^[A-Z]+$/, { error: 'expected an upper-case HTTP method' }))
      .optional()
      .describe('Methods it applies to. Default: [POST, PATCH].'),
    required: z
      .boolean()
      .optional()
      .describe('Refuse requests without an Idempotency-Key (400). Default: false.'),
    ttl: duration.optional().describe('How long a stored response is replayed. Default: 24h.'),
    max_body_bytes: byteSize
      .optional()
      .describe('Largest request body (fingerprinted) and stored response body. Default: 1MiB.'),
    key_scope: z
      .union([z.enum(['client_ip', 'global']), z.string().regex(/^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$/)], {
        error: 'expected client_ip, global or header:<name>',
      })
      .optional()
      .describe(
        'Whose keys are separate: client_ip, header:<client-identity header>, or global. Default: client_ip.',
      ),
    conflict: z
      .enum(['reject', 'wait'])
      .optional()
      .describe('Same key while the first is in flight: 409, or wait and replay. Default: reject.'),
    store_server_errors: z
      .boolean()
      .optional()
      .describe('Store and replay 5xx responses too. Default: true.'),
    store: z
      .enum(['memory', 'redis'])
      .optional()
      .describe(
        'memory: this process only; redis: shared by every replica through stores.redis. Default: memory.',
      ),
    on_store_error: z
      .enum(['reject', 'forward'])
      .optional()
      .describe(
        'store redis, while Redis is unreachable: reject requests that carry a key (503), or forward them unprotected (a retry may then be charged twice). Default: reject.',
      ),
  })
  .describe('Idempotency-Key handling (draft-ietf-httpapi-idempotency-key-header).');

export const DEFERRED_TRIGGERS = [
  'connect_failure',
  'breaker_open',
  'timeout_before_send',
  'bulkhead_full',
  'rate_limited',
] as const;

export const deferredSchema = z
  .strictObject({
    on: z
      .array(
        z.union([
          z.enum(DEFERRED_TRIGGERS),
          z.number().int().min(500).max(599),
          z
            .string()
            .regex(/^5\d\d$/, { error: 'expected a 5xx status' })
            .transform(Number),
        ]),
      )
      .min(1)
      .optional()
      .describe(
        'When the live attempt failed this way, the request is stored and answered 202: connect_failure (no connection, no healthy endpoint, a reset before the request was written), breaker_open, timeout_before_send (a timeout before the request was sent; after it only when the request has an Idempotency-Key), bulkhead_full, rate_limited, or a 5xx status the upstream answered (e.g. 503). Default: [connect_failure, breaker_open, 503, timeout_before_send].',
      ),
    methods: z
      .array(z.string().regex(/^[A-Z]+$/, { error: 'expected an upper-case HTTP method' }))
      .min(1)
      .optional()
      .describe('Methods that may be deferred. Default: [POST, PUT, PATCH, DELETE].'),
    require_idempotency_key: z
      .boolean()
      .optional()
      .describe(
        'Defer only requests that carry an Idempotency-Key (forwarded on every delivery, so the upstream deduplicates); others get the usual error. Default: true.',
      ),
    max_age: duration
      .optional()
      .describe('An item not delivered within this time from its arrival ends expired. Default: 24h.'),
    max_attempts: positiveInt
      .optional()
      .describe(
        'Deliveries tried at most (the live attempt not counted); then failed. Default: no limit within max_age.',
      ),
    schedule: z
      .array(duration)
      .min(1)
      .optional()
      .describe(
        'Wait before each delivery attempt, the last one repeated, each with ±20% jitter. Default: [5s, 30s, 2m, 10m, 30m, 1h].',
      ),
    ordering_key: z
      .union([z.literal('none'), headerName])
      .optional()
      .describe(
        'A request header whose value orders deliveries: items with the same value are delivered one at a time in arrival order (one failing value never blocks another); none: no order. Default: none.',
      ),
  })
  .describe(
    'Deferred delivery: a write the upstream cannot take now is stored durably (data_dir), answered 202 Accepted, and delivered later.',
  );

export const routeSchema = z.strictObject({
  name: name.optional().describe('Used in metrics and logs. Default: <listener>-<index>.'),
  match: routeMatch.optional(),
  upstream: name,
  strip_prefix: z
    .union([z.boolean(), z.string().regex(/^\//)])
    .optional()
    .describe('true strips match.path_prefix; a string strips that prefix. Default: false.'),
  timeout: timeoutKeys.timeout,
  request_timeout: timeoutKeys.request_timeout,
  websocket: z
    .boolean()
    .optional()
    .describe('Pass WebSocket upgrades through to the upstream (false: 403). Default: true.'),
  websocket_idle_timeout: timeoutKeys.websocket_idle_timeout,
  websocket_max_duration: timeoutKeys.websocket_max_duration,
  // The retry budget is the upstream's, shared by its routes: not a route key.
  retry: retrySchema.omit({ budget: true }).optional(),
  idempotency: idempotencySchema.optional(),
  max_body_bytes: byteSize
    .optional()
    .describe("Overrides the listener's limits.max_body_bytes for this route."),
  request_buffering: z
    .boolean()
    .optional()
    .describe(
      "Read each request body whole (memory up to limits.body_buffer_bytes, then a temporary file) before the request takes a limiter token, bulkhead slot or upstream connection, as nginx's proxy_request_buffering. false: stream uploads to the upstream as they arrive, within the upstream's streaming_connections. Default: true.",
    ),
  response_buffering: z
    .boolean()
    .optional()
    .describe(
      "When the client reads slower than the upstream sends, read the upstream on into memory (buffering.response_buffer_bytes), then a temporary file (buffering.max_temp_file_bytes), so the upstream connection is freed at the upstream's speed, as nginx's proxy_buffering. false: the upstream waits for the client, within the upstream's streaming_connections. Default: true.",
    ),
  allow_trace: z
    .boolean()
    .optional()
    .describe(
      'Forward TRACE requests (they echo the request back, cookies and credentials included: cross-site tracing). Default: false (405).',
    ),
  deferred: deferredSchema.optional(),
});

export const limitsSchema = z.strictObject({
  max_header_bytes: byteSize
    .optional()
    .describe(
      'Request line and headers together at most (431 beyond). HTTP/2: the header list as RFC 9113 counts it (name + value + 32 bytes per field, pseudo-headers included), also from clients that ignore SETTINGS. Default: 16KiB.',
    ),
  max_headers: positiveInt
    .max(1000)
    .optional()
    .describe(
      'Request headers at most (431 beyond). HTTP/2: pseudo-headers are not counted, cookie crumbs count as one Cookie header. Default: 100.',
    ),
  max_body_bytes: byteSize
    .optional()
    .describe('Request body at most (413 beyond); 0: no limit. Default: 1MiB, as nginx.'),
  header_timeout: duration
    .optional()
    .describe('Time to receive the request headers (408 beyond). Default: 60s.'),
  body_buffer_bytes: byteSize
    .optional()
    .describe(
      "Request bodies (buffered whole before the request goes on, see the route's request_buffering) are held in memory up to this size; larger ones go to a temporary file in buffering.temp_dir. 0: every body to a file. Default: 64KiB.",
    ),
  body_idle_timeout: duration
    .optional()
    .describe('Longest silence while a request body arrives (408 beyond); 0: none. Default: 60s, as nginx.'),
  send_timeout: duration
    .optional()
    .describe(
      'A client that accepts no byte of its response for this long is disconnected and its upstream request aborted, as nginx send_timeout; 0: none. Default: 60s.',
    ),
  keepalive_timeout: duration
    .optional()
    .describe('Idle time of a client connection between requests. Default: 75s.'),
  max_requests_per_connection: nonNegativeInt
    .optional()
    .describe(
      'Then the connection is closed; 0: no limit. Node answers 503 to a request that races the close, so keep 0 unless clients honour Connection: close. Default: 0.',
    ),
  max_connections: positiveInt
    .optional()
    .describe('Client connections at most; more are refused. Default: 10000.'),
});

export const listenerSchema = z.strictObject({
  name,
  host: z.string().optional().describe('Default: 127.0.0.1.'),
  port,
  protocol: z
    .enum(['http1', 'h2c'])
    .optional()
    .describe(
      'http1: HTTP/1.1. h2c: HTTP/2 in clear text (prior knowledge, as gRPC clients speak it) and HTTP/1.1 on the same port. Default: http1.',
    ),
  limits: limitsSchema
    .optional()
    .describe('Protection against hostile or broken clients; see docs/security.md.'),
  trusted_proxies: z
    .array(
      z.string().refine((v) => parseCidr(v) !== undefined, {
        error: 'expected an IP address or CIDR block, e.g. 10.0.0.0/8 or fd00::/8',
      }),
    )
    .optional()
    .describe(
      'Peers whose X-Forwarded-For is believed (the client is the right-most untrusted entry); others have it replaced. Default: [127.0.0.0/8, ::1] (the app in the pod).',
    ),
  routes: z.array(routeSchema).min(1, { error: 'a listener needs at least one route' }),
});

const degradationCondition = z.discriminatedUnion(
  'type',
  [
    z.strictObject({
      type: z.literal('latency'),
      threshold: duration,
      quantile: z.number().gt(0).lt(1).optional().describe('Default: 0.99.'),
    }),
    z.strictObject({ type: z.literal('error_rate'), threshold: ratio }),
    z.strictObject({ type: z.literal('availability'), threshold: ratio }),
  ],
  { error: 'expected a condition with type latency, error_rate or availability' },
);

export const degradationSchema = z.strictObject({
  enabled: z.boolean().optional().describe('Default: true.'),
  window: duration.optional().describe('Sliding window of the measurements. Default: 10s.'),
  minimum_requests: positiveInt.optional().describe('Requests in the window before judging. Default: 20.'),
  recovery: duration.optional().describe('Conditions must stay clear this long to recover. Default: 10s.'),
  probe_ratio: ratio
    .optional()
    .describe('Share of requests still sent upstream while degraded. Default: 5%.'),
  services: z
    .array(
      z.strictObject({
        name,
        fallback: name.describe('A fallback name, or static_response / cache_only.'),
        conditions: z.array(degradationCondition).min(1),
      }),
    )
    .default([]),
});

const redisUrl = z.string().refine(
  (v) => {
    try {
      const u = new URL(v);
      return (
        (u.protocol === 'redis:' || u.protocol === 'rediss:') &&
        u.hostname !== '' &&
        /^\/?(\d{1,2})?$/.test(u.pathname) &&
        !u.search
      );
    } catch {
      return false;
    }
  },
  {
    error:
      'expected a Redis URL such as redis://127.0.0.1:6379, redis://redis:6379/2 or rediss://redis.internal:6380',
  },
);

export const redisStoreSchema = z
  .strictObject({
    url: redisUrl.describe(
      'redis://host:port/db, or rediss:// for TLS; environment substitution works here. Credentials in the URL are accepted, username/password keys are clearer.',
    ),
    username: z
      .string()
      .optional()
      .describe('ACL user name; empty means none. Default: none (the default user).'),
    password: z
      .string()
      .optional()
      .describe('Password, best substituted from an environment variable; empty means none. Default: none.'),
    tls: tlsSchema
      .optional()
      .describe('TLS towards Redis (implied by rediss://): CA, server name, client certificate.'),
    key_prefix: z
      .string()
      .max(100)
      .default(DEFAULTS.redis.keyPrefix)
      .describe('Prefix of every key breakwater writes. Default: "breakwater:".'),
    command_timeout: duration
      .default(DEFAULTS.redis.commandTimeout)
      .describe(
        'Longest wait for one Redis answer; then the store counts as failed for that request. Default: 20ms.',
      ),
    connect_timeout: duration
      .default(DEFAULTS.redis.connectTimeout)
      .describe('Longest wait for a connection. Default: 1s.'),
    breaker: z
      .strictObject({
        failure_threshold: positiveInt
          .default(DEFAULTS.redis.breaker.failureThreshold)
          .describe('Failed calls in a row that stop breakwater calling Redis. Default: 3.'),
        reset_timeout: duration
          .default(DEFAULTS.redis.breaker.resetTimeout)
          .describe('Then one call probes Redis this often until it answers. Default: 1s.'),
      })
      .prefault({})
      .describe('The breaker in front of Redis: while it is open no request waits for Redis.'),
  })
  .describe('A Redis server shared by every replica: global rate limits and Idempotency-Keys.');

const sagaMethod = z
  .enum(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'])
  .describe('HTTP method.');
const sagaStatuses = z.array(z.number().int().min(100).max(599));
const sagaTemplate = (what: string) =>
  z
    .string()
    .describe(`${what}; a template: {{ request.body.x }}, {{ steps.<step>.body.y }}, {{ saga.id }}...`);
const sagaCallKeys = {
  upstream: name.describe('The upstream called, through its pipeline (limits, breaker, retries).'),
  path: z
    .string()
    .regex(/^\//, { error: 'a path starts with "/"' })
    .describe('Path and query sent; a template (values are percent-encoded).'),
  headers: z.record(headerName, z.string()).optional().describe('Headers sent; values are templates.'),
  body: sagaTemplate('Body sent').optional(),
};
const sagaRetryKeys = {
  max_attempts: positiveInt.max(1000).optional(),
  initial_wait: duration.optional().describe('Wait before the second attempt. Default: 100ms.'),
  max_wait: duration.optional().describe('Longest wait between attempts (doubling). Default: 30s.'),
};

export const sagaStepSchema = z.strictObject({
  name: name.describe('The step, as steps.<name> in templates, metrics and the admin API.'),
  call: z
    .strictObject({
      ...sagaCallKeys,
      method: sagaMethod.optional().describe('Default: POST.'),
      body: sagaTemplate("Body sent. Default: the trigger request's body").optional(),
      success_statuses: sagaStatuses
        .optional()
        .describe('Statuses of 400 and above that still count as success. Default: none.'),
    })
    .describe('The step: one request, its Idempotency-Key <saga id>:<step>.'),
  compensate: z
    .strictObject({
      ...sagaCallKeys,
      method: sagaMethod.optional().describe('Default: POST.'),
      success_statuses: sagaStatuses
        .optional()
        .describe(
          'Statuses of 400 and above that count as compensated (nothing left to undo). Default: [404, 410].',
        ),
      ...sagaRetryKeys,
      max_age: duration
        .optional()
        .describe('Give up (failed_to_compensate) this long after the first attempt. Default: 1h.'),
    })
    .optional()
    .describe(
      'Undoes the step, retried with backoff until it succeeds, max_attempts (default 10) or max_age; Idempotency-Key <saga id>:<step>:compensate. Default: none (nothing to undo).',
    ),
  status: z
    .strictObject({
      ...sagaCallKeys,
      method: sagaMethod.optional().describe('Default: GET.'),
      not_applied_statuses: sagaStatuses
        .optional()
        .describe('Answers that mean the step was not applied. Default: [404].'),
      ...sagaRetryKeys,
    })
    .optional()
    .describe(
      'Asked when the outcome of the step is unknown (a timeout after it was sent): 2xx = applied, not_applied_statuses = not applied, else asked again up to max_attempts (default 3), then the step is compensated. Default: none (an unknown outcome is compensated).',
    ),
});

const sagaAnswer = z.strictObject({
  status: z.number().int().min(200).max(599),
  headers: z.record(headerName, z.string()).optional().describe('Values are templates.'),
  body: sagaTemplate('Body').optional(),
});

export const sagaSchema = z.strictObject({
  trigger: z
    .strictObject({
      listener: name.describe('The listener whose requests start the saga (matched before its routes).'),
      method: sagaMethod.default(DEFAULTS.saga.method),
      path: z
        .string()
        .regex(/^\/[^?#]*$/, { error: 'a trigger path starts with "/" and has no query' })
        .describe('Exact path; a segment ":name" matches any one segment, as request.params.name.'),
    })
    .describe('The request that starts a saga.'),
  steps: z.array(sagaStepSchema).min(1, { error: 'a saga needs at least one step' }),
  timeout: duration
    .default(DEFAULTS.saga.timeout)
    .describe(
      'The steps must all succeed within this; past it the step in flight counts as of unknown outcome and the saga compensates. Default: 30s.',
    ),
  response: z
    .union([z.strictObject({ step: name.describe('Whose answer the client gets.') }), sagaAnswer], {
      error: 'expected { step: <name> } or { status, headers, body }',
    })
    .optional()
    .describe("What the client gets when every step succeeded. Default: the last step's answer."),
  failure_response: sagaAnswer
    .optional()
    .describe("What the client gets when a step failed. Default: the failed step's answer."),
  long_running_action: z
    .boolean()
    .default(DEFAULTS.saga.longRunningAction)
    .describe(
      'Send Long-Running-Action: <admin URL of the saga> on every step call (MicroProfile LRA). Default: false.',
    ),
  max_response_bytes: byteSize
    .default(DEFAULTS.saga.maxResponseBytes)
    .describe(
      'A step answer is read (and logged) up to this size; a longer one fails the step. Default: 256KiB.',
    ),
  retention: duration
    .default(DEFAULTS.saga.retention)
    .describe('Finished sagas (completed, compensated) stay in the log this long. Default: 24h.'),
});

export const resilienceSchema = z.strictObject({
  ...policyKeys,
  fallback: z
    .strictObject({
      services: z.record(name, z.strictObject({ fallback_strategy: name })).optional(),
    })
    .optional()
    .describe(
      "Which fallback each upstream uses (`services.<upstream>.fallback_strategy`), as an upstream's own `fallback` does.",
    ),
});

export const configSchema = z.strictObject({
  listeners: z.array(listenerSchema).min(1, { error: 'at least one listener is needed' }),
  admin: z
    .strictObject({
      host: z.string().default(DEFAULTS.admin.host),
      port: port.default(DEFAULTS.admin.port),
      token_env: z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, {
          error: 'expected the name of an environment variable, such as BREAKWATER_ADMIN_TOKEN',
        })
        .default(DEFAULTS.admin.tokenEnv)
        .describe(
          'Environment variable holding the bearer token that mutating admin calls from outside loopback must carry.',
        ),
    })
    .prefault({}),
  upstreams: z.record(name, upstreamSchema),
  resilience: resilienceSchema.prefault({}),
  fallbacks: z.record(name, fallbackSchema).default({}),
  degradation: degradationSchema.optional(),
  readiness: z
    .strictObject({
      require_upstreams: z
        .array(name)
        .default([])
        .describe('Not ready until each has a healthy endpoint (by health_check).'),
    })
    .prefault({}),
  data_dir: z
    .string()
    .min(1)
    .optional()
    .describe(
      'Directory of the embedded store (deferred deliveries, saga logs), made when a feature needs it. Relative paths are relative to the config file. Default: $BREAKWATER_DATA_DIR, else breakwater-data beside the config file.',
    ),
  sagas: z
    .record(name, sagaSchema)
    .optional()
    .describe(
      'Sagas: a request on a listener that runs several steps on upstreams in order, and compensates the completed ones in reverse when one fails; durable in data_dir.',
    ),
  saga_store: z
    .strictObject({
      backend: z
        .enum(['embedded', 'redis'])
        .default(DEFAULTS.sagaStore.backend)
        .describe(
          'Where the saga log lives: embedded (data_dir, one process drives its sagas) or redis (stores.redis, shared by the replicas: a replica takes over the sagas of one that died). Redis makes a transition durable only as far as its persistence does (appendfsync always recommended). Default: embedded.',
        ),
      lease: duration
        .optional()
        .describe(
          'backend: redis: how long a replica owns a saga in flight without renewing it (renewed every lease/3); after it lapses another replica takes the saga over and finishes or compensates it. At least 1s. Default: 30s.',
        ),
    })
    .prefault({})
    .describe('The saga log: embedded store or Redis (fleet mode), and the lease of sagas in flight.'),
  deferred_store: z
    .strictObject({
      max_items: positiveInt
        .optional()
        .describe(
          'Items waiting for delivery (pending or delivering) at most; one more is answered 503 deferred-store-full. Default: 100000.',
        ),
      max_bytes: byteSize
        .optional()
        .describe(
          'Bytes of the requests waiting for delivery at most (503 deferred-store-full beyond). Default: 256MiB.',
        ),
      retention: duration
        .optional()
        .describe(
          'How long a finished item (synced, failed, expired, cancelled) is kept for the admin API. Default: 168h (7 days).',
        ),
      concurrency: positiveInt
        .optional()
        .describe(
          'Deliveries in flight at once per upstream (each also passes the upstream limiter, bulkhead and breaker). Default: 4.',
        ),
      backend: z
        .enum(['embedded', 'redis'])
        .optional()
        .describe(
          "Where the queue lives: embedded (LMDB in data_dir, fsync before each 202; one process per data_dir) or redis (a Redis Stream with a consumer group on stores.redis, shared by every replica; the 202 is as durable as Redis's AOF makes it). Default: embedded.",
        ),
      lease: duration
        .optional()
        .describe(
          'backend redis: how long an item a replica claimed stays its own without renewal; the claims of a replica that died pass to another after this. Default: 30s.',
        ),
    })
    .optional()
    .describe('The deferred-delivery queue: its backend, caps and retention.'),
  stores: z
    .strictObject({ redis: redisStoreSchema.optional() })
    .prefault({})
    .describe('Shared stores (fleet mode): state every replica sees.'),
  buffering: z
    .strictObject({
      temp_dir: z
        .string()
        .min(1)
        .optional()
        .describe(
          'Directory for the temporary files of buffered request and response bodies (breakwater makes its own subdirectory, breakwater-<pid>-<random>, mode 0700). Default: the OS temp directory.',
        ),
      response_buffer_bytes: byteSize
        .default(DEFAULTS.buffering.responseBufferBytes)
        .describe(
          'Per response, memory for what a slow client has not taken yet; beyond it, a temporary file. Default: 64KiB.',
        ),
      max_temp_file_bytes: byteSize
        .default(DEFAULTS.buffering.maxTempFileBytes)
        .describe(
          'Per response, the temporary file at most (nginx proxy_max_temp_file_size); beyond it the upstream waits for the client. 0: no file, memory only. Default: 1GiB.',
        ),
      opt_out_header: headerName
        .default(DEFAULTS.buffering.optOutHeader)
        .describe(
          'A response with this header set to "no" is not buffered (as nginx reads X-Accel-Buffering). Default: x-accel-buffering.',
        ),
    })
    .prefault({})
    .describe('Request and response buffering: where temporary files go and how large they may grow.'),
  cache: z
    .strictObject({
      max_bytes: byteSize
        .default(DEFAULTS.cache.maxBytes)
        .describe('All cached bodies together at most. Default: 64MiB.'),
      max_entry_bytes: byteSize
        .default(DEFAULTS.cache.maxEntryBytes)
        .describe('Larger responses are not cached. Default: 1MiB.'),
      statuses: z
        .array(z.number().int().min(200).max(599))
        .default(() => [...DEFAULTS.cache.statuses])
        .describe('Statuses stored. Default: [200].'),
    })
    .prefault({})
    .describe('The response cache behind cache fallbacks and cache_only degradation.'),
  logging: z
    .strictObject({
      level: z
        .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
        .default(DEFAULTS.logging.level),
      access_log: z.boolean().default(DEFAULTS.logging.accessLog),
      access_log_headers: z
        .array(headerName)
        .default([])
        .describe('Request headers added to each access-log line (secrets redacted).'),
    })
    .prefault({}),
  shutdown: z
    .strictObject({
      delay: duration
        .default(DEFAULTS.shutdown.delay)
        .describe('Wait after SIGTERM, still serving, before listeners close. Default: 0s.'),
      drain_timeout: duration
        .default(DEFAULTS.shutdown.drainTimeout)
        .describe('Longest wait for in-flight requests. Default: 25s.'),
    })
    .prefault({}),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type RetryInput = z.output<typeof retrySchema>;
export type CircuitBreakerInput = z.output<typeof circuitBreakerSchema>;
export type RateLimiterInput = z.output<typeof rateLimiterSchema>;
export type BulkheadInput = z.output<typeof bulkheadSchema>;
export type FallbackInput = z.output<typeof fallbackSchema>;
export type UpstreamInput = z.output<typeof upstreamSchema>;
export type TlsInput = z.output<typeof tlsSchema>;
export type RouteInput = z.output<typeof routeSchema>;
export type DegradationInput = z.output<typeof degradationSchema>;
export type RedisStoreInput = z.output<typeof redisStoreSchema>;
export type SagaInput = z.output<typeof sagaSchema>;
export type SagaStepInput = z.output<typeof sagaStepSchema>;
export type DeferredInput = z.output<typeof deferredSchema>;

/** The JSON Schema that editors use to complete and check the YAML. */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any', target: 'draft-7' });
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: 'https://breakwater.invalid/config/breakwater.schema.json',
    title: 'breakwater configuration',
    ...schema,
  };
}
