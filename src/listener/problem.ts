/**
 * `application/problem+json` answers (RFC 9457) for everything breakwater says itself.
 * The `type` URIs are stable identifiers, listed in docs/errors.md.
 */
import { type ServerResponse, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { AttemptError } from '../attempt/attempt.js';
import { isGrpcRequest, sendGrpcProblem } from '../attempt/grpc.js';
import type { Problem, ProblemKind } from './problem-types.js';
import { responseStream } from './protocol.js';

export type { Problem, ProblemKind } from './problem-types.js';

const TITLES: Record<ProblemKind, [number, string]> = {
  'no-route': [404, 'No route matches this request'],
  'upstream-connect-failed': [502, 'Could not connect to the upstream'],
  'upstream-connect-timeout': [504, 'Connecting to the upstream timed out'],
  'upstream-reset': [502, 'The upstream closed the connection before answering'],
  'upstream-timeout': [504, 'The upstream did not answer in time'],
  'upstream-bad-response': [502, 'The upstream sent a malformed response'],
  'request-timeout': [504, 'The request deadline passed'],
  'body-timeout': [408, 'The request body did not arrive in time'],
  'shutting-down': [503, 'breakwater is shutting down'],
  'bad-request': [400, 'Bad request'],
  'circuit-open': [503, 'The circuit breaker for this upstream is open'],
  'rate-limited': [429, 'Too many requests'],
  'bulkhead-full': [503, 'The upstream is at its concurrency limit'],
  'no-healthy-endpoint': [503, 'No endpoint of the upstream is healthy'],
  degraded: [503, 'The upstream is degraded and this request has no fallback answer'],
  'idempotency-key-missing': [400, 'An Idempotency-Key header is required'],
  'idempotency-key-malformed': [400, 'The Idempotency-Key header is malformed'],
  'idempotency-key-mismatch': [422, 'The Idempotency-Key was used with a different request'],
  'idempotency-conflict': [409, 'A request with this Idempotency-Key is in progress'],
  'payload-too-large': [413, 'The request body is too large'],
  'headers-too-large': [431, 'The request headers are too large'],
  'upgrade-refused': [403, 'This protocol upgrade is not allowed'],
  'store-unavailable': [503, 'The shared store (Redis) is unreachable'],
  'streaming-limit': [503, "The upstream's connections for streaming requests are all in use"],
  'body-storage-failed': [507, 'breakwater could not store the body in a temporary file'],
  'header-timeout': [408, 'The request headers did not arrive in time'],
  'method-not-allowed': [405, 'This method is not allowed'],
  'expectation-failed': [417, 'The expectation in the Expect header cannot be met'],
  'transfer-coding-not-implemented': [
    501,
    'The request uses a transfer coding breakwater does not implement',
  ],
  'http-version-not-supported': [505, 'This HTTP version is not supported'],
  'saga-timeout': [504, 'The steps of the saga did not all succeed within its timeout'],
  'saga-unavailable': [503, 'The saga cannot run now'],
  'saga-failed': [502, 'A step of the saga failed'],
  'deferred-store-full': [503, 'The queue of deferred requests is full'],
  'deferred-store-failed': [503, 'The request could not be stored for later delivery'],
};

/** Whether `kind` names a problem type (a kind read back from a saga log). */
export function isProblemKind(kind: string): kind is ProblemKind {
  return Object.hasOwn(TITLES, kind);
}

export function problem(
  kind: ProblemKind,
  detail: string,
  extra: Partial<Omit<Problem, 'kind' | 'detail'>> = {},
): Problem {
  return { kind, status: extra.status ?? (TITLES[kind] as [number, string])[0], detail, ...extra };
}

/** The problem's JSON body; `members`: extension members (RFC 9457 3.2), e.g. a saga's id. */
export function problemBody(p: Problem, members?: Readonly<Record<string, unknown>>): string {
  return JSON.stringify({
    type: `urn:breakwater:problem:${p.kind}`,
    title: TITLES[p.kind][1],
    status: p.status,
    detail: p.detail,
    ...(p.upstream !== undefined ? { upstream: p.upstream } : {}),
    ...(p.requestId !== undefined ? { request_id: p.requestId } : {}),
    ...members,
  });
}

function problemHeaders(p: Problem, body: string, h2 = false): string[] {
  const headers: string[] = [
    'content-type',
    'application/problem+json',
    'content-length',
    String(Buffer.byteLength(body)),
    'cache-control',
    'no-store',
  ];
  if (p.requestId !== undefined) headers.push('x-request-id', p.requestId);
  if (p.headers) {
    // HTTP/2 forbids connection-specific headers (`connection: close` ends only HTTP/1.1).
    for (let i = 0; i < p.headers.length; i += 2)
      if (!h2 || (p.headers[i] as string).toLowerCase() !== 'connection')
        headers.push(p.headers[i] as string, p.headers[i + 1] as string);
  }
  return headers;
}

/**
 * Whether an answer can no longer be written: it started, or the client is gone. (An HTTP/2
 * compatibility response has no `destroyed` of its own: its stream's tells.)
 */
export function answered(res: ServerResponse): boolean {
  if (res.headersSent || res.destroyed) return true;
  return responseStream(res)?.destroyed ?? false;
}

/** Writes a problem response unless the response has already started. */
export function sendProblem(
  res: ServerResponse,
  p: Problem,
  members?: Readonly<Record<string, unknown>>,
): void {
  if (answered(res)) return;
  // A gRPC client reads grpc-status, not an HTTP status or a JSON body.
  if (isGrpcRequest(res.req)) {
    sendGrpcProblem(res, p);
    return;
  }
  const body = problemBody(p, members);
  res.writeHead(p.status, problemHeaders(p, body, responseStream(res) !== undefined));
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

/**
 * Writes a problem response on a raw client socket (an upgrade request has no ServerResponse) and
 * closes the connection once it is written.
 */
export function endWithProblem(socket: Duplex, p: Problem): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = problemBody(p);
  const headers = problemHeaders(p, body);
  let head = `HTTP/1.1 ${p.status} ${STATUS_CODES[p.status] ?? ''}\r\n`;
  for (let i = 0; i < headers.length; i += 2) {
    if ((headers[i] as string).toLowerCase() !== 'connection') head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  }
  socket.end(`${head}connection: close\r\n\r\n${body}`, () => socket.destroy());
}

/** Maps a failed attempt to the problem the client sees. */
export function failureProblem(err: AttemptError, upstream: string, requestId: string): Problem {
  const extra = { upstream, requestId };
  switch (err.kind) {
    case 'connect-failure':
      return problem('upstream-connect-failed', err.message, extra);
    case 'connect-timeout':
      return problem('upstream-connect-timeout', err.message, extra);
    case 'timeout':
      return problem('upstream-timeout', err.message, extra);
    case 'protocol':
      return problem('upstream-bad-response', err.message, extra);
    case 'request-body':
      return err.code === 'BW_BODY_TOO_LARGE'
        ? problem('payload-too-large', err.message, { ...extra, headers: ['connection', 'close'] })
        : problem('bad-request', err.message, extra);
    default:
      return problem('upstream-reset', err.message, extra);
  }
}
