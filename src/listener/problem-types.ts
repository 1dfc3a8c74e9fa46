/**
 * The shape of a problem breakwater answers with (RFC 9457) and its kinds, apart from the code that
 * writes one (problem.ts), so that the gRPC codec can speak of problems without a cycle.
 */
export type ProblemKind =
  | 'no-route'
  | 'upstream-connect-failed'
  | 'upstream-connect-timeout'
  | 'upstream-reset'
  | 'upstream-timeout'
  | 'upstream-bad-response'
  | 'request-timeout'
  | 'body-timeout'
  | 'shutting-down'
  | 'bad-request'
  | 'circuit-open'
  | 'rate-limited'
  | 'bulkhead-full'
  | 'degraded'
  | 'no-healthy-endpoint'
  | 'idempotency-key-missing'
  | 'idempotency-key-malformed'
  | 'idempotency-key-mismatch'
  | 'idempotency-conflict'
  | 'payload-too-large'
  | 'headers-too-large'
  | 'upgrade-refused'
  | 'store-unavailable'
  | 'streaming-limit'
  | 'body-storage-failed'
  | 'header-timeout'
  | 'method-not-allowed'
  | 'expectation-failed'
  | 'transfer-coding-not-implemented'
  | 'http-version-not-supported'
  | 'saga-timeout'
  | 'saga-unavailable'
  | 'saga-failed'
  | 'deferred-store-full'
  | 'deferred-store-failed';

export interface Problem {
  readonly kind: ProblemKind;
  readonly status: number;
  readonly detail: string;
  readonly upstream?: string | undefined;
  readonly requestId?: string | undefined;
  readonly headers?: readonly string[] | undefined;
}
