/**
 * The shapes every policy shares. A call flows one way: whoever makes it builds a RequestContext
 * (the listener for a client's request or WebSocket handshake; breakwater itself for an internal
 * call), the pipeline (outermost policy first) returns an Outcome, and the caller acts on it (the
 * listener commits it to the client). A policy is a factory that takes its validated options and
 * shared services and returns a Layer: a function that wraps the next call. A layer is generic over
 * the response of the call it wraps (`CallResponse`): the same limiter, bulkhead and breaker wrap an
 * HTTP attempt and a WebSocket handshake.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Attempt, AttemptError, BodyTee, ResponseHead } from '../attempt/attempt.js';
import type { RouteModel } from '../config/resolve.js';
import type { Problem } from '../listener/problem.js';
import type { FileBody } from '../listener/request-body.js';
import type { Endpoint, Upstream } from '../upstream/upstream.js';

/**
 * The request as policies and the upstream call read it: its headers by lower-case name, and the
 * list as it arrived (name, value, ...), which is what is forwarded. A listener's IncomingMessage is
 * one as it is; an internal call makes one with `callRequest()`.
 */
export interface CallRequest {
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
}

/** A CallRequest from a header list (name, value, ...), for a call that did not come from a client. */
export function callRequest(rawHeaders: readonly string[]): CallRequest {
  const headers: IncomingHttpHeaders = {};
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    const value = rawHeaders[i + 1] as string;
    const had = headers[name];
    // As Node joins repeated headers: set-cookie as a list, cookie with "; ", the others with ", ".
    if (name === 'set-cookie') headers[name] = [...((had as string[] | undefined) ?? []), value];
    else if (had === undefined) headers[name] = value;
    else headers[name] = `${had}${name === 'cookie' ? '; ' : ', '}${value}`;
  }
  return { headers, rawHeaders };
}

export interface RequestContext {
  readonly req: CallRequest;
  /**
   * The address the call came from: the client connection's peer (captured when it was accepted),
   * or, for an internal call, what its maker says (e.g. the client of the request it replays);
   * undefined: none. `trusted_proxies` and X-Forwarded-For are judged on top of it.
   */
  readonly peer: string | undefined;
  /** The client's response, when a listener is answering one; undefined otherwise. */
  readonly res: ServerResponse | undefined;
  readonly route: RouteModel;
  readonly upstream: Upstream;
  readonly requestId: string;
  readonly method: string;
  /** Path and query sent upstream (after strip_prefix). */
  readonly path: string;
  /** Clock time (`Clock.now()`) when the request arrived. */
  readonly start: number;
  /**
   * The request body: read whole (a Buffer, or a FileBody in a temporary file), the client's stream
   * (request_buffering: false, gRPC), or none.
   */
  body: Readable | Buffer | FileBody | null;
  /** Attempts made so far. */
  attempts: number;
  /** The attempt in flight, aborted if the client goes away. */
  current: Attempt | undefined;
  /**
   * Whether an attempt may have been processed by the upstream: set when an attempt starts, undone
   * when it failed in a way that proves it was not (connect failure, refused HTTP/2 stream). A
   * request that may not be sent twice goes to no other upstream (fallback) once this is set.
   */
  maybeProcessed: boolean;
  /** Endpoints already tried, so a retry prefers another. */
  tried: Endpoint | undefined;
  /** Set when the client went away; layers stop early. */
  clientGone: boolean;
  /**
   * The attempt in flight is not aborted when the client goes away: it runs to its end (within the
   * route's timeouts) so that its answer can be stored for the client's retry (Idempotency-Key).
   */
  keepUpstream: boolean;
  /**
   * Set by the listener when the pipeline's promise settled. A call that runs on after its client
   * left (keepUpstream) keeps what its finishers give back (its bulkhead slot) until then.
   */
  settled: boolean;
  /** Clock time by which the whole request must be done (Infinity: none). */
  deadline: number;
  /** Set when the request deadline passed; layers stop early. */
  expired: boolean;
  /**
   * Run once when the request no longer needs its upstream (bulkhead release, ...): the client
   * response finished or was aborted, or its whole body is buffered for a slow client.
   */
  finishers: (() => void)[] | undefined;
  /** Set when the finishers ran; later ones run at once. */
  finished: boolean;
  /** Whoever wants a copy of the response body as it streams (the Idempotency-Key store). */
  responseTee: ((status: number, headers: readonly string[]) => BodyTee | undefined) | undefined;
  /** Retries skipped, and why (for logs). */
  retrySkipped: string | undefined;
  /** The error code (or cause) of the last attempt that failed, if one did (for logs). */
  upstreamError: string | undefined;
  /** A gRPC call (content-type application/grpc): its outcome is its grpc-status. */
  readonly grpc: boolean;
  /** The call's own deadline from `grpc-timeout` (ms; Infinity: none). */
  readonly grpcTimeout: number;
  /**
   * The response is relayed at the client's pace, never buffered (gRPC, `response_buffering:
   * false`, `Accept: text/event-stream`): its attempts take a share of the upstream's streaming
   * connections.
   */
  readonly unbufferedResponse: boolean;
  /** The call's final grpc-status, once known (logs and metrics). */
  grpcStatus: number | undefined;
  /** Body bytes relayed to the client (logs). */
  bytesOut: number;
}

/** What the listener knows when a request arrives; the rest of a context starts empty. */
export type ContextInit = Pick<
  RequestContext,
  | 'req'
  | 'peer'
  | 'res'
  | 'route'
  | 'upstream'
  | 'requestId'
  | 'method'
  | 'path'
  | 'start'
  | 'body'
  | 'grpc'
  | 'grpcTimeout'
  | 'unbufferedResponse'
>;

/** A call a listener answers: the client's request and response are there. */
export interface ListenerContext extends RequestContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
}

export function newContext<Q extends CallRequest, S extends ServerResponse | undefined>(
  init: ContextInit & { readonly req: Q; readonly res: S },
): RequestContext & { readonly req: Q; readonly res: S } {
  // Every field written out, in one order: an object spread here makes V8 build a slower object
  // (measured: about a third of the throughput on the plain route).
  return {
    req: init.req,
    peer: init.peer,
    res: init.res,
    route: init.route,
    upstream: init.upstream,
    requestId: init.requestId,
    method: init.method,
    path: init.path,
    start: init.start,
    body: init.body,
    attempts: 0,
    current: undefined,
    maybeProcessed: false,
    tried: undefined,
    clientGone: false,
    keepUpstream: false,
    settled: false,
    deadline: Number.POSITIVE_INFINITY,
    expired: false,
    finishers: undefined,
    finished: false,
    responseTee: undefined,
    retrySkipped: undefined,
    upstreamError: undefined,
    grpc: init.grpc,
    grpcTimeout: init.grpcTimeout,
    unbufferedResponse: init.unbufferedResponse,
    grpcStatus: undefined,
    bytesOut: 0,
  };
}

/** Registers `fn` to run when the request no longer needs its upstream (see `finishers`). */
export function onFinish(ctx: RequestContext, fn: () => void): void {
  if (ctx.finished) fn();
  else if (ctx.finishers) ctx.finishers.push(fn);
  else ctx.finishers = [fn];
}

/** Runs the finishers, once. */
export function runFinishers(ctx: RequestContext): void {
  if (ctx.finished) return;
  ctx.finished = true;
  const fs = ctx.finishers;
  if (fs) for (const f of fs) f();
}

/**
 * What every layer knows of a call's response, whatever the call: its head (a status, and for gRPC
 * a grpc-status from the headers) and the attempt behind it, which can be dropped (`discard`) or
 * asked for a gRPC call's final status (`grpcEnd`, from its trailers).
 */
export interface CallResponse {
  readonly type: 'response';
  readonly head: { readonly status: number; readonly grpcStatus?: number | undefined };
  readonly endpoint: Endpoint;
  readonly attempt: {
    discard(): void;
    grpcEnd(): Promise<number | undefined>;
  };
}

/** An HTTP call's response: an upstream attempt whose body waits to be relayed or discarded. */
export interface HttpResponse extends CallResponse {
  readonly attempt: Attempt;
  readonly head: ResponseHead;
  /** Set when a fallback of type upstream answered. */
  readonly fallback?: string;
}

/** An answer breakwater makes itself: a static or cached fallback, or a stored replay. */
export interface LocalOutcome {
  readonly type: 'local';
  readonly status: number;
  readonly headers: readonly string[];
  readonly body: Buffer;
  /** The fallback that made it (x-breakwater-fallback), if one did. */
  readonly fallback: string | undefined;
  /** Seconds since a cached response was stored. */
  readonly age: number | undefined;
  /** A stored response replayed for a repeated Idempotency-Key (Idempotent-Replayed: true). */
  readonly replayed?: boolean;
}

/** The attempt failed before a response (connect, reset, timeout, a malformed answer). */
export interface FailedOutcome {
  readonly type: 'failure';
  readonly error: AttemptError;
  readonly endpoint: Endpoint | undefined;
}

/** A policy answered (429, 503, 504...) without a response from the upstream. */
export interface ProblemOutcome {
  readonly type: 'problem';
  readonly problem: Problem;
}

/** How a call ended. `R` is the kind of response the call makes (an HTTP attempt's by default). */
export type Outcome<R extends CallResponse = HttpResponse> =
  | R
  | LocalOutcome
  | FailedOutcome
  | ProblemOutcome;

/** A call through (part of) a pipeline. */
export type Call<R extends CallResponse = HttpResponse> = (ctx: RequestContext) => Promise<Outcome<R>>;
/** An HTTP request's call: what a route's pipeline is. */
export type Handler = Call<HttpResponse>;

/**
 * An upstream's request pipeline for a call without a client (a fallback of type upstream, a
 * deferred delivery, a saga step): its handler, the upstream, and the route it runs as.
 */
export interface UpstreamPipeline {
  readonly handler: Handler;
  readonly upstream: Upstream;
  readonly route: RouteModel;
}
/** Wraps a call in a policy. Generic layers (limiter, bulkhead, breaker) work over any response. */
export type Layer<R extends CallResponse = HttpResponse> = (next: Call<R>) => Call<R>;

/** Wraps `inner` in `layers`, the first outermost. */
export function compose<R extends CallResponse>(layers: readonly Layer<R>[], inner: Call<R>): Call<R> {
  let call = inner;
  for (let i = layers.length - 1; i >= 0; i--) call = (layers[i] as Layer<R>)(call);
  return call;
}
