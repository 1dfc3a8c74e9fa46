/**
 * What a data-plane listener does with each request: route it, run the upstream's pipeline, commit
 * the outcome to the client, and record one access-log line and the request metrics.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import http2 from 'node:http2';
import { type Duplex, Transform, type TransformCallback } from 'node:stream';
import { type Attempt, AttemptError, type BodyTee, type ResponseHead } from '../attempt/attempt.js';
import { grpcCodeForProblem, isGrpcRequest, parseGrpcTimeout, sendTrailersOnly } from '../attempt/grpc.js';
import type { HandshakeResponse } from '../attempt/handshake.js';
import { clientResponseHeaders, incomingRequestId, isHopByHop, newRequestId } from '../attempt/headers.js';
import type { RelayPolicy } from '../attempt/relay.js';
import type { Clock } from '../clock.js';
import type { BufferingModel, ListenerModel, RouteModel } from '../config/resolve.js';
import type { DeferredRoute } from '../deferred/intake.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { UpstreamStats } from '../observability/upstream-stats.js';
import {
  type Call,
  type Handler,
  type ListenerContext,
  newContext,
  type Outcome,
  onFinish,
  runFinishers,
} from '../pipeline/types.js';
import type { SagaTrigger } from '../sagas/service.js';
import type { TempFileError, TempFiles } from '../stores/temp-files.js';
import type { Endpoint, Upstream } from '../upstream/upstream.js';
import { peerAddress } from './client-address.js';
import { connectionOf } from './connection.js';
import { answered, endWithProblem, failureProblem, type Problem, problem, sendProblem } from './problem.js';
import { isHttp2, requestStream } from './protocol.js';
import { Recorder, responseComplete } from './recorder.js';
import { bufferBody, watchBodyIdle } from './request-body.js';
import { absoluteTarget, normalizePath, Router, upstreamPath } from './router.js';
import { upgradeRefusal, WebSocketTunnels } from './websocket.js';

export interface HandlerDeps {
  readonly listener: ListenerModel;
  readonly upstreams: ReadonlyMap<string, Upstream>;
  readonly pipelines: ReadonlyMap<RouteModel, Handler>;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly accessLog: boolean;
  readonly accessLogHeaders: readonly string[];
  /** True once shutdown began: responses carry Connection: close. */
  readonly draining: () => boolean;
  /** The WebSocket handshake pipeline of each route (admission, then the handshake). */
  readonly upgrades: ReadonlyMap<RouteModel, Call<HandshakeResponse>>;
  /** Time: timings, the request-body deadline. */
  readonly clock: Clock;
  /** Live traffic figures of an upstream (GET /state, the status page). */
  readonly statsOf?: (upstream: string) => UpstreamStats | undefined;
  /** Temporary files of buffered bodies, and the buffering settings. */
  readonly tempFiles: TempFiles;
  readonly buffering: BufferingModel;
  /** The saga a request starts, matched before the routes (only when a saga starts on this listener). */
  readonly sagaTrigger?: ((method: string, path: string) => SagaTrigger | undefined) | undefined;
  /** Routes with `deferred:`: their intake (undefined: none on this listener). */
  readonly deferred?: ReadonlyMap<RouteModel, DeferredRoute> | undefined;
  /** The response cache's tee for this response, when it should be stored. */
  readonly teeFor?: (
    ctx: ListenerContext,
    head: ResponseHead,
  ) => ((clientHeaders: readonly string[]) => BodyTee) | undefined;
}

const CONNECTION_CLOSE = ['connection', 'close'];
/** `x-breakwater-attempts` for the usual counts, made once (never changed by who reads them). */
const ATTEMPTS_HEADERS: readonly string[][] = Array.from({ length: 11 }, (_, n) => [
  'x-breakwater-attempts',
  String(n),
]);
/** Requests read after a refusal on one connection before it is cut (the answers before it lost). */
const MAX_IGNORED = 32;
/** The methods breakwater names in `Allow` (OPTIONS *, a refused TRACE or CONNECT). */
export const ALLOWED_METHODS = 'GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH';
const FOREIGN_TARGET = 'absolute-form targets for other hosts are refused (breakwater is not an open proxy)';
const CLIENT_GONE = new AttemptError('client-aborted', 'the client closed the connection', true);
const BODY_STALLED = new AttemptError('client-aborted', 'the client stopped sending the request body', true);
/** An unbuffered response by its headers: an event stream, or the opt-out header saying `no`. */
const EVENT_STREAM = 1;
const OPTED_OUT = 2;

const CONTENT_TYPE = Buffer.from('content-type', 'latin1');
const EVENT_STREAM_TYPE = Buffer.from('text/event-stream', 'latin1');
const NO = Buffer.from('no', 'latin1');

/** Whether `buf` from `at` starts with `lower` (ASCII lower case), ignoring case; no allocation. */
function startsWithLower(buf: Buffer, at: number, lower: Buffer): boolean {
  if (buf.length - at < lower.length) return false;
  for (let i = 0; i < lower.length; i++) {
    const c = buf[at + i] as number;
    if ((c >= 65 && c <= 90 ? c + 32 : c) !== lower[i]) return false;
  }
  return true;
}

/**
 * Whether a response asks not to be buffered: `content-type: text/event-stream`, or the opt-out
 * header (`optOut`, its lower-case name as bytes) with the value `no`. Compared byte by byte: a
 * response costs a few length comparisons and allocates nothing.
 */
function unbufferedKind(raw: readonly Buffer[], optOut: Buffer): number {
  let kind = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as Buffer;
    if (name.length === CONTENT_TYPE.length && startsWithLower(name, 0, CONTENT_TYPE)) {
      const v = raw[i + 1] as Buffer;
      if (startsWithLower(v, skipSpaces(v), EVENT_STREAM_TYPE)) return EVENT_STREAM;
    } else if (name.length === optOut.length && startsWithLower(name, 0, optOut)) {
      const v = raw[i + 1] as Buffer;
      const at = skipSpaces(v);
      if (startsWithLower(v, at, NO) && skipSpaces(v, at + NO.length) === v.length) kind = OPTED_OUT;
    }
  }
  return kind;
}

/** The first index of `buf` from `from` that is not a space or tab. */
function skipSpaces(buf: Buffer, from = 0): number {
  let i = from;
  while (i < buf.length && (buf[i] === 32 || buf[i] === 9)) i++;
  return i;
}

/** The request asks for an event stream (browsers' EventSource always says so). */
function wantsEventStream(req: IncomingMessage): boolean {
  return req.headers.accept?.includes('text/event-stream') === true;
}

/** The client gets a 507 (disk or quota full) or 503 `body-storage-failed`. */
function storageProblem(err: TempFileError, requestId: string, what: string): Problem {
  return problem(
    'body-storage-failed',
    `${what} could not be stored in a temporary file (${err.errno ?? err.message})`,
    {
      status: err.noSpace ? 507 : 503,
      requestId,
      headers: CONNECTION_CLOSE,
    },
  );
}

const BODY_UNPARSABLE = new AttemptError('client-aborted', 'the request body could not be parsed', true);

/** An error of Node's HTTP/1 parser or server, as the 'clientError' event gives it. */
export interface ClientError extends Error {
  readonly code?: string;
  /** llhttp's description of a parse error (a fixed text, never the client's bytes). */
  readonly reason?: string;
}

function bothTees(a: BodyTee, b: BodyTee): BodyTee {
  return {
    data: (chunk) => {
      a.data(chunk);
      b.data(chunk);
    },
    end: () => {
      a.end();
      b.end();
    },
    fail: () => {
      a.fail?.();
      b.fail?.();
    },
  };
}

function withHeaders(p: Problem, extra: readonly string[] | undefined): Problem {
  return extra ? { ...p, headers: [...(p.headers ?? []), ...extra] } : p;
}

/** A request past the steps before its pipeline: its route, and its path read once. */
/** A request that starts a saga: its trigger and the path and query with the normalized path. */
interface SagaRouted {
  readonly saga: SagaTrigger;
  readonly url: string;
}

interface Routed {
  readonly route: RouteModel;
  readonly method: string;
  /** The normalized path (no query). */
  readonly pathOnly: string;
  /** Path and query with the normalized path. */
  readonly url: string;
}

export class ProxyHandler {
  private router: Router;
  /** Metrics and the access log of every call this listener answers (HTTP and WebSocket). */
  private recorder: Recorder;
  private readonly inflight: { inc(): void; dec(): void };
  /** How responses reach the client: buffered for a slow client, or at its pace (per listener). */
  private bufferedRelay: RelayPolicy;
  private directRelay: RelayPolicy;
  /** `buffering.opt_out_header`, lower case, as bytes. */
  private optOutHeader: Buffer;
  /** Open WebSocket tunnels (kept across reloads, cut when the drain timeout passes). */
  readonly tunnels = new WebSocketTunnels();

  constructor(private deps: HandlerDeps) {
    this.router = new Router(deps.listener.routes);
    this.recorder = recorderOf(deps);
    this.inflight = deps.metrics.inflight.labels(deps.listener.name);
    [this.bufferedRelay, this.directRelay] = relayPolicies(deps);
    this.optOutHeader = Buffer.from(deps.buffering.optOutHeader, 'latin1');
  }

  /**
   * Swaps in a new config's routes and pipelines. Requests that already started keep the route,
   * pipeline and upstream they started with; the next request sees the new ones.
   */
  update(deps: HandlerDeps): void {
    this.deps = deps;
    this.router = new Router(deps.listener.routes);
    this.recorder = recorderOf(deps);
    [this.bufferedRelay, this.directRelay] = relayPolicies(deps);
    this.optOutHeader = Buffer.from(deps.buffering.optOutHeader, 'latin1');
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    // The protocol is told by the object Node made, never by the version in the request line.
    const conn = isHttp2(req) ? undefined : connectionOf(req.socket);
    if (conn !== undefined) {
      // A connection whose earlier request was refused closes once that answer is out: a request
      // pipelined behind it (possibly smuggled) is neither forwarded nor answered. (A client that
      // keeps pipelining meanwhile is cut off: Node would hold every such request until the close.)
      if (conn.refused) {
        if (++conn.ignored > MAX_IGNORED) req.socket.destroy();
        return;
      }
      // Answers owed on the connection, so that one written on the raw socket waits its turn.
      conn.begin(res);
      // An HTTP/1 request line says HTTP/1.0 or HTTP/1.1, or the request is not read any further.
      if (!isHttp1RequestLine(req)) {
        const start = this.deps.clock.now();
        const requestId = newRequestId();
        this.inflight.inc();
        res.once('close', () => this.record(req, res, undefined, requestId, start, 0));
        refuseConnection(req);
        sendProblem(res, requestLineProblem(req, requestId));
        return;
      }
    }
    // `OPTIONS *` asks about the server itself: breakwater answers, it is not a path to forward.
    if (req.url === '*' && req.method === 'OPTIONS') {
      res.writeHead(200, ['allow', ALLOWED_METHODS, 'content-length', '0']);
      res.end();
      return;
    }
    if (!resolveTarget(req)) {
      refuseConnection(req);
      sendProblem(res, problem('bad-request', FOREIGN_TARGET, { headers: ['connection', 'close'] }));
      return;
    }
    const start = this.deps.clock.now();
    const requestId = incomingRequestId(req) ?? newRequestId();
    this.inflight.inc();
    const routed = this.routeRequest(req, requestId, undefined, true);
    if ('saga' in routed) {
      // A saga's trigger, matched before the routes (src/sagas).
      res.once('close', () => this.record(req, res, undefined, requestId, start, 0));
      routed.saga(req, res, requestId, routed.url);
      return;
    }
    if (!('route' in routed)) {
      res.once('close', () => this.record(req, res, undefined, requestId, start, 0));
      if (routed.kind !== 'no-route') refuseConnection(req);
      sendProblem(res, routed);
      return;
    }
    const { route, method, pathOnly, url } = routed;
    // TRACE echoes the request back, cookies and credentials included (cross-site tracing).
    if (method === 'TRACE' && !route.allowTrace) {
      res.once('close', () => this.record(req, res, route, requestId, start, 0));
      const detail = `TRACE is not allowed on route ${route.name} (allow_trace: false)`;
      sendProblem(
        res,
        problem('method-not-allowed', detail, { requestId, headers: ['allow', ALLOWED_METHODS] }),
      );
      return;
    }
    const limit = route.maxBodyBytes;
    const cl = req.headers['content-length'];
    if (limit > 0 && cl !== undefined && Number(cl) > limit) {
      res.once('close', () => this.record(req, res, route, requestId, start, 0));
      const detail = `the request body (${cl} bytes) is over the limit of ${limit} bytes for route ${route.name}`;
      refuseConnection(req);
      sendProblem(res, problem('payload-too-large', detail, { requestId, headers: ['connection', 'close'] }));
      return;
    }
    const upstream = this.deps.upstreams.get(route.upstream) as Upstream;
    const pipeline = this.deps.pipelines.get(route) as Handler;
    const grpc = isGrpcRequest(req);
    // Chunked, or HTTP/2 without content-length: no declared size.
    const chunked = cl === undefined;
    const ctx = newContext({
      req,
      peer: peerAddress(req),
      res,
      route,
      upstream,
      requestId,
      method,
      path: upstreamPath(url, pathOnly.length, route.stripPrefix),
      start,
      // A streamed chunked body has no declared size: it is counted as it streams (a buffered one
      // as it is read). Not a gRPC call's: its stream may carry any number of messages over its
      // life; gRPC servers limit each message.
      body: !hasBody(req)
        ? null
        : chunked && limit > 0 && !grpc && !route.requestBuffering
          ? req.pipe(new BodyLimit(limit))
          : req,
      grpc,
      grpcTimeout: grpc
        ? (parseGrpcTimeout(req.headers['grpc-timeout']) ?? Number.POSITIVE_INFINITY)
        : Number.POSITIVE_INFINITY,
      unbufferedResponse: grpc || !route.responseBuffering || wantsEventStream(req),
    });
    if (conn !== undefined) conn.current = ctx;
    // A response closes once: `on`, not `once` (no wrapper made and taken off per request).
    res.on('close', () => {
      if (!responseComplete(res)) {
        ctx.clientGone = true;
        // A request with an Idempotency-Key runs on: its answer is stored for the client's retry.
        if (!ctx.keepUpstream) ctx.current?.abort(CLIENT_GONE);
        else ctx.current?.clientLeft(CLIENT_GONE);
      }
      // A call running on for its Idempotency-Key is still at the upstream: it keeps its bulkhead
      // slot until the pipeline settles (run() gives it back then).
      if (!ctx.clientGone || !ctx.keepUpstream || ctx.settled) runFinishers(ctx);
      if (conn !== undefined && conn.current === ctx) conn.current = undefined;
      this.record(req, res, route, requestId, start, ctx.bytesOut, ctx);
    });
    if (ctx.body === null) {
      this.run(ctx, pipeline);
      return;
    }
    // `Expect: 100-continue` (Node leaves it to breakwater): the client may send its body now that
    // every refusal has passed, not before, so a body that would be refused is never uploaded.
    // (HTTP/1.0 has no 100 Continue; an expectation there is ignored.)
    if (req.headers.expect !== undefined && req.httpVersion !== '1.0') res.writeContinue();
    this.receiveBody(ctx, pipeline);
  }

  /**
   * A request Node's HTTP/1 parser refused (the server's 'clientError': malformed framing, headers
   * too large, the header timeout): answered as a problem once the answers to the requests
   * pipelined before it are out, then the connection is closed. A parse error in the body of a
   * request already under way is that request's answer instead (its attempt aborted).
   */
  clientError(err: ClientError, socket: Duplex): void {
    const conn = connectionOf(socket);
    if (conn === undefined || err.code === 'ECONNRESET' || socket.destroyed || !socket.writable) {
      socket.destroy();
      return;
    }
    // Node reports the error again for every chunk read after it: the first one is answered, and
    // after a refusal nothing more is said on the connection.
    if (conn.refused) return;
    conn.refused = true;
    const p = parseProblem(err, this.deps.listener.limits);
    const ctx = conn.current;
    if (ctx !== undefined && !ctx.req.complete) {
      if (answered(ctx.res)) {
        // Its answer started (a full-duplex stream): it cannot become a problem any more.
        ctx.res.destroy();
        return;
      }
      ctx.clientGone = true;
      ctx.current?.abort(BODY_UNPARSABLE);
      sendProblem(ctx.res, { ...p, requestId: ctx.requestId });
      return;
    }
    conn.afterResponses(() => endWithProblem(socket, p));
  }

  /** Answers a request with a refusal (a problem closing the connection) outside the usual path. */
  refuseRequest(req: IncomingMessage, res: ServerResponse, p: Problem): void {
    const conn = isHttp2(req) ? undefined : connectionOf(req.socket);
    if (conn?.refused) return;
    conn?.begin(res);
    refuseConnection(req);
    sendProblem(res, p);
  }

  /** Runs the pipeline and commits its outcome; anything thrown on the way ends the response. */
  private run(ctx: ListenerContext, pipeline: Handler): void {
    // A write on a route with `deferred:` may be stored and answered 202 instead (no fallback).
    const deferred = this.deps.deferred?.get(ctx.route);
    // commit's promise is not returned from the outcome's callback (a promise adopting another
    // costs two more microtask jobs per request).
    (deferred?.takes(ctx) ? deferred.run(ctx) : pipeline(ctx)).then(
      (outcome) => {
        ctx.settled = true;
        if (ctx.clientGone) runFinishers(ctx);
        this.commit(ctx, outcome).then(
          (bytes) => {
            ctx.bytesOut = bytes;
          },
          (err: unknown) => this.failed(ctx, err),
        );
      },
      (err: unknown) => {
        ctx.settled = true;
        if (ctx.clientGone) runFinishers(ctx);
        this.failed(ctx, err);
      },
    );
  }

  /** Anything thrown while running the pipeline or committing its outcome: a 500, logged. */
  private failed(ctx: ListenerContext, err: unknown): void {
    this.deps.logger.error({ err, request_id: ctx.requestId }, 'pipeline failed');
    try {
      sendProblem(
        ctx.res,
        problem('upstream-bad-response', 'internal error while proxying', {
          status: 500,
          requestId: ctx.requestId,
        }),
      );
    } catch {
      ctx.res.destroy();
    }
  }

  /**
   * A request with a body: silence while it arrives is 408 (`limits.body_idle_timeout`). With
   * request buffering (the default) the body is read whole before the pipeline runs, as nginx
   * does: in memory up to `limits.body_buffer_bytes`, beyond that into a temporary file, so a slow
   * uploader holds no limiter token, bulkhead slot or upstream connection, and it must arrive within
   * the route's request_timeout. A temporary file that cannot be made or written is 507 (disk full)
   * or 503. `request_buffering: false`, and gRPC calls (whose stream may stay open), stream to the
   * upstream as they arrive, within the upstream's streaming share.
   */
  private receiveBody(ctx: ListenerContext, pipeline: Handler): void {
    const { req, route } = ctx;
    const limits = this.deps.listener.limits;
    // A gRPC stream may rightly be quiet (a bidi call waiting for the server); its deadline bounds it.
    if (!ctx.grpc)
      watchBodyIdle(req, limits.bodyIdleTimeout, () =>
        this.bodyTimedOut(ctx, `no byte of the request body arrived for ${limits.bodyIdleTimeout} ms`),
      );
    if (!route.requestBuffering || ctx.grpc) {
      this.run(ctx, pipeline);
      return;
    }
    const cap = route.timeouts.request;
    const clock = this.deps.clock;
    const timer = clock.setTimeout(
      () => this.bodyTimedOut(ctx, `the request body did not arrive within ${cap} ms (request_timeout)`),
      cap,
    );
    bufferBody(req, limits.bodyBufferBytes, route.maxBodyBytes, this.deps.tempFiles, (file) =>
      onFinish(ctx, () => void file.remove()),
    ).then(
      (body) => {
        clock.clearTimeout(timer);
        if (ctx.clientGone) return;
        ctx.body = body;
        this.run(ctx, pipeline);
      },
      (err: { code?: string; message?: string }) => {
        clock.clearTimeout(timer);
        if (ctx.clientGone) return;
        if (err.code === 'BW_TEMP_FILE') {
          const e = err as TempFileError;
          this.recorder.logOf(route).error(
            {
              request_id: ctx.requestId,
              errno: e.errno,
              err: e.message,
              temp_dir: this.deps.tempFiles.dir,
            },
            'request body could not be buffered in a temporary file',
          );
          refuseConnection(req);
          sendProblem(ctx.res, storageProblem(e, ctx.requestId, 'the request body'));
          return;
        }
        if (err.code !== 'BW_BODY_TOO_LARGE') return; // the client went away
        refuseConnection(req);
        sendProblem(
          ctx.res,
          problem('payload-too-large', err.message ?? 'request body too large', {
            requestId: ctx.requestId,
            headers: CONNECTION_CLOSE,
          }),
        );
      },
    );
  }

  /** The client stopped sending its body: 408, the attempt (if any) aborted, the connection closed. */
  private bodyTimedOut(ctx: ListenerContext, detail: string): void {
    if (ctx.clientGone || ctx.req.complete) return;
    ctx.clientGone = true;
    ctx.current?.abort(BODY_STALLED);
    refuseConnection(ctx.req);
    sendProblem(
      ctx.res,
      problem('body-timeout', detail, { requestId: ctx.requestId, headers: CONNECTION_CLOSE }),
    );
    // The rest of the body is not read: HTTP/1.1 closes the connection once the answer is out,
    // HTTP/2 ends only this stream (the answer is queued before the close).
    const req = ctx.req;
    const stream = requestStream(req);
    if (stream !== undefined) stream.close();
    else ctx.res.once('finish', () => req.socket?.destroy());
  }

  /**
   * A request with `Connection: upgrade` (the server's 'upgrade' event: it never reaches handle()).
   * The same refusals and the same routing as any request, then the upgrade's own refusals (only
   * websocket, as a GET without a body), then the WebSocket tunnel. Every refusal closes the
   * connection.
   */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (connectionOf(socket)?.refused) {
      socket.destroy();
      return;
    }
    const deps = this.deps;
    const start = deps.clock.now();
    const requestId = incomingRequestId(req) ?? newRequestId();
    const u = { req, socket, head, requestId, start, clock: deps.clock, recorder: this.recorder };
    // A WebSocket opened now would be cut at the drain timeout: the client is better off
    // reconnecting to another replica at once.
    if (deps.draining()) {
      const detail = 'breakwater is shutting down: open the WebSocket again (another replica will take it)';
      const p = problem('shutting-down', detail, { requestId, headers: ['retry-after', '1'] });
      this.tunnels.refuse(u, undefined, p);
      return;
    }
    if (!resolveTarget(req)) {
      this.tunnels.refuse(u, undefined, problem('bad-request', FOREIGN_TARGET, { requestId }));
      return;
    }
    const routed = isHttp1RequestLine(req)
      ? this.routeRequest(req, requestId, upgradeRefusal)
      : requestLineProblem(req, requestId);
    if (!('route' in routed)) {
      // (No saga starts on an upgrade: routeRequest is not asked for one here.)
      this.tunnels.refuse(u, undefined, routed as Problem);
      return;
    }
    const { route, method, pathOnly, url } = routed;
    const ctx = newContext({
      req,
      peer: peerAddress(req),
      res: undefined,
      route,
      upstream: deps.upstreams.get(route.upstream) as Upstream,
      requestId,
      method,
      path: upstreamPath(url, pathOnly.length, route.stripPrefix),
      start,
      body: null,
      grpc: false,
      grpcTimeout: Number.POSITIVE_INFINITY,
      unbufferedResponse: false,
    });
    this.tunnels.open(u, { ctx, pipeline: deps.upgrades.get(route) as Call<HandshakeResponse> });
  }

  /**
   * The steps every request takes before its pipeline, handle() and upgrade() alike: the path read
   * once (normalized, so that no encoding trick bypasses a route), the refusals that do not depend
   * on the route, then `more` (the caller's own), then the route. Returns the route, or the problem
   * to answer: `no-route` when none matches, any other a refusal that closes the connection.
   */
  private routeRequest(
    req: IncomingMessage,
    requestId: string,
    more?: (req: IncomingMessage, requestId: string) => Problem | undefined,
    sagas = false,
  ): Routed | SagaRouted | Problem {
    const full = req.url ?? '/';
    const q = full.indexOf('?');
    const rawPath = q < 0 ? full : full.slice(0, q);
    const pathOnly = normalizePath(rawPath);
    const refusal = this.refusal(req, rawPath, pathOnly, requestId) ?? more?.(req, requestId);
    if (refusal !== undefined || pathOnly === undefined) return refusal as Problem;
    const method = req.method ?? 'GET';
    const saga = sagas ? this.deps.sagaTrigger?.(method, pathOnly) : undefined;
    if (saga !== undefined)
      return { saga, url: pathOnly === rawPath ? full : q < 0 ? pathOnly : `${pathOnly}${full.slice(q)}` };
    const route = this.router.match(method, pathOnly, req.headers);
    if (!route) {
      const detail = `no route of listener ${this.deps.listener.name} matches ${method} ${pathOnly}`;
      return problem('no-route', detail, { requestId });
    }
    const url = pathOnly === rawPath ? full : q < 0 ? pathOnly : `${pathOnly}${full.slice(q)}`;
    return { route, method, pathOnly, url };
  }

  /**
   * The problem for a request refused before routing (a path that cannot be read, or `refuse`
   * below), or undefined to go on.
   */
  private refusal(
    req: IncomingMessage,
    rawPath: string,
    pathOnly: string | undefined,
    requestId: string,
  ): Problem | undefined {
    const refused =
      pathOnly === undefined
        ? ([400, `the path ${rawPath} is not valid (backslash, or .. above the root)`] as [number, string])
        : this.refuse(req);
    if (refused === undefined) return undefined;
    const [status, detail] = refused;
    return problem(REFUSAL_KINDS[status] ?? 'bad-request', detail, {
      status,
      requestId,
      headers: CONNECTION_CLOSE,
    });
  }

  /**
   * Requests refused before routing: a header list over `limits.max_header_bytes` or with more
   * headers than `limits.max_headers` (431), a Host header missing (HTTP/1.1), twice or with a list
   * (400, request smuggling and cache poisoning vectors), framing breakwater does not take
   * (Transfer-Encoding on HTTP/1.0: 400; a transfer coding other than chunked: 501), an expectation
   * other than 100-continue (417), a declared body over `limits.max_body_bytes` (413). Returns
   * [status, detail], or undefined to go on.
   *
   * HTTP/1.1's size is enforced by Node's parser (431 before a request exists). HTTP/2's is
   * checked here: SETTINGS_MAX_HEADER_LIST_SIZE is only advertised, and a client that never
   * acknowledges the SETTINGS frame is not held to it by Node. It is counted as RFC 9113 6.5.2
   * defines it (name + value + 32 per field, pseudo-headers included), the figure advertised, so
   * a client that honours the advertisement is never refused. HTTP/2's pseudo-headers
   * (:method :path :scheme :authority) are the request line, not headers, and cookie crumbs
   * (RFC 9113 8.2.3) are one Cookie header, as over HTTP/1.1.
   */
  private refuse(req: IncomingMessage): [number, string] | undefined {
    const limits = this.deps.listener.limits;
    const raw = req.rawHeaders;
    const h2 = isHttp2(req);
    let count = 0;
    let hosts = 0;
    let cookies = 0;
    let bytes = 0;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i] as string;
      if (h2) {
        bytes += name.length + (raw[i + 1] as string).length + 32;
        if (name.charCodeAt(0) === 58) continue;
        if (name === 'cookie' && cookies++ > 0) continue;
      }
      count++;
      if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
    }
    if (bytes > limits.maxHeaderBytes)
      return [
        431,
        `the request headers (${bytes} bytes) are over the limit of ${limits.maxHeaderBytes} bytes`,
      ];
    if (count > limits.maxHeaders) return [431, `more than ${limits.maxHeaders} request headers`];
    if (hosts > 1) return [400, 'more than one Host header'];
    if (req.headers.host?.includes(',')) return [400, 'a Host header with a list'];
    const http10 = !h2 && req.httpVersion === '1.0';
    if (hosts === 0 && !h2 && !http10) return [400, 'an HTTP/1.1 request needs a Host header'];
    const te = req.headers['transfer-encoding'];
    if (te !== undefined) {
      // RFC 9112 6.1: HTTP/1.0 has no chunked framing, so the message's length cannot be trusted.
      if (http10) return [400, 'Transfer-Encoding in an HTTP/1.0 request'];
      const codings = transferCodingsRefusal(te);
      if (codings !== undefined) return codings;
    }
    const expect = req.headers.expect;
    if (expect !== undefined && !http10 && expect.trim().toLowerCase() !== '100-continue')
      return [417, 'the only expectation breakwater meets is Expect: 100-continue'];
    const cl = req.headers['content-length'];
    if (cl !== undefined && limits.maxBodyBytes > 0 && Number(cl) > limits.maxBodyBytes) {
      // The route may allow more; checked again once the route is known.
      const allowed = this.deps.listener.routes.some(
        (r) => r.maxBodyBytes === 0 || r.maxBodyBytes >= Number(cl),
      );
      if (!allowed)
        return [413, `the request body (${cl} bytes) is over the limit of ${limits.maxBodyBytes} bytes`];
    }
    return undefined;
  }

  /** Writes the outcome to the client; resolves with the body bytes relayed. */
  private async commit(ctx: ListenerContext, outcome: Outcome): Promise<number> {
    const { res } = ctx;
    const extra = this.extraHeaders(ctx);
    if (outcome.type === 'problem') {
      if (ctx.grpc) ctx.grpcStatus = grpcCodeForProblem(outcome.problem.kind);
      sendProblem(res, withHeaders(outcome.problem, extra));
      return 0;
    }
    if (outcome.type === 'failure') {
      if (ctx.clientGone) return 0;
      const p = failureProblem(outcome.error, ctx.upstream.name, ctx.requestId);
      if (ctx.grpc) ctx.grpcStatus = grpcCodeForProblem(p.kind);
      sendProblem(res, withHeaders(p, extra));
      return 0;
    }
    if (outcome.type === 'local') return this.commitLocal(ctx, outcome, extra);
    const { attempt, head } = outcome;
    if (ctx.clientGone) {
      attempt.discard();
      return 0;
    }
    try {
      const headers = clientResponseHeaders(head.rawHeaders, ctx.requestId, extra);
      if (outcome.fallback !== undefined) headers.push('x-breakwater-fallback', outcome.fallback);
      if (ctx.grpc && head.grpcStatus !== undefined) {
        // A gRPC Trailers-Only response (an error, as a rule) is relayed as one.
        sendTrailersOnly(res, head.status, headers);
        attempt.discard();
        ctx.grpcStatus = head.grpcStatus;
        return 0;
      }
      const relay = this.relayPolicy(ctx, outcome.endpoint, attempt, head);
      if (relay === undefined) {
        // An event stream with every place of the streaming share in use.
        attempt.discard();
        sendProblem(res, withHeaders(this.streamingFull(ctx, outcome.endpoint), extra));
        return 0;
      }
      const cacheTee = this.deps.teeFor?.(ctx, head)?.(headers);
      const storeTee = ctx.responseTee?.(head.status, headers);
      const tee = cacheTee && storeTee ? bothTees(cacheTee, storeTee) : (cacheTee ?? storeTee);
      const result = await attempt.stream(res, head.status, headers, tee, relay, runFinishers, ctx);
      if (ctx.grpc) ctx.grpcStatus = attempt.grpcStatus;
      if (result.error && !res.headersSent) {
        sendProblem(res, withHeaders(failureProblem(result.error, ctx.upstream.name, ctx.requestId), extra));
      }
      return result.bytes;
    } catch (err) {
      // Node refused a header value (e.g. a control character): never forward it.
      attempt.discard();
      if (!res.headersSent) {
        const detail = `the upstream sent an invalid response header: ${(err as Error).message}`;
        sendProblem(
          res,
          problem('upstream-bad-response', detail, { upstream: ctx.upstream.name, requestId: ctx.requestId }),
        );
      } else {
        res.destroy();
      }
      return 0;
    }
  }

  /**
   * How a response reaches its client. Buffered (for a client that falls behind) unless it streams
   * at the client's pace: gRPC, `response_buffering: false`, a request for an event stream (their
   * attempts took a place in the streaming share), or a response that says so by its headers (an
   * event stream, the opt-out header). Such a response takes a place in the share now; with none
   * free, an event stream is refused (undefined: 503 `streaming-limit`) and any other response is
   * buffered after all (the opt-out is a hint; buffering frees the connection).
   */
  private relayPolicy(
    ctx: ListenerContext,
    endpoint: Endpoint,
    attempt: Attempt,
    head: ResponseHead,
  ): RelayPolicy | undefined {
    if (ctx.unbufferedResponse) return this.directRelay;
    const kind = unbufferedKind(head.rawHeaders, this.optOutHeader);
    if (kind === 0) return this.bufferedRelay;
    const share = endpoint.share;
    if (share?.tryTake(endpoint)) {
      attempt.whenSettled(() => share.release(endpoint));
      return this.directRelay;
    }
    return kind === EVENT_STREAM ? undefined : this.bufferedRelay;
  }

  private streamingFull(ctx: ListenerContext, endpoint: Endpoint): Problem {
    const detail = `every one of the ${endpoint.share?.limit ?? 0} places per endpoint of upstream ${ctx.upstream.name} for streaming responses is in use`;
    return problem('streaming-limit', detail, {
      upstream: ctx.upstream.name,
      requestId: ctx.requestId,
      headers: ['retry-after', '1'],
    });
  }

  /** Writes a static or cached fallback answer. */
  private commitLocal(
    ctx: ListenerContext,
    local: Extract<Outcome, { type: 'local' }>,
    extra: string[] | undefined,
  ): number {
    const { res } = ctx;
    if (answered(res)) return 0;
    const headers: string[] = [];
    const h = local.headers;
    for (let i = 0; i < h.length; i += 2) {
      const name = (h[i] as string).toLowerCase();
      // Configured or cached headers never carry framing or hop-by-hop ones (HTTP/2 refuses them).
      if (name !== 'content-length' && name !== 'x-request-id' && name !== 'age' && !isHopByHop(name))
        headers.push(h[i] as string, h[i + 1] as string);
    }
    headers.push('content-length', String(local.body.length), 'x-request-id', ctx.requestId);
    if (local.fallback !== undefined) headers.push('x-breakwater-fallback', local.fallback);
    if (local.replayed) headers.push('idempotent-replayed', 'true');
    if (local.age !== undefined) headers.push('age', String(local.age));
    if (extra) headers.push(...extra);
    res.writeHead(local.status, headers);
    const head = ctx.method === 'HEAD';
    res.end(head ? undefined : local.body);
    return head ? 0 : local.body.length;
  }

  /** Headers breakwater adds to every answer: attempts made, and Connection: close while draining. */
  private extraHeaders(ctx: ListenerContext): string[] | undefined {
    // (HTTP/2 has no Connection header: a draining listener sends its sessions a GOAWAY instead.)
    const draining = this.deps.draining() && !isHttp2(ctx.req);
    if (!ctx.route.retry.attemptsHeader) return draining ? CONNECTION_CLOSE : undefined;
    if (!draining && ctx.attempts < ATTEMPTS_HEADERS.length) return ATTEMPTS_HEADERS[ctx.attempts];
    const attempts = ['x-breakwater-attempts', String(ctx.attempts)];
    if (draining) attempts.push(...CONNECTION_CLOSE);
    return attempts;
  }

  private record(
    req: IncomingMessage,
    res: ServerResponse,
    route: RouteModel | undefined,
    requestId: string,
    start: number,
    bytes: number,
    ctx?: ListenerContext,
  ): void {
    this.inflight.dec();
    this.recorder.request(req, res, route, requestId, start, bytes, ctx);
  }
}

/**
 * Refusals an HTTP/2 connection may collect before it is closed. A request over the header
 * limits is refused only once Node has decoded its whole header list, and a client that ignores
 * SETTINGS can make a block of a few hundred bytes stand for close to a megabyte of headers
 * (dynamic-table references): such a connection gets a few refusals, then GOAWAY.
 */
const MAX_H2_REFUSALS = 10;
const H2_REFUSALS = new WeakMap<object, number>();

/**
 * A refusal closes an HTTP/1 connection once answered, and nothing more from it is forwarded.
 * HTTP/2 frames each request on its own: a refusal ends that stream, not the connection, unless
 * the connection has had too many.
 */
function refuseConnection(req: IncomingMessage): void {
  if (isHttp2(req)) {
    const session = requestStream(req)?.session;
    if (!session) return;
    const n = (H2_REFUSALS.get(session) ?? 0) + 1;
    H2_REFUSALS.set(session, n);
    if (n === MAX_H2_REFUSALS && !session.closed) {
      session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      session.close();
    }
    return;
  }
  const conn = connectionOf(req.socket);
  if (conn !== undefined) conn.refused = true;
}

/** The problem kind of each status `refuse` gives (400 otherwise). */
const REFUSAL_KINDS: Partial<Record<number, Problem['kind']>> = {
  413: 'payload-too-large',
  417: 'expectation-failed',
  431: 'headers-too-large',
  501: 'transfer-coding-not-implemented',
};

/**
 * Methods Node's parser (llhttp, which also reads RTSP) takes only in an `RTSP/1.0` request line:
 * a request with one of them is RTSP, not HTTP. (`GET /x RTSP/1.0` cannot be told from HTTP/1.0
 * once parsed; it is served as HTTP/1.0.)
 */
const RTSP_ONLY = new Set([
  'ANNOUNCE',
  'DESCRIBE',
  'SETUP',
  'PLAY',
  'PAUSE',
  'TEARDOWN',
  'GET_PARAMETER',
  'SET_PARAMETER',
  'REDIRECT',
  'RECORD',
  'FLUSH',
]);

/** Whether an HTTP/1 request line says HTTP/1.0 or HTTP/1.1 (Node's parser also passes 0.9, 2.0, RTSP). */
function isHttp1RequestLine(req: IncomingMessage): boolean {
  const version = req.httpVersion;
  return (version === '1.1' || version === '1.0') && !RTSP_ONLY.has(req.method as string);
}

/** The refusal of a request line that is not HTTP/1.0 or 1.1 (HTTP/0.9 has no version at all). */
function requestLineProblem(req: IncomingMessage, requestId: string): Problem {
  const extra = { requestId, headers: CONNECTION_CLOSE };
  const version = req.httpVersion;
  if (version === '0.9')
    return problem('bad-request', 'a request line without an HTTP version (HTTP/0.9) is not served', extra);
  if (version === '1.1' || version === '1.0')
    return problem(
      'http-version-not-supported',
      `${req.method} is an RTSP method: RTSP is not served`,
      extra,
    );
  const detail = `HTTP/${version} in an HTTP/1 request line: send HTTP/1.1 (or HTTP/2 with prior knowledge to a protocol: h2c listener)`;
  return problem('http-version-not-supported', detail, extra);
}

/**
 * Transfer-Encoding that breakwater takes: `chunked` alone (any case). Chunked not last, or twice,
 * leaves the length unknown (400, RFC 9112 6.3); another coding before it (`gzip, chunked`) is one
 * breakwater does not implement (501, RFC 9112 6.1): it would be dropped on the way (the header is
 * hop-by-hop) and the body forwarded as if plain. Undefined when it is plain chunked.
 */
function transferCodingsRefusal(te: string): [number, string] | undefined {
  if (te.length === 7 && te.toLowerCase() === 'chunked') return undefined;
  const codings = te
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '');
  if (codings.at(-1) !== 'chunked') return [400, 'Transfer-Encoding whose last coding is not chunked'];
  if (codings.indexOf('chunked') !== codings.length - 1)
    return [400, 'Transfer-Encoding: chunked more than once'];
  if (codings.length === 1) return undefined;
  return [
    501,
    `breakwater does not implement the transfer coding ${JSON.stringify(codings.slice(0, -1).join(', '))}: send chunked alone`,
  ];
}

/** The answer to a request Node's HTTP/1 parser refused (see ProxyHandler.clientError). */
function parseProblem(err: ClientError, limits: ListenerModel['limits']): Problem {
  const close = { headers: CONNECTION_CLOSE };
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return problem(
        'headers-too-large',
        'the request line and headers are over limits.max_header_bytes',
        close,
      );
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return problem('payload-too-large', 'the chunk extensions of the request body are too large', close);
    case 'HPE_PAUSED_H2_UPGRADE':
      return problem(
        'http-version-not-supported',
        'HTTP/2 with prior knowledge: this listener speaks HTTP/1.1 (a protocol: h2c listener takes both)',
        close,
      );
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return problem(
        'header-timeout',
        `the request headers did not arrive within ${limits.headerTimeout} ms (limits.header_timeout)`,
        close,
      );
    default:
      // A well-formed version llhttp does not know (HTTP/1.2, HTTP/3.0); it passes 0.9 and 2.0 on,
      // which the handler refuses. ("Expected CRLF after version" and the like are malformed: 400.)
      if (err.code === 'HPE_INVALID_VERSION' && err.reason === 'Invalid HTTP version')
        return problem(
          'http-version-not-supported',
          'the request line has an HTTP version other than 1.0 and 1.1',
          close,
        );
      return problem(
        'bad-request',
        `the request could not be parsed: ${err.reason ?? err.code ?? 'malformed'}`,
        close,
      );
  }
}

/** Passes a body through, failing it once it is longer than `max` bytes. */
class BodyLimit extends Transform {
  private seen = 0;
  constructor(private readonly max: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.max) {
      const err = Object.assign(new Error(`the request body is over the limit of ${this.max} bytes`), {
        code: 'BW_BODY_TOO_LARGE',
      });
      done(err);
      return;
    }
    done(null, chunk);
  }
}

/** The relay policies of a listener: buffered, and at the client's pace. Both carry send_timeout. */
function relayPolicies(deps: HandlerDeps): [RelayPolicy, RelayPolicy] {
  const sendTimeout = deps.listener.limits.sendTimeout;
  const b = deps.buffering;
  return [
    {
      buffer: { temp: deps.tempFiles, memory: b.responseBufferBytes, maxFile: b.maxTempFileBytes },
      sendTimeout,
    },
    { buffer: undefined, sendTimeout },
  ];
}

function hasBody(req: IncomingMessage): boolean {
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) return true;
  const cl = req.headers['content-length'];
  if (cl !== undefined) return cl !== '0';
  // HTTP/2: a body follows unless the HEADERS frame ended the stream (gRPC sends no length).
  const stream = requestStream(req);
  return stream !== undefined && !stream.endAfterHeaders;
}

/**
 * Absolute-form (`GET http://host/path`) is served for the request's own Host only (the target
 * becomes the request's path); every other host would make breakwater an open proxy: false.
 */
function resolveTarget(req: IncomingMessage): boolean {
  const target = absoluteTarget(req.url ?? '/', req.headers.host);
  if (target === 'foreign') return false;
  if (target !== undefined) req.url = target;
  return true;
}

function recorderOf(deps: HandlerDeps): Recorder {
  return new Recorder({
    listener: deps.listener.name,
    metrics: deps.metrics,
    logger: deps.logger,
    clock: deps.clock,
    accessLog: deps.accessLog,
    accessLogHeaders: deps.accessLogHeaders,
    statsOf: deps.statsOf,
  });
}
