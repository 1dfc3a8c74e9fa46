/**
 * One attempt: one request to one endpoint, on undici's dispatch API.
 *
 * The attempt resolves `head` when the response headers arrive and then holds the body (what came
 * with the headers, up to EARLY_MAX bytes, then the parser is paused) until the caller decides:
 * `stream()` relays it to the client (through a ClientRelay, which buffers what a slow client cannot
 * take yet), `discard()` drops it (the retry layer does this). Failures before the headers reject `head` with an AttemptError that names its cause; a
 * failure after the client response started destroys the client connection, so a short body never
 * looks complete. The attempt is settled (its connection back to the pool) when the upstream's
 * part is over, which with a buffered response can be well before the client has it all.
 *
 * This is undici's dispatch handler in its raw form (onConnect/onHeaders/onData/onComplete/onError):
 * the form undici's core calls directly, with header names and values as Buffers, so nothing is
 * parsed into objects only to be flattened again.
 */
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Clock } from '../clock.js';
import { GRPC_CODES, grpcStatusIn, grpcStatusOfTrailers } from './grpc.js';
import { ClientRelay, type CutReason, type RawTrailers, type RelayOwner, type RelayPolicy } from './relay.js';

export type { RawTrailers } from './relay.js';

export type AttemptCause =
  | 'connect-failure'
  | 'connect-timeout'
  | 'reset'
  | 'timeout'
  | 'protocol'
  | 'client-aborted'
  | 'request-body';

export class AttemptError extends Error {
  readonly kind: AttemptCause;
  /**
   * Whether the upstream may have processed the request. False only when it certainly did not: the
   * connection failed or was refused before the request was written (TCP, TLS, connect timeout, a
   * wait for a pooled connection that timed out), or an HTTP/2 upstream refused the stream
   * (REFUSED_STREAM). A request that may not be sent twice is retried only then.
   */
  readonly mayHaveReachedUpstream: boolean;
  readonly code: string | undefined;
  constructor(kind: AttemptCause, message: string, mayHaveReachedUpstream: boolean, code?: string) {
    super(message);
    this.name = 'AttemptError';
    this.kind = kind;
    this.mayHaveReachedUpstream = mayHaveReachedUpstream;
    this.code = code;
  }
}

export interface ResponseHead {
  readonly status: number;
  readonly statusText: string;
  readonly rawHeaders: Buffer[];
  /** gRPC calls: grpc-status when the headers carry it (a trailers-only response). */
  readonly grpcStatus?: number | undefined;
}

export interface AttemptOptions {
  readonly dispatcher: Dispatcher;
  readonly method: string;
  readonly path: string;
  readonly headers: string[];
  readonly body: NodeJS.ReadableStream | Buffer | null;
  /** Time allowed until the response headers arrive, queueing for a connection included (ms). */
  readonly timeout: number;
  /** The clock of that timer. */
  readonly clock: Clock;
  /** Longest silence while the response body streams (ms). */
  readonly bodyTimeout: number;
  /** The endpoint's constant `servername` for undici (https); see Endpoint.servername. */
  readonly servername?: string | undefined;
  /** Called once when the attempt is over: body relayed, failed, aborted or discarded. */
  readonly onSettled?: (() => void) | undefined;
  /** A gRPC call: read grpc-status from the headers and the trailers. */
  readonly grpc?: boolean;
  /**
   * An HTTP/2 upstream: its stream is never paused. undici 7 drops the DATA still buffered in a
   * paused HTTP/2 stream when the trailers arrive (it stops listening for data then), which would
   * end a response short, with its trailers, as if whole. A client that falls further behind than
   * the response buffer (or, unbuffered, `H2_MAX_BACKLOG`) is cut instead.
   */
  readonly h2?: boolean;
}

/**
 * Body bytes an HTTP/1.1 attempt reads before its caller decides what to do with the response
 * (stream, collect, discard); beyond this the parser is paused until then.
 */
const EARLY_MAX = 64 * 1024;

/** No buffering, no send_timeout (the default of `stream()`). */
const UNBUFFERED: RelayPolicy = { buffer: undefined, sendTimeout: 0 };

/**
 * Receives a copy of the body as it streams (the response cache, the Idempotency-Key store); `end`
 * only when it was whole, `fail` when it will not be (the upstream failed or was cut mid-body).
 */
export interface BodyTee {
  data(chunk: Buffer): void;
  end(): void;
  fail?(): void;
}

export interface StreamResult {
  /** True when the whole body reached the client. */
  readonly complete: boolean;
  readonly bytes: number;
  readonly error?: AttemptError | undefined;
}

const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  'ECONNABORTED',
]);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
/** Certificate verification failures as Node names them (OpenSSL's X509_V_ERR_* without the prefix). */
const CERTIFICATE_FAILURES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_CRL',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CRL_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CRL_NOT_YET_VALID',
  'CRL_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD',
  'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
]);

/**
 * Whether an error is a failed TLS handshake: the certificate was refused (unknown CA, wrong name,
 * expired, ...), or OpenSSL failed or received an alert (no common version, the peer refused our
 * client certificate, an http:// server behind an https:// URL). Before the connection was handed to
 * the request, or an alert from the peer, no request reached the upstream's application.
 */
function isTlsHandshakeFailure(code: string, connected: boolean): boolean {
  // After the handshake only an alert about our client certificate (TLS 1.3 servers refuse it
  // late) still means nothing was served; any other alert then may follow a served request.
  if (
    code.startsWith('ERR_SSL_') &&
    code.includes('_ALERT_') &&
    (!connected ||
      code.includes('CERTIFICATE') ||
      code.includes('UNKNOWN_CA') ||
      code.includes('ACCESS_DENIED'))
  )
    return true;
  return (
    !connected &&
    (CERTIFICATE_FAILURES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_'))
  );
}

/** Names the cause of an error undici reported. */
export function classify(
  err: Error & { code?: string },
  connected: boolean,
  sentHeaders: boolean,
): AttemptError {
  if (err instanceof AttemptError) return err;
  const code = err.code ?? '';
  if (code === 'UND_ERR_CONNECT_TIMEOUT')
    return new AttemptError('connect-timeout', 'connecting to the upstream timed out', false, code);
  if (CONNECT_FAILURES.has(code) && !connected)
    return new AttemptError('connect-failure', `could not connect to the upstream (${code})`, false, code);
  if (isTlsHandshakeFailure(code, connected)) {
    // OpenSSL's messages carry a long prefix; its `reason` is the readable part.
    const why = (err as { reason?: unknown }).reason;
    const detail = typeof why === 'string' && code.startsWith('ERR_SSL_') ? why : err.message;
    return new AttemptError(
      'connect-failure',
      `upstream TLS handshake failed: ${code} (${detail})`,
      false,
      code,
    );
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT')
    return new AttemptError('timeout', 'the upstream did not send response headers in time', true, code);
  if (code === 'UND_ERR_BODY_TIMEOUT')
    return new AttemptError('timeout', 'the upstream stopped sending the response body', true, code);
  if (
    err.name === 'HTTPParserError' ||
    code.startsWith('HPE_') ||
    code === 'UND_ERR_HEADERS_OVERFLOW' ||
    code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' ||
    code === 'UND_ERR_INFO'
  ) {
    return new AttemptError(
      'protocol',
      `the upstream sent a malformed response (${code}: ${err.message})`,
      true,
      code,
    );
  }
  // RFC 9113 8.7: a stream refused with REFUSED_STREAM was closed before any processing, so the
  // request may be sent again whatever its method (Node's message names the code).
  if (code === 'ERR_HTTP2_STREAM_ERROR' && err.message.endsWith('NGHTTP2_REFUSED_STREAM'))
    return new AttemptError(
      'reset',
      'the upstream refused the HTTP/2 stream (REFUSED_STREAM) before processing it',
      false,
      'REFUSED_STREAM',
    );
  if (code === 'BW_BODY_TOO_LARGE') return new AttemptError('request-body', err.message, sentHeaders, code);
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH')
    return new AttemptError(
      'request-body',
      'the request body did not match its Content-Length',
      sentHeaders,
      code,
    );
  if (RESETS.has(code) || CONNECT_FAILURES.has(code)) {
    return new AttemptError(
      'reset',
      `the upstream closed the connection (${code || err.message})`,
      sentHeaders,
      code,
    );
  }
  if (code === 'UND_ERR_ABORTED')
    return new AttemptError('client-aborted', 'the request was aborted', sentHeaders, code);
  return new AttemptError('reset', `upstream error: ${err.message}`, sentHeaders, code || undefined);
}

enum State {
  Waiting = 0,
  Headers = 1,
  Streaming = 2,
  Discarded = 3,
  Done = 4,
}

export class Attempt implements Dispatcher.DispatchHandler, RelayOwner {
  readonly head: Promise<ResponseHead>;
  private resolveHead!: (h: ResponseHead) => void;
  private rejectHead!: (e: AttemptError) => void;
  private state = State.Waiting;
  private abortFn: ((err: Error) => void) | undefined;
  private pendingAbort: Error | undefined;
  private timer: unknown;
  private resumeFn: (() => void) | undefined;
  private relay: ClientRelay | BufferSink | DropSink | undefined;
  private bytes = 0;
  private finish: ((r: StreamResult) => void) | undefined;
  private connected = false;
  /** Chunks and the end that came before stream() was called (HEAD, 204, tiny bodies). */
  private early: Buffer[] | undefined;
  private earlyBytes = 0;
  private ended: RawTrailers | undefined;
  private upstreamDone: ((arg: unknown) => void) | undefined;
  private upstreamDoneArg: unknown;
  private extraSettled: (() => void) | undefined;
  private failure: AttemptError | undefined;
  private settled = false;
  private tee: BodyTee | undefined;
  /** gRPC: the call's status once known; whoever waits for it (`grpcEnd`). */
  grpcStatus: number | undefined;
  private grpcWaiters: ((code: number | undefined) => void)[] | undefined;

  constructor(private readonly opts: AttemptOptions) {
    this.head = new Promise<ResponseHead>((resolve, reject) => {
      this.resolveHead = resolve;
      this.rejectHead = reject;
    });
    // No catch of its own: the one caller (pipeline/upstream-call.ts) handles a rejected head in
    // the same turn it starts the attempt, and keeps that handler whatever happens later.
  }

  start(): this {
    const o = this.opts;
    this.timer = o.clock.setTimeout(this.onTimeout, o.timeout);
    try {
      const options: Dispatcher.DispatchOptions & { servername?: string | undefined } = {
        path: o.path,
        method: o.method,
        headers: o.headers,
        body: o.body as Dispatcher.DispatchOptions['body'],
        headersTimeout: 0,
        bodyTimeout: o.bodyTimeout,
        servername: o.servername,
      };
      o.dispatcher.dispatch(options, this);
    } catch (err) {
      this.onError(err as Error);
    }
    return this;
  }

  private readonly onTimeout = (): void => {
    this.timer = undefined;
    this.abort(
      new AttemptError(
        'timeout',
        `the upstream did not answer within ${this.opts.timeout} ms`,
        this.connected,
      ),
    );
  };

  /** Aborts the attempt; safe to call at any time, also before undici has a connection for it. */
  abort(err: Error): void {
    if (this.state === State.Done) return;
    if (this.ended !== undefined) {
      // undici is done with this request (the whole response was read ahead, not yet handed on):
      // its abort would do nothing, so the attempt fails here, and the rest is never handed on.
      this.ended = undefined;
      this.early = undefined;
      this.onError(err);
      return;
    }
    if (this.abortFn) this.abortFn(err);
    else {
      this.pendingAbort = err;
      // Queued without a connection: fail now; undici drops the request when it is dispatched.
      this.onError(err);
    }
  }

  /**
   * The client left a request whose answer is kept for its retry (Idempotency-Key). Before the
   * answer the attempt runs on (whoever awaits it reads it); mid-body, the rest of the body is read
   * for the tee alone (the client relay is dropped); with no tee to feed, it is aborted with `err`.
   */
  clientLeft(err: Error): void {
    if (this.state !== State.Streaming) return;
    const relay = this.relay;
    if (this.tee === undefined || !(relay instanceof ClientRelay)) {
      this.abort(err);
      return;
    }
    this.relay = DROP;
    relay.fail();
    this.relayed(false);
    // The upstream may wait for a client that is gone.
    this.resumeFn?.();
  }

  /** Drops the response (the retry layer moves on); closes the upstream connection. */
  discard(): void {
    if (this.state === State.Done || this.state === State.Discarded) return;
    this.state = State.Discarded;
    this.abortFn?.(new AttemptError('client-aborted', 'response discarded', true));
    this.settle();
    if (this.opts.grpc) this.endGrpc(this.grpcStatus);
  }

  /**
   * Relays status, headers and body to the client; resolves when the client response is over
   * (whole, or broken). `policy`: whether what a slow client cannot take yet is buffered, and its
   * send_timeout. `upstreamDone` is called when the upstream's part ended while the client still
   * reads the buffered rest.
   */
  stream<T>(
    res: ServerResponse,
    status: number,
    headers: string[],
    tee?: BodyTee,
    policy: RelayPolicy = UNBUFFERED,
    upstreamDone?: (arg: T) => void,
    arg?: T,
  ): Promise<StreamResult> {
    if (this.state !== State.Headers) {
      tee?.fail?.();
      return Promise.resolve({ complete: false, bytes: 0, error: this.failure });
    }
    this.state = State.Streaming;
    this.tee = tee;
    this.upstreamDone = upstreamDone as ((arg: unknown) => void) | undefined;
    this.upstreamDoneArg = arg;
    res.writeHead(status, headers);
    this.relay = new ClientRelay(res, policy, this, this.opts.h2 === true);
    const done = new Promise<StreamResult>((resolve) => {
      this.finish = resolve;
    });
    // A body (or its end) that arrived while the parser was being paused.
    if (this.early) {
      for (const chunk of this.early) this.onData(chunk);
      this.early = undefined;
    }
    if (this.ended !== undefined) {
      this.onComplete(this.ended);
      return done;
    }
    this.resumeFn?.();
    return done;
  }

  /**
   * Reads the whole body into memory instead of relaying it (calls breakwater makes itself:
   * deferred deliveries, saga steps). A body over `maxBytes` fails the attempt (never a cut-off
   * body passed off as whole).
   */
  collect(maxBytes: number): Promise<StreamResult & { readonly body: Buffer }> {
    if (this.state !== State.Headers) {
      return Promise.resolve({ complete: false, bytes: 0, error: this.failure, body: EMPTY });
    }
    this.state = State.Streaming;
    const sink = new BufferSink(maxBytes, this);
    this.relay = sink;
    const done = new Promise<StreamResult>((resolve) => {
      this.finish = resolve;
    });
    if (this.early) {
      for (const chunk of this.early) this.onData(chunk);
      this.early = undefined;
    }
    if (this.ended !== undefined) this.onComplete(this.ended);
    else this.resumeFn?.();
    return done.then((r) => ({ ...r, body: r.complete ? sink.body() : EMPTY }));
  }

  /** Also calls `fn` when the attempt is settled (at once if it is). */
  whenSettled(fn: () => void): void {
    if (this.settled) fn();
    else this.extraSettled = fn;
  }

  /** Why breakwater cut the client, if it did (send_timeout, ...): the access log's close reason. */
  get cutReason(): CutReason | undefined {
    return this.relay?.cutReason;
  }

  /** Where the response was buffered for a slow client, if it was: memory only, or a file too. */
  get buffered(): 'memory' | 'file' | undefined {
    return this.relay?.buffered;
  }

  // --- the relay's side (RelayOwner) ---

  resumeUpstream(): void {
    this.resumeFn?.();
  }

  stopUpstream(_reason: CutReason, message: string): void {
    if (this.state === State.Streaming) this.abort(new AttemptError('client-aborted', message, true));
  }

  relayed(complete: boolean): void {
    this.finish?.({ complete, bytes: this.bytes });
  }

  // --- undici dispatch handler ---

  onConnect(abort: (err?: Error) => void): void {
    this.connected = true;
    if (this.pendingAbort) {
      abort(this.pendingAbort);
      return;
    }
    this.abortFn = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // Interim responses (102, 103) are not the answer: wait for the final one.
    if (statusCode < 200) return true;
    if (this.state !== State.Waiting) return true;
    if (this.timer !== undefined) {
      this.opts.clock.clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.state = State.Headers;
    this.resumeFn = resume;
    const grpcStatus = this.opts.grpc ? grpcStatusIn(rawHeaders) : undefined;
    this.grpcStatus = grpcStatus;
    this.resolveHead({ status: statusCode, statusText, rawHeaders, grpcStatus });
    // HTTP/1.1: the parser reads on into `early` (up to EARLY_MAX) while the caller decides, so a
    // small response that came whole in one read is not paused, put back on the socket and read
    // again. An HTTP/2 stream waits (see AttemptOptions.h2).
    return this.opts.h2 !== true;
  }

  /**
   * gRPC: resolves with the call's grpc-status when the response is over (from the trailers, or the
   * headers of a trailers-only response): UNKNOWN when none came, UNAVAILABLE when the upstream
   * broke the stream, undefined when breakwater dropped the response (client gone, retried).
   */
  grpcEnd(): Promise<number | undefined> {
    if (this.state === State.Done) return Promise.resolve(this.grpcStatus);
    return new Promise((resolve) => {
      if (this.grpcWaiters) this.grpcWaiters.push(resolve);
      else this.grpcWaiters = [resolve];
    });
  }

  private endGrpc(code: number | undefined): void {
    this.grpcStatus = code;
    const waiters = this.grpcWaiters;
    if (!waiters) return;
    this.grpcWaiters = undefined;
    for (const w of waiters) w(code);
  }

  onData(chunk: Buffer): boolean {
    if (this.state === State.Headers) {
      if (this.early) this.early.push(chunk);
      else this.early = [chunk];
      this.earlyBytes += chunk.length;
      return this.opts.h2 !== true && this.earlyBytes < EARLY_MAX;
    }
    if (this.state !== State.Streaming) return true;
    this.bytes += chunk.length;
    this.tee?.data(chunk);
    return (this.relay as ClientRelay | BufferSink | DropSink).data(chunk);
  }

  /** Trailers: a flat [name, value, ...] list from HTTP/1.1, an object from HTTP/2. */
  onComplete(trailers: RawTrailers): void {
    if (this.state === State.Headers) {
      this.ended = trailers;
      // The connection may serve another request now: never resume its parser from here.
      this.resumeFn = undefined;
      return;
    }
    if (this.state === State.Streaming) {
      const relay = this.relay as ClientRelay | BufferSink | DropSink;
      // The upstream's body is whole (the cache and the Idempotency-Key store may keep it), and its
      // connection goes back to the pool, whether or not the client has it all yet.
      this.tee?.end();
      this.settle();
      if (this.opts.grpc)
        this.endGrpc(this.grpcStatus ?? grpcStatusOfTrailers(trailers) ?? GRPC_CODES.unknown);
      relay.end(trailers);
      if (relay.draining) this.upstreamDone?.(this.upstreamDoneArg);
      return;
    }
    this.settle();
    if (this.opts.grpc) this.endGrpc(undefined);
  }

  private settle(): void {
    this.state = State.Done;
    this.resumeFn = undefined;
    if (this.settled) return;
    this.settled = true;
    this.opts.onSettled?.();
    this.extraSettled?.();
  }

  onError(err: Error): void {
    if (this.timer !== undefined) {
      this.opts.clock.clearTimeout(this.timer);
      this.timer = undefined;
    }
    const prev = this.state;
    if (prev === State.Done) return;
    this.settle();
    const failure = classify(err, this.connected, this.connected);
    this.failure = failure;
    if (prev === State.Waiting) {
      this.rejectHead(failure);
    } else if (prev === State.Streaming) {
      // Never let a cut-off body pass for a whole one: abort the client connection (and drop what
      // was buffered for it).
      this.tee?.fail?.();
      this.relay?.fail();
      this.finish?.({ complete: false, bytes: this.bytes, error: failure });
    }
    // A gRPC stream the upstream broke is UNAVAILABLE; one breakwater dropped has no status.
    if (this.opts.grpc && prev !== State.Waiting)
      this.endGrpc(
        failure.kind === 'client-aborted' ? undefined : (this.grpcStatus ?? GRPC_CODES.unavailable),
      );
  }
}

const EMPTY = Buffer.alloc(0);

/** Where the rest of a body goes once its client left and only its tee wants it: nowhere. */
class DropSink {
  readonly draining = false;
  readonly cutReason: CutReason | undefined = undefined;
  readonly buffered: 'memory' | 'file' | undefined = undefined;
  data(_chunk: Buffer): boolean {
    return true;
  }
  end(_trailers: RawTrailers): void {}
  fail(): void {}
}
const DROP = new DropSink();

/** Where `collect()` puts a body: memory, up to a limit. */
class BufferSink {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  readonly draining = false;
  readonly cutReason: CutReason | undefined = undefined;
  readonly buffered: 'memory' | 'file' | undefined = undefined;

  constructor(
    private readonly max: number,
    private readonly owner: Attempt,
  ) {}

  data(chunk: Buffer): boolean {
    this.size += chunk.length;
    if (this.size > this.max) {
      this.owner.abort(
        new AttemptError(
          'protocol',
          `the upstream's response body is over ${this.max} bytes`,
          true,
          'BW_RESPONSE_TOO_LARGE',
        ),
      );
      return false;
    }
    this.chunks.push(chunk);
    return true;
  }

  end(_trailers: RawTrailers): void {
    this.owner.relayed(true);
  }

  fail(): void {
    this.chunks.length = 0;
  }

  body(): Buffer {
    return this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks, this.size);
  }
}
