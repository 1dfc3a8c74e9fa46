/**
 * WebSocket pass-through: the upgrade tunnel.
 *
 * A request with `Connection: upgrade` never reaches fastify's request path: Node hands it to the
 * server's 'upgrade' event, where the listener's handler refuses and routes it as it does every
 * request and then gives it to `WebSocketTunnels.open`:
 *
 *   1. a route with `websocket: false` refuses it (403 upgrade-refused);
 *   2. it runs the route's upgrade pipeline (pipeline/index.ts): the same admission layers as any
 *      request to the upstream (rate limiter: 429, or a wait in the shaper; bulkhead: a slot held
 *      for the whole life of the connection, 503; circuit breaker: 503), then the handshake itself
 *      (handshake.ts: an endpoint from the balancer, 503 when none, a connection of its own);
 *   3. a 101 is relayed and the two sockets are piped, bytes untouched (frames are never parsed),
 *      until either side closes, nothing flows either way for `websocket_idle_timeout`, or
 *      `websocket_max_duration` passes; any other answer is relayed as it came and the connection
 *      closed; a failure becomes a problem+json answer (502/504).
 *
 * The handshake is one attempt for the circuit breaker and outlier detection: a 101 is a success;
 * an answer that `failure_on` names (5xx by default), a connect failure, a reset or a timeout is a
 * failure. There are no retries: a handshake is sent once.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Handshake, HandshakeResponse } from '../attempt/handshake.js';
import { upgradeResponseHeaders } from '../attempt/headers.js';
import type { Clock } from '../clock.js';
import type { RouteModel } from '../config/resolve.js';
import { classifyOutcome, statusLabel } from '../pipeline/outcome.js';
import { type Call, type Outcome, type RequestContext, runFinishers } from '../pipeline/types.js';
import { endWithProblem, failureProblem, type Problem, problem } from './problem.js';
import type { Recorder } from './recorder.js';

/** An upgrade request as the listener received it. */
export interface UpgradeRequest {
  readonly req: IncomingMessage;
  readonly socket: Duplex;
  /** Bytes the client sent after the request head (early frames): forwarded after the 101. */
  readonly head: Buffer;
  readonly requestId: string;
  /** Clock time when the request arrived. */
  readonly start: number;
  readonly clock: Clock;
  /** Counts and logs it, as every call of the listener. */
  readonly recorder: Recorder;
}

/** Where a routed upgrade request goes: its context and the route's upgrade pipeline. */
export interface UpgradeTarget {
  readonly ctx: RequestContext;
  readonly pipeline: Call<HandshakeResponse>;
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
  refuse(u: UpgradeRequest, route: RouteModel | undefined, p: Problem): void {
    const t = new Tunnel(u, route, undefined, this.live);
    this.live.add(t);
    t.refuse(p);
  }

  open(u: UpgradeRequest, target: UpgradeTarget): void {
    const t = new Tunnel(u, target.ctx.route, target, this.live);
    this.live.add(t);
    t.start();
  }

  /** Cuts every tunnel and handshake (the drain timeout passed). */
  closeAll(): void {
    for (const t of [...this.live]) t.shutdown();
  }
}

/** The `outcome` label of a handshake a policy refused, by the problem's kind. */
const REFUSED_BY: Partial<Record<Problem['kind'], string>> = {
  'rate-limited': 'rate_limited',
  'bulkhead-full': 'bulkhead_full',
  'circuit-open': 'circuit_open',
  'no-healthy-endpoint': 'no_endpoint',
};

/**
 * pending: the upgrade pipeline runs (admission, then the handshake); open: a 101 relayed, the
 * sockets piped; relay: any other answer (or a problem) on its way to the client; done: over.
 */
type Phase = 'pending' | 'open' | 'relay' | 'done';

class Tunnel {
  private phase: Phase = 'pending';
  private readonly client: Socket;
  private upstreamSocket: Socket | undefined;
  private handshake: Handshake | undefined;
  /** Status sent to the client (0: none yet). */
  private status = 0;
  private reason: CloseReason | undefined;
  private openedAt = 0;
  private bytesInBase = 0;
  private bytesOutBase = 0;
  private closedSides = 0;
  private timers: unknown[] = [];
  /** What the client sent after its request head while the handshake ran. */
  private early: Buffer[] = [];
  private earlyBytes = 0;
  private readonly ctx: RequestContext | undefined;

  constructor(
    private readonly u: UpgradeRequest,
    private readonly route: RouteModel | undefined,
    private readonly target: UpgradeTarget | undefined,
    private readonly live: Set<Tunnel>,
  ) {
    this.ctx = target?.ctx;
    this.client = u.socket as Socket;
    // Errors end in 'close', which is where they are handled.
    this.client.on('error', ignore);
    this.client.on('close', this.onClientClose);
    this.client.on('data', this.onEarlyData);
    this.client.on('end', this.onEarlyEnd);
  }

  private readonly onEarlyData = (chunk: Buffer): void => {
    if (this.phase !== 'pending') return; // answered: dropped
    this.early.push(chunk);
    this.earlyBytes += chunk.length;
    if (this.earlyBytes > EARLY_LIMIT) this.client.pause();
  };

  /** The client half-closed before the handshake was answered: it left. */
  private readonly onEarlyEnd = (): void => {
    if (this.phase === 'pending') this.client.destroy();
  };

  get isOpen(): boolean {
    return this.phase === 'open' && this.reason === undefined;
  }

  private get attempts(): number {
    return this.ctx?.attempts ?? 0;
  }

  start(): void {
    const { ctx, pipeline } = this.target as UpgradeTarget;
    const route = ctx.route;
    const { requestId } = this.u;
    if (this.client.destroyed) {
      // The client left before the handshake was looked at ('close' may already have passed).
      ctx.clientGone = true;
      this.sent(499, 'client_gone');
      this.finish();
      return;
    }
    if (!route.websocket.enabled) {
      const detail = `route ${route.name} does not pass WebSocket upgrades through (websocket: false)`;
      this.refuse(problem('upgrade-refused', detail, { requestId }));
      return;
    }
    if (ctx.upstream.model.protocol === 'h2c') {
      // The handshake is HTTP/1.1; an h2c upstream speaks only HTTP/2 (WebSocket over HTTP/2,
      // RFC 8441, is not supported).
      const detail = `upstream ${ctx.upstream.name} speaks h2c only: WebSocket handshakes are HTTP/1.1`;
      this.refuse(problem('upgrade-refused', detail, { requestId }));
      return;
    }
    pipeline(ctx).then(this.answered, (err: unknown) => {
      this.u.recorder.logOf(route).error({ err, request_id: requestId }, 'pipeline failed');
      this.answer(this.internalError(), 'error');
    });
  }

  /** The upgrade pipeline's outcome: a policy's refusal, a failure, or the upstream's answer. */
  private readonly answered = (outcome: Outcome<HandshakeResponse>): void => {
    if (this.phase !== 'pending') {
      // The client left (or shutdown cut it) while the pipeline ran.
      if (outcome.type === 'response') outcome.attempt.discard();
      return;
    }
    const name = (this.ctx as RequestContext).upstream.name;
    switch (outcome.type) {
      case 'problem': {
        const kind = outcome.problem.kind;
        this.answer(outcome.problem, REFUSED_BY[kind] ?? kind.replaceAll('-', '_'));
        return;
      }
      case 'failure':
        this.answer(failureProblem(outcome.error, name, this.u.requestId), classifyOutcome(outcome).label);
        return;
      case 'local':
        this.answer(this.internalError(), 'error'); // no fallback runs for a handshake
        return;
      case 'response':
        this.handshake = outcome.attempt;
        if (outcome.head.status === 101) this.upgraded(outcome);
        else this.relay(outcome);
        return;
    }
  };

  /** A 101: relayed, then the sockets are piped. */
  private upgraded(outcome: HandshakeResponse): void {
    const socket = outcome.attempt.socket as Socket;
    const upstreamHead = outcome.attempt.upstreamHead as Buffer;
    this.upstreamSocket = socket;
    const route = this.route as RouteModel;
    const headers = upgradeResponseHeaders(outcome.head.rawHeaders, this.u.requestId, true);
    if (route.retry.attemptsHeader) headers.push('x-breakwater-attempts', String(this.attempts));
    let head = 'HTTP/1.1 101 Switching Protocols\r\n';
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    const client = this.client;
    client.removeListener('data', this.onEarlyData);
    client.removeListener('end', this.onEarlyEnd);
    client.pause();
    client.write(`${head}\r\n`, 'latin1');
    this.phase = 'open';
    this.openedAt = this.u.clock.now();
    this.bytesInBase = client.bytesRead - this.u.head.length - this.earlyBytes;
    this.bytesOutBase = client.bytesWritten;
    this.sent(101, 'upgraded');
    this.u.recorder.websocketOpened(route.upstream);
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
  }

  /** The upstream answered something other than 101: relayed as it came, then the connection closes. */
  private relay(outcome: HandshakeResponse): void {
    const res = outcome.attempt.response as IncomingMessage;
    const status = outcome.head.status;
    const route = this.route as RouteModel;
    this.phase = 'relay';
    const headers = upgradeResponseHeaders(outcome.head.rawHeaders, this.u.requestId, false);
    if (route.retry.attemptsHeader) headers.push('x-breakwater-attempts', String(this.attempts));
    let head = `HTTP/1.1 ${status} ${outcome.head.statusText}\r\n`;
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    const client = this.client;
    client.write(`${head}connection: close\r\n\r\n`, 'latin1');
    this.sent(status, statusLabel(status));
    const request = outcome.attempt.request;
    outcome.attempt.afterError = () => client.destroy();
    // Without Content-Length (a chunked answer), the body ends where the connection does.
    const bodyTimeout = route.timeouts.body;
    if (bodyTimeout > 0) request.setTimeout(bodyTimeout, () => request.destroy());
    res.on('error', () => client.destroy());
    res.on('aborted', () => client.destroy());
    res.on('end', () => {
      client.end(() => client.destroy());
      res.socket?.destroy();
    });
    res.pipe(client, { end: false });
  }

  private internalError(): Problem {
    const detail = 'internal error while proxying';
    return problem('upstream-bad-response', detail, { status: 500, requestId: this.u.requestId });
  }

  /** Refused before any policy: a problem, counted with outcome `refused`. */
  refuse(p: Problem): void {
    this.answer(p, 'refused');
  }

  /** Writes a problem to the client and closes; the tunnel is over once the socket closes. */
  private answer(p: Problem, outcome: string): void {
    if (this.ctx?.clientGone || this.phase === 'done') return;
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
    this.u.recorder.upgradeAnswered(this.route, this.u.req.method, status, outcome);
  }

  private readonly onClientClose = (hadError: boolean): void => {
    this.closedSides++;
    switch (this.phase) {
      case 'pending': {
        // The client left before an answer: the handshake is abandoned (the finishers stop it and
        // give back a bulkhead slot or queue place), not counted as the upstream's.
        const ctx = this.ctx;
        if (ctx) ctx.clientGone = true;
        this.sent(499, 'client_gone');
        this.finish();
        return;
      }
      case 'relay':
        this.handshake?.request.destroy();
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
      this.u.recorder.websocketClosed(this.route?.upstream ?? '', reason);
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
    if (this.ctx) this.ctx.clientGone = true;
    this.handshake?.request.destroy();
    this.client.destroy();
    this.finish();
  }

  /**
   * Gives back what the tunnel holds (its call's finishers: the bulkhead slot or queue place, its
   * count on the endpoint; a handshake still in flight is stopped).
   */
  private release(): void {
    if (this.ctx) runFinishers(this.ctx);
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
    const { req, requestId, start, recorder } = this.u;
    const now = this.u.clock.now();
    const url = req.url ?? '';
    const q = url.indexOf('?');
    recorder.upgradeEnded(this.route, {
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
    });
  }

  private timer(ms: number, fn: () => void): void {
    this.timers.push(this.u.clock.setTimeout(fn, ms));
  }

  private clearTimers(): void {
    const clock = this.u.clock;
    for (const t of this.timers) clock.clearTimeout(t);
    this.timers = [];
  }
}

function ignore(): void {}
