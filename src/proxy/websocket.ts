/**
 * WebSocket pass-through: the upgrade tunnel.
 *
 * A request with `Connection: upgrade` never reaches fastify's request path: Node hands it to the
 * server's 'upgrade' event, where the listener's handler refuses and routes it as it does every
 * request and then gives it to `WebSocketTunnels.open`:
 *
 *   1. a route with `websocket: false` refuses it (403 upgrade-refused);
 *   2. it is admitted as the upstream's policies admit a request: a rate-limiter token (429), a
 *      bulkhead slot held for the whole life of the connection (503), the circuit breaker's
 *      permission (503), an available endpoint from the balancer (503);
 *   3. the handshake goes to that endpoint on a connection of its own (node:http, no pool: a
 *      WebSocket owns its TCP connection), within `connect_timeout` to connect and `timeout` for
 *      the answer;
 *   4. a 101 is relayed and the two sockets are piped, bytes untouched (frames are never parsed),
 *      until either side closes, nothing flows either way for `websocket_idle_timeout`, or
 *      `websocket_max_duration` passes; any other answer is relayed as it came and the connection
 *      closed; a failure becomes a problem+json answer (502/504).
 *
 * The handshake is one attempt for the circuit breaker and outlier detection: a 101 is a success;
 * an answer that `failure_on` names (5xx by default), a connect failure, a reset or a timeout is a
 * failure. There are no retries: a handshake is sent once.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { RouteModel } from '../config/resolve.js';
import type { Logger } from '../observability/logger.js';
import { type Metrics, methodLabel } from '../observability/metrics.js';
import type { Bulkhead } from '../pipeline/bulkhead.js';
import { type CircuitBreaker, isFailure, type Permit } from '../pipeline/circuit-breaker.js';
import { breakerOpenProblem } from '../pipeline/circuit-breaker-layer.js';
import { causeOf, statusLabel } from '../pipeline/outcome.js';
import type { RateLimiter } from '../pipeline/rate-limiter.js';
import { type Endpoint, secureContextOf, tlsNameOf, type Upstream } from '../upstream/upstream.js';
import { AttemptError, classify } from './attempt.js';
import { peerAddress } from './client-address.js';
import { upgradeRequestHeaders, upgradeResponseHeaders } from './headers.js';
import { endWithProblem, failureProblem, type Problem, problem } from './problem.js';

/** The per-upstream policies a handshake passes (an UpstreamPolicies has them). */
export interface TunnelPolicies {
  readonly breaker: CircuitBreaker | undefined;
  readonly limiter: RateLimiter | undefined;
  readonly bulkhead: Bulkhead | undefined;
}

/** An upgrade request as the listener received it. */
export interface UpgradeRequest {
  readonly req: IncomingMessage;
  readonly socket: Duplex;
  /** Bytes the client sent after the request head (early frames): forwarded after the 101. */
  readonly head: Buffer;
  readonly requestId: string;
  /** performance.now() when the request arrived. */
  readonly start: number;
  readonly listener: string;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly accessLog: boolean;
}

/** Where a routed upgrade request goes. */
export interface UpgradeTarget {
  readonly route: RouteModel;
  readonly upstream: Upstream;
  readonly policies: TunnelPolicies | undefined;
  /** Path and query sent upstream (after strip_prefix). */
  readonly path: string;
}

/** Who or what ended an open tunnel (the `reason` label of breakwater_websocket_closed_total). */
export type CloseReason = 'client' | 'upstream' | 'error' | 'idle_timeout' | 'max_duration' | 'shutdown';

/**
 * Bytes read from the client before the 101 (a client should send none) that are kept for the
 * upstream; past this the client socket is paused until the tunnel opens or the answer is sent.
 * Reading during the handshake is what notices a client that leaves.
 */
const EARLY_LIMIT = 64 * 1024;

/** After one side of a tunnel closed, how long the other may take to finish before it is cut. */
const CLOSE_GRACE_MS = 5_000;

/**
 * Refusals that do not depend on the route: any protocol but websocket (h2c and the rest are never
 * forwarded), a method other than GET, HTTP/1.0, a body (whose bytes would follow the head and
 * be read as frames), no Host. Undefined when the request is a WebSocket handshake.
 */
export function upgradeRefusal(req: IncomingMessage, requestId: string): Problem | undefined {
  const upgrade = req.headers.upgrade;
  if (upgrade === undefined || upgrade.trim().toLowerCase() !== 'websocket') {
    const detail = `Upgrade: ${JSON.stringify(upgrade ?? '')} is not passed through; breakwater passes only websocket upgrades`;
    return problem('upgrade-refused', detail, { requestId });
  }
  if (req.method !== 'GET' || req.httpVersion !== '1.1')
    return problem('bad-request', 'a WebSocket handshake is a GET request over HTTP/1.1', { requestId });
  const cl = req.headers['content-length'];
  if ((cl !== undefined && cl !== '0') || req.headers['transfer-encoding'] !== undefined)
    return problem('bad-request', 'a WebSocket handshake has no body', { requestId });
  if (req.headers.host === undefined)
    return problem('bad-request', 'a WebSocket handshake needs a Host header', { requestId });
  return undefined;
}

/** The open tunnels and handshakes in progress of one listener. */
export class WebSocketTunnels {
  private readonly live = new Set<Tunnel>();

  /** Tunnels open now (handshakes in progress not counted). */
  get openCount(): number {
    let n = 0;
    for (const t of this.live) if (t.isOpen) n++;
    return n;
  }

  /** Answers an upgrade request that was refused before it reached an upstream, and closes. */
  refuse(u: UpgradeRequest, p: Problem): void {
    const t = new Tunnel(u, undefined, undefined, this.live);
    this.live.add(t);
    t.refuse(p);
  }

  open(u: UpgradeRequest, target: UpgradeTarget): void {
    const t = new Tunnel(u, target.route, target, this.live);
    this.live.add(t);
    t.start();
  }

  /** Cuts every tunnel and handshake (the drain timeout passed). */
  closeAll(): void {
    for (const t of [...this.live]) t.shutdown();
  }
}

type Phase = 'admission' | 'handshake' | 'open' | 'relay' | 'done';

class Tunnel {
  private phase: Phase = 'admission';
  private readonly client: Socket;
  private upstreamSocket: Socket | undefined;
  private request: ClientRequest | undefined;
  private endpoint: Endpoint | undefined;
  private permit: Permit | undefined;
  private slot = false;
  /** Waiting in the bulkhead's queue. */
  private queued = false;
  private connected = false;
  private clientGone = false;
  private sentAt = 0;
  private attempts = 0;
  /** Status sent to the client (0: none yet). */
  private status = 0;
  private reason: CloseReason | undefined;
  private openedAt = 0;
  private bytesInBase = 0;
  private bytesOutBase = 0;
  private closedSides = 0;
  private timers: NodeJS.Timeout[] = [];
  /** What the client sent after its request head while the handshake ran. */
  private early: Buffer[] = [];
  private earlyBytes = 0;

  constructor(
    private readonly u: UpgradeRequest,
    private readonly route: RouteModel | undefined,
    private readonly target: UpgradeTarget | undefined,
    private readonly live: Set<Tunnel>,
  ) {
    this.client = u.socket as Socket;
    // Errors end in 'close', which is where they are handled.
    this.client.on('error', ignore);
    this.client.on('close', this.onClientClose);
    this.client.on('data', this.onEarlyData);
    this.client.on('end', this.onEarlyEnd);
  }

  private readonly onEarlyData = (chunk: Buffer): void => {
    if (this.phase !== 'admission' && this.phase !== 'handshake') return; // answered: dropped
    this.early.push(chunk);
    this.earlyBytes += chunk.length;
    if (this.earlyBytes > EARLY_LIMIT) this.client.pause();
  };

  /** The client half-closed before the handshake was answered: it left. */
  private readonly onEarlyEnd = (): void => {
    if (this.phase === 'admission' || this.phase === 'handshake') this.client.destroy();
  };

  get isOpen(): boolean {
    return this.phase === 'open' && this.reason === undefined;
  }

  private get upstreamName(): string {
    return this.route?.upstream ?? '';
  }

  start(): void {
    const target = this.target as UpgradeTarget;
    const route = target.route;
    const { requestId, req, metrics } = this.u;
    if (this.client.destroyed) {
      // The client left before the handshake was looked at ('close' may already have passed).
      this.clientGone = true;
      this.sent(499, 'client_gone');
      this.finish();
      return;
    }
    if (!route.websocket.enabled) {
      const detail = `route ${route.name} does not pass WebSocket upgrades through (websocket: false)`;
      this.refuse(problem('upgrade-refused', detail, { requestId }));
      return;
    }
    if (target.upstream.model.protocol === 'h2c') {
      // The handshake is HTTP/1.1; an h2c upstream speaks only HTTP/2 (WebSocket over HTTP/2,
      // RFC 8441, is not supported).
      const detail = `upstream ${target.upstream.name} speaks h2c only: WebSocket handshakes are HTTP/1.1`;
      this.refuse(problem('upgrade-refused', detail, { requestId }));
      return;
    }
    const name = target.upstream.name;
    const { limiter, bulkhead } = target.policies ?? {};
    if (limiter) {
      const bucket = limiter.bucketFor(req, route.trust);
      if (!bucket.tryTake()) {
        metrics.rateLimited.labels(name, limiter.policy.mode).inc();
        this.answer(limiter.limitedProblem(bucket, name, requestId), 'rate_limited');
        return;
      }
    }
    if (!bulkhead) {
      this.connect();
      return;
    }
    const got = bulkhead.acquire();
    if (got === true) {
      this.slot = true;
      this.connect();
    } else if (got === false) {
      this.bulkheadFull(bulkhead, name);
    } else {
      this.queued = true;
      got.then((admitted) => {
        this.queued = false;
        if (admitted) this.slot = true;
        // The client may have left while it queued: finish() gives the slot back.
        if (this.clientGone) this.finish();
        else if (admitted) this.connect();
        else this.bulkheadFull(bulkhead, name);
      }, ignore);
    }
  }

  private bulkheadFull(bulkhead: Bulkhead, upstream: string): void {
    this.u.metrics.bulkheadRejected.labels(upstream).inc();
    this.answer(bulkhead.fullProblem(upstream, this.u.requestId), 'bulkhead_full');
  }

  /** Breaker, endpoint, then the handshake on a new connection. */
  private connect(): void {
    const target = this.target as UpgradeTarget;
    const route = target.route;
    const { req, requestId, metrics } = this.u;
    const upstream = target.upstream;
    const breaker = target.policies?.breaker;
    if (breaker) {
      this.permit = breaker.tryAcquire();
      if (!this.permit) {
        metrics.breakerRejected.labels(upstream.name).inc();
        this.answer(breakerOpenProblem(breaker, upstream.name, requestId), 'circuit_open');
        return;
      }
    }
    const endpoint = upstream.pick();
    if (!endpoint) {
      this.settleBreaker('ignored');
      const detail = `no endpoint of upstream ${upstream.name} is healthy`;
      this.answer(
        problem('no-healthy-endpoint', detail, { upstream: upstream.name, requestId }),
        'no_endpoint',
      );
      return;
    }
    this.phase = 'handshake';
    this.endpoint = endpoint;
    endpoint.inflight++;
    this.attempts = 1;
    const url = new URL(endpoint.model.origin);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const headers = upgradeRequestHeaders(
      req,
      {
        host: upstream.hostFor(endpoint, req.headers.host),
        requestId,
        proto: 'http',
        remoteAddress: peerAddress(req),
        trust: route.trust,
      },
      req.headers.upgrade as string,
    );
    const options: http.RequestOptions = {
      host,
      port: Number(url.port),
      method: 'GET',
      path: target.path,
      headers,
      setHost: false,
      agent: false,
    };
    this.sentAt = performance.now();
    // An https endpoint is reached with the upstream's tls settings, as its pool is.
    const tls = upstream.model.tls;
    const request =
      url.protocol === 'https:'
        ? https.request({
            ...options,
            servername: tlsNameOf(endpoint.model, upstream.model),
            rejectUnauthorized: !tls?.insecureSkipVerify,
            ...(tls ? { secureContext: secureContextOf(tls) } : {}),
          })
        : http.request(options);
    this.request = request;
    const connectMs = route.timeouts.connect;
    const answerMs = route.timeouts.attempt;
    // 0 is no connect timeout, as for the pools (undici sets no timer then).
    if (connectMs > 0)
      this.timer(connectMs, () => {
        if (!this.connected)
          request.destroy(
            new AttemptError(
              'connect-timeout',
              `connecting to the upstream took longer than ${connectMs} ms`,
              false,
            ),
          );
      });
    this.timer(answerMs, () => {
      const detail = `the upstream did not answer the WebSocket handshake within ${answerMs} ms`;
      request.destroy(new AttemptError('timeout', detail, true));
    });
    request.on('socket', (s: Socket) => {
      this.upstreamSocket = s;
      s.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
        this.connected = true;
      });
    });
    request.on('upgrade', this.onUpgrade);
    request.on('response', this.onResponse);
    request.on('error', this.onRequestError);
    request.end();
  }

  private readonly onUpgrade = (res: IncomingMessage, socket: Socket, upstreamHead: Buffer): void => {
    this.clearTimers();
    this.upstreamSocket = socket;
    socket.on('error', ignore);
    if (this.phase !== 'handshake') {
      socket.destroy();
      return;
    }
    const protocol = res.headers.upgrade;
    if (protocol === undefined || protocol.trim().toLowerCase() !== 'websocket') {
      socket.destroy();
      const detail = `the upstream switched to ${JSON.stringify(protocol ?? '')}, not websocket`;
      this.failed(new AttemptError('protocol', detail, true));
      return;
    }
    const target = this.target as UpgradeTarget;
    const route = this.route as RouteModel;
    this.settleBreaker('success');
    target.upstream.recordResult(this.endpoint as Endpoint, false, performance.now() - this.sentAt);
    const headers = upgradeResponseHeaders(res.rawHeaders, this.u.requestId, true);
    if (route.retry.attemptsHeader) headers.push('x-breakwater-attempts', String(this.attempts));
    let head = 'HTTP/1.1 101 Switching Protocols\r\n';
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    const client = this.client;
    client.removeListener('data', this.onEarlyData);
    client.removeListener('end', this.onEarlyEnd);
    client.pause();
    client.write(`${head}\r\n`, 'latin1');
    this.phase = 'open';
    this.openedAt = performance.now();
    this.bytesInBase = client.bytesRead - this.u.head.length - this.earlyBytes;
    this.bytesOutBase = client.bytesWritten;
    this.sent(101, 'upgraded');
    this.u.metrics.websocketOpen.labels(target.upstream.name).inc();
    // Bytes already read past either head go first, then the sockets are piped as they are.
    if (upstreamHead.length > 0) client.write(upstreamHead);
    if (this.u.head.length > 0) socket.write(this.u.head);
    for (const chunk of this.early) socket.write(chunk);
    this.early = [];
    socket.setNoDelay(true);
    socket.on('close', this.onUpstreamClose);
    client.pipe(socket);
    socket.pipe(client);
    const { idleTimeout, maxDuration } = route.websocket;
    // A socket's timeout counts reads and writes alike: every byte either way passes the client socket.
    if (idleTimeout > 0) {
      client.setTimeout(idleTimeout);
      client.on('timeout', () => this.end('idle_timeout'));
    }
    if (maxDuration > 0) this.timer(maxDuration, () => this.end('max_duration'));
  };

  /** The upstream answered something other than 101: relayed as it came, then the connection closes. */
  private readonly onResponse = (res: IncomingMessage): void => {
    this.clearTimers();
    if (this.phase !== 'handshake') {
      res.destroy();
      return;
    }
    const status = res.statusCode ?? 502;
    const target = this.target as UpgradeTarget;
    const failureOn = target.policies?.breaker?.policy.failureOn;
    this.settleBreaker(failureOn && isFailure(failureOn, status, undefined) ? 'failure' : 'success');
    target.upstream.recordResult(this.endpoint as Endpoint, status >= 500, performance.now() - this.sentAt);
    this.phase = 'relay';
    const headers = upgradeResponseHeaders(res.rawHeaders, this.u.requestId, false);
    if ((this.route as RouteModel).retry.attemptsHeader)
      headers.push('x-breakwater-attempts', String(this.attempts));
    let head = `HTTP/1.1 ${status} ${res.statusMessage ?? ''}\r\n`;
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    const client = this.client;
    client.write(`${head}connection: close\r\n\r\n`, 'latin1');
    this.sent(status, statusLabel(status));
    // Without Content-Length (a chunked answer), the body ends where the connection does.
    const bodyTimeout = (this.route as RouteModel).timeouts.body;
    if (bodyTimeout > 0) this.request?.setTimeout(bodyTimeout, () => this.request?.destroy());
    res.on('error', () => client.destroy());
    res.on('aborted', () => client.destroy());
    res.on('end', () => {
      client.end(() => client.destroy());
      res.socket?.destroy();
    });
    res.pipe(client, { end: false });
  };

  private readonly onRequestError = (err: Error): void => {
    if (this.phase === 'relay') {
      this.client.destroy();
      return;
    }
    if (this.phase !== 'handshake') return;
    this.clearTimers();
    this.failed(classify(err, this.connected, this.connected));
  };

  /** The handshake failed: the breaker and outlier detection hear it, the client gets a problem. */
  private failed(failure: AttemptError): void {
    const target = this.target as UpgradeTarget;
    const cause = causeOf(failure);
    const failureOn = target.policies?.breaker?.policy.failureOn;
    // A malformed answer counts as the 502 the client sees, as for any attempt.
    const status = cause === undefined ? 502 : undefined;
    this.settleBreaker(failureOn && isFailure(failureOn, status, cause) ? 'failure' : 'success');
    if (cause !== 'aborted') target.upstream.recordResult(this.endpoint as Endpoint, true, undefined);
    const label = cause === undefined ? 'protocol_error' : cause.replace('-', '_');
    this.answer(failureProblem(failure, target.upstream.name, this.u.requestId), label);
  }

  private settleBreaker(result: 'success' | 'failure' | 'ignored'): void {
    const breaker = this.target?.policies?.breaker;
    if (!breaker || !this.permit) return;
    breaker.onResult(this.permit, result, performance.now() - this.sentAt);
    this.permit = undefined;
  }

  /** Refused before any policy: a problem, counted with outcome `refused`. */
  refuse(p: Problem): void {
    this.answer(p, 'refused');
  }

  /** Writes a problem to the client and closes; the tunnel is over once the socket closes. */
  private answer(p: Problem, outcome: string): void {
    if (this.clientGone || this.phase === 'done') return;
    const withAttempts =
      this.route?.retry.attemptsHeader && this.target
        ? { ...p, headers: [...(p.headers ?? []), 'x-breakwater-attempts', String(this.attempts)] }
        : p;
    this.phase = 'relay';
    this.sent(p.status, outcome);
    endWithProblem(this.client, withAttempts);
  }

  /** Counts the answer the client got (once). */
  private sent(status: number, outcome: string): void {
    this.status = status;
    const { metrics, req, listener } = this.u;
    metrics.websocketUpgrades.labels(this.upstreamName, outcome).inc();
    metrics.requests
      .labels(
        listener,
        this.route?.name ?? '',
        this.upstreamName,
        methodLabel(req.method ?? ''),
        String(status),
      )
      .inc();
  }

  private readonly onClientClose = (hadError: boolean): void => {
    this.closedSides++;
    switch (this.phase) {
      case 'admission':
      case 'handshake':
        // The client left before an answer: the handshake is abandoned, not counted as the upstream's.
        this.clientGone = true;
        this.sent(499, 'client_gone');
        this.request?.destroy();
        this.settleBreaker('ignored');
        // A wait in the bulkhead's queue finishes the tunnel when it ends (and gives the slot back).
        if (!this.queued) this.finish();
        return;
      case 'relay':
        this.request?.destroy();
        this.finish();
        return;
      case 'open':
        this.end(hadError ? 'error' : 'client');
        return;
      default:
        return;
    }
  };

  private readonly onUpstreamClose = (hadError: boolean): void => {
    this.closedSides++;
    this.end(hadError ? 'error' : 'upstream');
  };

  /**
   * Ends an open tunnel. A side that closed cleanly has its close passed on (the other side gets
   * its FIN after what is still buffered for it, and is cut if it lingers); a timeout, an error or
   * shutdown cuts both at once. Frames are never parsed, so breakwater cannot send a close frame.
   */
  private end(reason: CloseReason): void {
    const client = this.client;
    const socket = this.upstreamSocket as Socket;
    if (this.reason === undefined) {
      this.reason = reason;
      const upstream = this.upstreamName;
      this.u.metrics.websocketOpen.labels(upstream).dec();
      this.u.metrics.websocketClosed.labels(upstream, reason).inc();
      this.release();
      if (reason === 'client' || reason === 'upstream') {
        const other = reason === 'client' ? socket : client;
        other.end();
        this.timer(CLOSE_GRACE_MS, () => {
          other.destroy();
          this.finish();
        });
      } else {
        client.destroy();
        socket.destroy();
        this.finish();
        return;
      }
    }
    if (this.closedSides >= 2) this.finish();
  }

  /** Cuts the tunnel or handshake at once (the drain timeout passed). */
  shutdown(): void {
    if (this.phase === 'open') {
      this.end('shutdown');
      return;
    }
    this.clientGone = true;
    this.request?.destroy();
    this.settleBreaker('ignored');
    this.client.destroy();
    if (!this.queued) this.finish();
  }

  /** Gives back what the tunnel holds: its bulkhead slot and its count on the endpoint. */
  private release(): void {
    if (this.slot) {
      this.slot = false;
      this.target?.policies?.bulkhead?.release();
    }
    if (this.endpoint) {
      this.endpoint.inflight--;
      this.endpoint = undefined;
    }
  }

  /** Everything is over: timers cleared, resources released, one access-log line. */
  private finish(): void {
    if (this.phase === 'done') return;
    const wasOpen = this.phase === 'open';
    this.phase = 'done';
    this.clearTimers();
    this.release();
    this.live.delete(this);
    if (!this.client.destroyed) this.client.destroy();
    if (this.upstreamSocket && !this.upstreamSocket.destroyed) this.upstreamSocket.destroy();
    if (!this.u.accessLog) return;
    const { req, requestId, start, logger, listener } = this.u;
    const now = performance.now();
    const url = req.url ?? '';
    const q = url.indexOf('?');
    logger.info(
      {
        listener,
        route: this.route?.name,
        upstream: this.route?.upstream,
        request_id: requestId,
        method: req.method,
        path: q < 0 ? url : url.slice(0, q),
        upgrade: 'websocket',
        status: this.status || 499,
        duration_ms: Math.round((now - start) * 1e3) / 1e3,
        open_ms: wasOpen ? Math.round((now - this.openedAt) * 1e3) / 1e3 : undefined,
        bytes_in: wasOpen ? this.client.bytesRead - this.bytesInBase : 0,
        bytes_out: wasOpen ? this.client.bytesWritten - this.bytesOutBase : 0,
        attempts: this.attempts,
        closed_by: this.reason,
      },
      'websocket',
    );
  }

  private timer(ms: number, fn: () => void): void {
    this.timers.push(setTimeout(fn, ms));
  }

  private clearTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
  }
}

function ignore(): void {}
