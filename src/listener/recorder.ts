/**
 * What a listener records of each call it answered, in one place for every kind of call: the
 * request metrics (`breakwater_requests_total`, `breakwater_request_duration_seconds`, gRPC calls,
 * send timeouts), the upstream's live figures, and the access-log line. An HTTP request is recorded
 * when its response closes; a WebSocket handshake is counted when its answer is sent and logged
 * when its connection ends.
 *
 * Metric children and the per-route child logger are made once per route and reused, so a request
 * costs a map lookup, not label hashing.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import http2 from 'node:http2';
import { grpcCodeName } from '../attempt/grpc.js';
import type { Clock } from '../clock.js';
import type { RouteModel } from '../config/resolve.js';
import { infoLineWriter, type Logger, redactHeaders } from '../observability/logger.js';
import { type Metrics, methodLabel } from '../observability/metrics.js';
import type { UpstreamStats } from '../observability/upstream-stats.js';
import type { RequestContext } from '../pipeline/types.js';
import { responseStream } from './protocol.js';

export interface RecorderDeps {
  readonly listener: string;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly accessLog: boolean;
  readonly accessLogHeaders: readonly string[];
  /** Live traffic figures of an upstream (GET /state, the status page). */
  readonly statsOf?: ((upstream: string) => UpstreamStats | undefined) | undefined;
}

interface RouteStats {
  readonly duration: { observe(v: number): void };
  /** `breakwater_requests_total` children by method label, then by status (no key built per request). */
  readonly codes: Map<string, Map<number, { inc(): void }>>;
  /** Logger with listener, route and upstream bound once (pino serializes bindings ahead). */
  readonly log: Logger;
  /** The access-log line of a request, written with `log`'s bindings (see infoLineWriter). */
  readonly accessLine: (members: string) => void;
}

/** A string member of a JSON line: `,"key":"value"` (omitted when undefined, as pino omits it). */
function str(key: string, value: string | undefined): string {
  return value === undefined ? '' : `,${key}:${JSON.stringify(value)}`;
}

/** A number member (a non-finite number is `null`, as pino writes it; undefined: omitted). */
function num(key: string, value: number | undefined): string {
  if (value === undefined) return '';
  return `,${key}:${Number.isFinite(value) ? value : 'null'}`;
}

/** The fields of a WebSocket's access-log line after listener, route and upstream. */
export interface WebSocketLine {
  readonly request_id: string;
  readonly method: string | undefined;
  readonly path: string;
  readonly upgrade: 'websocket';
  readonly status: number;
  readonly duration_ms: number;
  readonly open_ms: number | undefined;
  readonly bytes_in: number;
  readonly bytes_out: number;
  readonly attempts: number;
  readonly closed_by: string | undefined;
}

export class Recorder {
  private readonly stats = new Map<RouteModel | undefined, RouteStats>();
  private readonly sendTimeouts: { inc(): void };

  constructor(private readonly deps: RecorderDeps) {
    this.sendTimeouts = deps.metrics.sendTimeouts.labels(deps.listener);
  }

  /** The logger of a route (listener, route and upstream bound). */
  logOf(route: RouteModel | undefined): Logger {
    return this.routeStats(route).log;
  }

  /** Counts an answer in `breakwater_requests_total` (by method and status). */
  count(route: RouteModel | undefined, method: string | undefined, status: number): void {
    this.countIn(this.routeStats(route), route, method, status);
  }

  private countIn(
    stats: RouteStats,
    route: RouteModel | undefined,
    method: string | undefined,
    status: number,
  ): void {
    const label = methodLabel(method ?? '');
    let byStatus = stats.codes.get(label);
    if (!byStatus) {
      byStatus = new Map();
      stats.codes.set(label, byStatus);
    }
    let counter = byStatus.get(status);
    if (!counter) {
      counter = this.deps.metrics.requests.labels(
        this.deps.listener,
        route?.name ?? '',
        route?.upstream ?? '',
        label,
        String(status),
      );
      byStatus.set(status, counter);
    }
    counter.inc();
  }

  /** An HTTP request whose response closed: metrics, the upstream's figures, the access-log line. */
  request(
    req: IncomingMessage,
    res: ServerResponse,
    route: RouteModel | undefined,
    requestId: string,
    start: number,
    bytes: number,
    ctx?: RequestContext,
  ): void {
    const now = this.deps.clock.now();
    const seconds = (now - start) / 1000;
    const complete = responseComplete(res);
    // 499 (as nginx): the client went away before the response started.
    const status = res.headersSent ? res.statusCode : 499;
    if (route) this.deps.statsOf?.(route.upstream)?.record(now, seconds * 1000, status);
    const stats = this.routeStats(route);
    stats.duration.observe(seconds);
    this.countIn(stats, route, req.method, status);
    const cutReason = ctx?.current?.cutReason;
    if (cutReason === 'send_timeout') this.sendTimeouts.inc();
    const buffered = ctx?.current?.buffered;
    const grpcStatus = ctx?.grpc ? ctx.grpcStatus : undefined;
    if (grpcStatus !== undefined)
      this.deps.metrics.grpcCalls
        .labels(this.deps.listener, route?.name ?? '', route?.upstream ?? '', grpcCodeName(grpcStatus))
        .inc();
    if (!this.deps.accessLog) return;
    // The line pino would write for `log.info({ request_id, ... }, 'request')`, member by member
    // in the same order (undefined ones left out), without building an object to serialize.
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const cl = req.headers['content-length'];
    let members =
      `,"request_id":${JSON.stringify(requestId)}` +
      str('"method"', req.method) +
      str('"path"', q < 0 ? req.url : url.slice(0, q)) +
      `,"status":${status},"duration_ms":${Math.round(seconds * 1e6) / 1e3}` +
      num('"bytes_in"', cl === undefined ? undefined : Number(cl)) +
      `,"bytes_out":${bytes},"attempts":${ctx?.attempts ?? 0}` +
      str('"retry_skipped"', ctx?.retrySkipped) +
      str('"response_buffered"', buffered) +
      str('"close_reason"', cutReason) +
      num('"grpc_status"', grpcStatus) +
      str('"upstream_error"', ctx?.upstreamError) +
      `,"complete":${complete}`;
    if (this.deps.accessLogHeaders.length)
      members += `,"headers":${JSON.stringify(redactHeaders(req.headers, this.deps.accessLogHeaders))}`;
    stats.accessLine(members);
  }

  /** A WebSocket handshake's answer: counted in `breakwater_requests_total` and by outcome. */
  upgradeAnswered(
    route: RouteModel | undefined,
    method: string | undefined,
    status: number,
    outcome: string,
  ) {
    this.deps.metrics.websocketUpgrades.labels(route?.upstream ?? '', outcome).inc();
    this.count(route, method, status);
  }

  /** A WebSocket opened (the 101 relayed). */
  websocketOpened(upstream: string): void {
    this.deps.metrics.websocketOpen.labels(upstream).inc();
  }

  /** An open WebSocket ended, and what ended it. */
  websocketClosed(upstream: string, reason: string): void {
    this.deps.metrics.websocketOpen.labels(upstream).dec();
    this.deps.metrics.websocketClosed.labels(upstream, reason).inc();
  }

  /** A WebSocket (or its handshake) is over: its access-log line. */
  upgradeEnded(route: RouteModel | undefined, line: WebSocketLine): void {
    if (this.deps.accessLog) this.routeStats(route).log.info(line, 'websocket');
  }

  private routeStats(route: RouteModel | undefined): RouteStats {
    let s = this.stats.get(route);
    if (!s) {
      const log = this.deps.logger.child({
        listener: this.deps.listener,
        route: route?.name,
        upstream: route?.upstream,
      });
      s = {
        duration: this.deps.metrics.duration.labels(
          this.deps.listener,
          route?.name ?? '',
          route?.upstream ?? '',
        ),
        codes: new Map(),
        log,
        accessLine: infoLineWriter(log, 'request'),
      };
      this.stats.set(route, s);
    }
    return s;
  }
}

/**
 * Whether the response reached its end. HTTP/2 (compatibility API): `writableFinished` is true
 * for a stream the client reset too, so it is judged by the stream's close code.
 */
export function responseComplete(res: ServerResponse): boolean {
  const stream = responseStream(res);
  if (stream === undefined) return res.writableFinished;
  return stream.rstCode === http2.constants.NGHTTP2_NO_ERROR;
}
