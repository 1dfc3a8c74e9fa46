/**
 * gRPC, as far as a resilience proxy needs it (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
 *
 * - a call is a POST with `content-type: application/grpc[+proto|+json...]`; its outcome is
 *   `grpc-status` in the response trailers, or in the headers of a trailers-only response, while
 *   the HTTP status is 200 either way;
 * - for the breaker, degradation, outlier detection and metrics a gRPC status counts as the HTTP
 *   status Envoy maps it to (UNAVAILABLE -> 503, DEADLINE_EXCEEDED -> 504, ...);
 * - what breakwater answers itself (breaker open, rate limited, no route, timeouts) goes back as a
 *   trailers-only gRPC error a gRPC client can read, never as an HTTP 503 it cannot;
 * - `grpc-timeout` is the call's deadline.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Problem, ProblemKind } from '../listener/problem-types.js';
import { responseStream } from '../listener/protocol.js';

/** The status codes, by the names `retry_on` uses. */
export const GRPC_CODES = {
  ok: 0,
  cancelled: 1,
  unknown: 2,
  'invalid-argument': 3,
  'deadline-exceeded': 4,
  'not-found': 5,
  'already-exists': 6,
  'permission-denied': 7,
  'resource-exhausted': 8,
  'failed-precondition': 9,
  aborted: 10,
  'out-of-range': 11,
  unimplemented: 12,
  internal: 13,
  unavailable: 14,
  'data-loss': 15,
  unauthenticated: 16,
} as const;

export type GrpcCodeName = keyof typeof GRPC_CODES;

/** The codes `retry_on` accepts (Envoy's retriable gRPC codes). */
export const RETRIABLE_GRPC = [
  'cancelled',
  'deadline-exceeded',
  'internal',
  'resource-exhausted',
  'unavailable',
] as const;

const NAMES = Object.keys(GRPC_CODES) as GrpcCodeName[];

export function grpcCodeName(code: number): string {
  return NAMES[code] ?? String(code);
}

/** gRPC status -> the HTTP status it stands for (Envoy's `grpcToHttpStatus`). */
const HTTP_OF = [200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401];

export function grpcHttpEquivalent(code: number): number {
  return HTTP_OF[code] ?? 500;
}

/** A gRPC call (gRPC-Web, which carries its status in the body, is not). */
export function isGrpcRequest(req: IncomingMessage): boolean {
  const ct = req.headers['content-type'];
  // application/grpc, or application/grpc+proto and the like; not application/grpc-web.
  return ct?.startsWith('application/grpc') === true && (ct.length === 16 || ct.charCodeAt(16) !== 45);
}

const GRPC_STATUS = Buffer.from('grpc-status');

/** `grpc-status` among raw response headers (a trailers-only response), or undefined. */
export function grpcStatusIn(raw: readonly Buffer[]): number | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as Buffer;
    if (name.length === 11 && name.equals(GRPC_STATUS))
      return parseStatus((raw[i + 1] as Buffer).toString('latin1'));
  }
  return undefined;
}

/** `grpc-status` from trailers as undici gives them: a flat list (HTTP/1.1) or an object (HTTP/2). */
export function grpcStatusOfTrailers(
  trailers: readonly (string | Buffer)[] | Readonly<Record<string, string | string[]>> | null,
): number | undefined {
  if (!trailers) return undefined;
  if (Array.isArray(trailers)) {
    for (let i = 0; i < trailers.length; i += 2)
      if (String(trailers[i]).toLowerCase() === 'grpc-status') return parseStatus(String(trailers[i + 1]));
    return undefined;
  }
  const v = (trailers as Record<string, string | string[]>)['grpc-status'];
  return v === undefined ? undefined : parseStatus(String(v));
}

function parseStatus(v: string): number {
  const n = Number(v.trim());
  // A status that is not a number is a protocol error: UNKNOWN.
  return Number.isInteger(n) && n >= 0 ? n : GRPC_CODES.unknown;
}

const TIMEOUT_UNIT: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** `grpc-timeout` (1-8 digits and a unit: H M S m u n) in ms, or undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string' || !/^\d{1,8}[HMSmun]$/.test(value)) return undefined;
  const ms = Number(value.slice(0, -1)) * (TIMEOUT_UNIT[value.slice(-1)] as number);
  return Math.max(1, Math.ceil(ms));
}

/** The gRPC code for an answer breakwater makes itself. */
const CODE_OF: Record<ProblemKind, number> = {
  'no-route': GRPC_CODES.unimplemented,
  'upstream-connect-failed': GRPC_CODES.unavailable,
  'upstream-connect-timeout': GRPC_CODES.unavailable,
  'upstream-reset': GRPC_CODES.unavailable,
  'upstream-timeout': GRPC_CODES['deadline-exceeded'],
  'upstream-bad-response': GRPC_CODES.internal,
  'request-timeout': GRPC_CODES['deadline-exceeded'],
  'body-timeout': GRPC_CODES['deadline-exceeded'],
  'bad-request': GRPC_CODES.internal,
  'circuit-open': GRPC_CODES.unavailable,
  'rate-limited': GRPC_CODES['resource-exhausted'],
  'bulkhead-full': GRPC_CODES.unavailable,
  degraded: GRPC_CODES.unavailable,
  'no-healthy-endpoint': GRPC_CODES.unavailable,
  'idempotency-key-missing': GRPC_CODES['invalid-argument'],
  'idempotency-key-malformed': GRPC_CODES['invalid-argument'],
  'idempotency-key-mismatch': GRPC_CODES['failed-precondition'],
  'idempotency-conflict': GRPC_CODES.aborted,
  'payload-too-large': GRPC_CODES['resource-exhausted'],
  'headers-too-large': GRPC_CODES.internal,
  'upgrade-refused': GRPC_CODES.internal,
  'shutting-down': GRPC_CODES.unavailable,
  'store-unavailable': GRPC_CODES.unavailable,
  'streaming-limit': GRPC_CODES.unavailable,
  'body-storage-failed': GRPC_CODES.unavailable,
  // (HTTP/1 framing and request-line refusals: a gRPC call over HTTP/2 never gets these.)
  'header-timeout': GRPC_CODES['deadline-exceeded'],
  'method-not-allowed': GRPC_CODES.unimplemented,
  'expectation-failed': GRPC_CODES.internal,
  'transfer-coding-not-implemented': GRPC_CODES.internal,
  'http-version-not-supported': GRPC_CODES.internal,
  'saga-timeout': GRPC_CODES['deadline-exceeded'],
  'saga-unavailable': GRPC_CODES.unavailable,
  'saga-failed': GRPC_CODES.aborted,
  // (gRPC calls are never deferred.)
  'deferred-store-full': GRPC_CODES.unavailable,
  'deferred-store-failed': GRPC_CODES.unavailable,
};

export function grpcCodeForProblem(kind: ProblemKind): number {
  return CODE_OF[kind];
}

/** grpc-message is percent-encoded: printable ASCII but `%` as is, everything else as UTF-8 %XX. */
export function encodeGrpcMessage(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * Answers a gRPC call with a trailers-only error: HTTP 200, `content-type: application/grpc`,
 * `grpc-status` and `grpc-message` in the only HEADERS frame. The problem's extra headers
 * (Retry-After, ...) go along; `connection` never does (HTTP/2 forbids it).
 */
export function sendGrpcProblem(res: ServerResponse, p: Problem): void {
  const code = CODE_OF[p.kind];
  const headers: string[] = [
    'content-type',
    'application/grpc',
    'grpc-status',
    String(code),
    'grpc-message',
    encodeGrpcMessage(p.detail),
  ];
  if (p.requestId !== undefined) headers.push('x-request-id', p.requestId);
  if (p.headers)
    for (let i = 0; i < p.headers.length; i += 2)
      if ((p.headers[i] as string).toLowerCase() !== 'connection')
        headers.push(p.headers[i] as string, p.headers[i + 1] as string);
  sendTrailersOnly(res, 200, headers);
}

/**
 * A gRPC Trailers-Only response: one HEADERS frame that ends the stream. (Node's HTTP/2
 * compatibility layer always waits for trailers, and a client would then see headers without
 * END_STREAM and a bare reset: grpc-js reads that as INTERNAL.) HTTP/1.1: headers and no body.
 */
export function sendTrailersOnly(res: ServerResponse, status: number, headers: readonly string[]): void {
  const stream = responseStream(res);
  if (stream === undefined) {
    if (res.headersSent || res.destroyed) return;
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2)
      if ((headers[i] as string).toLowerCase() !== 'content-length')
        out.push(headers[i] as string, headers[i + 1] as string);
    out.push('content-length', '0');
    res.writeHead(status, out);
    res.end();
    return;
  }
  if (stream.destroyed || stream.headersSent) return; // the client reset the stream meanwhile
  const out: Record<string, string | string[]> = { ':status': String(status) };
  for (let i = 0; i < headers.length; i += 2) {
    const name = (headers[i] as string).toLowerCase();
    const value = headers[i + 1] as string;
    const had = out[name];
    out[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value];
  }
  res.statusCode = status;
  stream.respond(out, { endStream: true });
}
