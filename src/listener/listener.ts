/**
 * A data-plane listener: one node:http server bound to the configured host and port. Node does
 * the HTTP/1.1 server side (connection handling, limits, timeouts); every request is handed
 * unparsed to the ProxyHandler, whose route and pipeline decide the rest (its body is never
 * parsed: the request stream goes to the upstream untouched). With
 * `protocol: h2c`, connections that open with the HTTP/2 preface go to a node:http2 server whose
 * requests reach the same ProxyHandler; `upgrade` requests go to its WebSocket tunnel.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2, { type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ListenerModel } from '../config/resolve.js';
import { rememberPeer } from './client-address.js';
import { connectionOf, trackConnection } from './connection.js';
import { ALLOWED_METHODS, type HandlerDeps, type ProxyHandler } from './handler.js';
import { endWithProblem, problem } from './problem.js';

/** What an HTTP/2 connection starts with (RFC 9113 3.4). */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * The most fields Node accepts in one HTTP/2 header block: the 4 pseudo-headers, `max_headers`,
 * and as many again for cookie crumbs (RFC 9113 8.2.3: a browser may send each cookie as its own
 * field; the handler counts them as one Cookie header).
 */
function maxHeaderPairs(maxHeaders: number): number {
  return 4 + 2 * maxHeaders;
}

/**
 * How often Node looks for connections past `header_timeout` (its default, 30 s, would let a
 * request head trickle for up to 30 s longer than configured): a quarter of the timeout, at most 1 s.
 */
function checkingInterval(headerTimeout: number): number {
  return Math.max(50, Math.min(1000, Math.floor(headerTimeout / 4)));
}

export class DataListener {
  /** HTTP/2 sessions open now, and connections whose first bytes are still awaited. */
  private readonly h2Sessions = new Set<Http2Session>();
  private readonly sniffing = new Set<Socket>();
  private h2: http2.Http2Server | undefined;
  private h2Pairs = 0;
  private closing = false;
  private closed: Promise<void> | undefined;

  private constructor(
    public model: ListenerModel,
    readonly server: http.Server,
    private readonly handler: ProxyHandler,
  ) {}

  /**
   * A reload kept this listener's address: new routes and pipelines, same socket. A change of
   * `protocol` or limits applies to the connections that open from now on.
   */
  update(model: ListenerModel, deps: HandlerDeps): void {
    this.model = model;
    this.handler.update(deps);
    // The server's own limits follow too (max_header_bytes is fixed when the server is made).
    const server = this.server;
    const limits = model.limits;
    server.headersTimeout = limits.headerTimeout;
    server.keepAliveTimeout = limits.keepaliveTimeout;
    server.maxRequestsPerSocket = limits.maxRequestsPerConnection || 0;
    server.maxConnections = limits.maxConnections;
    server.maxHeadersCount = limits.maxHeaders + 1;
  }

  static async start(model: ListenerModel, handler: ProxyHandler): Promise<DataListener> {
    const limits = model.limits;
    // A plain node:http server: every request goes straight to the handler, which routes, refuses
    // or answers it (a framework's request objects and router in front of it cost a fifth of the
    // CPU of a proxied request, for nothing it uses). fastify serves the admin listener only.
    const server = http.createServer({
      keepAliveTimeout: limits.keepaliveTimeout,
      requestTimeout: 0,
      headersTimeout: limits.headerTimeout,
      connectionsCheckingInterval: checkingInterval(limits.headerTimeout),
      maxHeaderSize: limits.maxHeaderBytes,
      // The handler refuses an HTTP/1.1 request without Host itself, as a problem.
      requireHostHeader: false,
    });
    server.maxRequestsPerSocket = limits.maxRequestsPerConnection || 0;
    server.timeout = 0;
    let listener: DataListener | undefined;
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      // Once closing, every answer closes its connection (a keep-alive client moves on).
      if (listener?.closing) res.setHeader('connection', 'close');
      handler.handle(req, res);
    });
    // What Node's parser refuses (malformed framing, headers too large, the header timeout) is
    // answered as a problem, in its turn after the pipelined requests before it.
    server.on('clientError', (err: Error, socket: Duplex) => handler.clientError(err, socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: model.host, port: model.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.maxConnections = limits.maxConnections;
    // One more than the limit, so that the handler sees the overflow and answers 431.
    server.maxHeadersCount = limits.maxHeaders + 1;
    // `Expect:` is left to the handler: `100-continue` is answered only once the request passed
    // every refusal (a body over the limit is never uploaded), any other expectation is 417.
    // (Without these listeners Node sends 100 Continue at once, or a bare 417.)
    server.on('checkContinue', (req, res) => handler.handle(req, res));
    server.on('checkExpectation', (req, res) => handler.handle(req, res));
    // `Connection: upgrade` requests come here, not to onRequest: WebSocket pass-through (every
    // other protocol is refused). Registering the listener is what makes Node hand them over.
    // Answers still owed to requests pipelined before it go out first.
    server.on('upgrade', (req, socket, head) => {
      const conn = connectionOf(socket);
      if (conn === undefined) handler.upgrade(req, socket, head);
      else conn.afterResponses(() => handler.upgrade(req, socket, head));
    });
    // CONNECT would tunnel anywhere: refused.
    server.on('connect', (_req, socket) => {
      const refusal = problem('method-not-allowed', 'CONNECT is refused: breakwater is not a forward proxy', {
        headers: ['allow', ALLOWED_METHODS],
      });
      const conn = connectionOf(socket);
      if (conn === undefined) {
        endWithProblem(socket, refusal);
        return;
      }
      conn.refused = true;
      conn.afterResponses(() => endWithProblem(socket, refusal));
    });
    listener = new DataListener(model, server, handler);
    listener.routeConnections();
    return listener;
  }

  /**
   * HTTP/2 with prior knowledge beside HTTP/1.1 on one port (`protocol: h2c`): a new connection's
   * first bytes are read; the HTTP/2 preface hands it to a node:http2 server, anything else to
   * Node's HTTP/1.1 connection handling (fastify's server), with the bytes read put back. HTTP/2
   * requests go to the same ProxyHandler through Node's compatibility API. The choice is made per
   * connection from the current model, so a reload may turn h2c on or off on a bound port; an
   * `http1` listener hands every connection straight to HTTP/1.1.
   */
  private routeConnections(): void {
    const server = this.server;
    const http1 = server.listeners('connection') as ((socket: Socket) => void)[];
    const toHttp1 = (socket: Socket) => {
      for (const l of http1) l.call(server, socket);
    };
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => {
      // The peer's address is kept now: a socket that is gone no longer knows it.
      rememberPeer(socket, socket.remoteAddress);
      if (this.model.protocol !== 'h2c') {
        trackConnection(socket);
        toHttp1(socket);
        return;
      }
      if (this.closing) {
        socket.destroy();
        return;
      }
      this.sniffing.add(socket);
      let seen: Buffer | undefined;
      // Until it is handed over nobody else listens: a reset must not become an uncaught error.
      const onError = () => socket.destroy();
      // A connection that sends nothing is closed as a slow request head would be.
      const onTimeout = () => socket.destroy();
      const onClose = () => this.sniffing.delete(socket);
      const onData = (chunk: Buffer) => {
        seen = seen ? Buffer.concat([seen, chunk]) : chunk;
        const n = Math.min(seen.length, H2_PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (isH2 && seen.length < H2_PREFACE.length) return; // a prefix so far: wait for more
        socket.off('data', onData);
        socket.off('error', onError);
        socket.off('timeout', onTimeout);
        socket.off('close', onClose);
        socket.setTimeout(0);
        this.sniffing.delete(socket);
        socket.pause();
        socket.unshift(seen);
        if (isH2) {
          this.http2Server().emit('connection', socket);
        } else {
          trackConnection(socket);
          toHttp1(socket);
          socket.resume();
        }
      };
      socket.on('data', onData);
      socket.on('error', onError);
      socket.on('close', onClose);
      socket.setTimeout(this.model.limits.headerTimeout);
      socket.once('timeout', onTimeout);
    });
  }

  /**
   * The node:http2 server for this listener's HTTP/2 connections (made at the first one, and again
   * when a reload changes `max_headers`, for the connections that open from then on).
   */
  private http2Server(): http2.Http2Server {
    const pairs = maxHeaderPairs(this.model.limits.maxHeaders);
    if (this.h2 && this.h2Pairs === pairs) return this.h2;
    const h2 = http2.createServer({
      maxSessionMemory: 16,
      // A ceiling on the fields of one header block, enforced by Node while it decodes (stream
      // reset, ENHANCE_YOUR_CALM, beyond): it bounds the header list one small block can stand
      // for (each field can be a one-byte reference to a 4 KiB dynamic-table entry) even from a
      // client that ignores SETTINGS. The handler enforces the configured count and size (431).
      maxHeaderListPairs: pairs,
    });
    h2.on('session', (session) => {
      const limits = this.model.limits;
      rememberPeer(session, session.socket.remoteAddress);
      this.h2Sessions.add(session);
      session.once('close', () => this.h2Sessions.delete(session));
      session.settings({ maxConcurrentStreams: 250, maxHeaderListSize: limits.maxHeaderBytes });
      // An idle HTTP/2 connection closes as an idle keep-alive connection does.
      session.setTimeout(limits.keepaliveTimeout, () => session.close());
      if (this.closing) session.close();
    });
    const onRequest = (req: Http2ServerRequest, res: Http2ServerResponse) => {
      // The authority stands in for Host, for routing and X-Forwarded-Host.
      if (req.headers.host === undefined && req.authority) req.headers.host = req.authority;
      this.handler.handle(req as unknown as IncomingMessage, res as unknown as ServerResponse);
    };
    h2.on('request', onRequest);
    // `Expect:` as on HTTP/1.1: 100-continue only after the refusals, anything else 417.
    h2.on('checkContinue', onRequest);
    h2.on('checkExpectation', onRequest);
    this.h2 = h2;
    this.h2Pairs = pairs;
    return h2;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** WebSocket tunnels open now. */
  get openWebSockets(): number {
    return this.handler.tunnels.openCount;
  }

  /** Stops accepting; resolves when every connection has ended (HTTP/2 ones get a GOAWAY), open WebSockets included. */
  close(): Promise<void> {
    // Once: a listener a reload retired may be closed again by a stop.
    if (this.closed) return this.closed;
    this.closing = true;
    const server = this.server;
    const closing = new Promise<void>((resolve) => server.close(() => resolve()));
    // Idle keep-alive connections end now; busy ones after their answer (Connection: close).
    server.closeIdleConnections();
    this.closed = closing;
    for (const s of this.h2Sessions) s.close();
    // Connections that have not said which protocol they speak yet have no request to finish.
    for (const socket of this.sniffing) socket.destroy();
    return closing;
  }

  /**
   * Ends every connection at once (drain timeout passed). An upgraded socket has left Node's HTTP
   * connection list (closeAllConnections does not see it), so WebSocket tunnels are cut here.
   */
  forceClose(): void {
    this.server.closeAllConnections();
    for (const s of this.h2Sessions) s.destroy();
    for (const socket of this.sniffing) socket.destroy();
    this.handler.tunnels.closeAll();
  }
}
