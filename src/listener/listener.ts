/**
 * A data-plane listener: one fastify instance bound to the configured host and port. fastify does
 * the HTTP/1.1 server side (connection handling, limits, lifecycle); every request is handed
 * unparsed to the ProxyHandler, whose route and pipeline decide the rest. Bodies are never parsed:
 * a catch-all content-type parser leaves the request stream untouched for the upstream.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import http2, { type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { ListenerModel } from '../config/resolve.js';
import { problem, sendProblem } from '../proxy/problem.js';
import type { HandlerDeps, ProxyHandler } from './handler.js';

/** What an HTTP/2 connection starts with (RFC 9113 3.4). */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export class DataListener {
  private constructor(
    public model: ListenerModel,
    readonly app: FastifyInstance,
    private readonly handler: ProxyHandler,
    private readonly h2Sessions: Set<Http2Session> | undefined,
  ) {}

  /** A reload kept this listener's address: new routes and pipelines, same socket. */
  update(model: ListenerModel, deps: HandlerDeps): void {
    this.model = model;
    this.handler.update(deps);
  }

  static async start(model: ListenerModel, handler: ProxyHandler): Promise<DataListener> {
    const limits = model.limits;
    const app = Fastify({
      logger: false,
      return503OnClosing: false,
      forceCloseConnections: 'idle',
      keepAliveTimeout: limits.keepaliveTimeout,
      maxRequestsPerSocket: limits.maxRequestsPerConnection || 0,
      requestTimeout: 0,
      connectionTimeout: 0,
      exposeHeadRoutes: false,
      // A percent-encoded byte that is not UTF-8 (`%80`) is still a valid URL for the upstream.
      frameworkErrors: (error, request, reply) => {
        if (error.code === 'FST_ERR_BAD_URL') {
          reply.hijack();
          handler.handle(request.raw, reply.raw);
          return;
        }
        reply.hijack();
        sendProblem(reply.raw, problem('bad-request', error.message, { headers: ['connection', 'close'] }));
      },
      http: {
        headersTimeout: limits.headerTimeout,
        maxHeaderSize: limits.maxHeaderBytes,
        requireHostHeader: true,
      },
    });
    // The request is taken over at onRequest, before fastify looks at its body or content type:
    // a proxy forwards whatever media type it is given, byte for byte.
    // Callback style, and `done` is never called: the request leaves fastify's lifecycle here
    // (an async hook would cost a promise per request for nothing).
    app.addHook('onRequest', (request, reply, _done) => {
      reply.hijack();
      handler.handle(request.raw, reply.raw);
    });
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', (_request, _payload, done) => done(null));
    app.all('/*', (request, reply) => {
      reply.hijack();
      handler.handle(request.raw, reply.raw);
    });
    // Whatever fastify's router does not take (methods it does not know, such as PURGE; `*`;
    // absolute-form targets) goes to the same handler, which routes, refuses or answers 404 itself.
    app.setNotFoundHandler((request, reply) => {
      reply.hijack();
      handler.handle(request.raw, reply.raw);
    });
    await app.listen({ host: model.host, port: model.port });
    app.server.maxConnections = limits.maxConnections;
    // One more than the limit, so that the handler sees the overflow and answers 431.
    app.server.maxHeadersCount = limits.maxHeaders + 1;
    // `Connection: upgrade` requests come here, not to onRequest: WebSocket pass-through (every
    // other protocol is refused). Registering the listener is what makes Node hand them over.
    app.server.on('upgrade', (req, socket, head) => handler.upgrade(req, socket, head));
    // CONNECT would tunnel anywhere: refused.
    app.server.on('connect', (_req, socket) => {
      socket.end(
        'HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\ncontent-length: 0\r\nconnection: close\r\n\r\n',
      );
    });
    const sessions = model.protocol === 'h2c' ? acceptH2c(app, model, handler) : undefined;
    return new DataListener(model, app, handler, sessions);
  }

  get port(): number {
    return (this.app.server.address() as AddressInfo).port;
  }

  /** WebSocket tunnels open now. */
  get openWebSockets(): number {
    return this.handler.tunnels.openCount;
  }

  /** Stops accepting; resolves when every connection has ended (HTTP/2 ones get a GOAWAY), open WebSockets included. */
  close(): Promise<void> {
    const closing = this.app.close();
    if (this.h2Sessions) for (const s of this.h2Sessions) s.close();
    return closing;
  }

  /**
   * Ends every connection at once (drain timeout passed). An upgraded socket has left Node's HTTP
   * connection list (closeAllConnections does not see it), so WebSocket tunnels are cut here.
   */
  forceClose(): void {
    this.app.server.closeAllConnections();
    if (this.h2Sessions) for (const s of this.h2Sessions) s.destroy();
    this.handler.tunnels.closeAll();
  }
}

/**
 * HTTP/2 with prior knowledge beside HTTP/1.1 on one port: each new connection's first bytes are
 * read; the HTTP/2 preface hands it to a node:http2 server, anything else to fastify's HTTP/1.1
 * server, with the bytes read put back. HTTP/2 requests go to the same ProxyHandler through Node's
 * compatibility API (Http2ServerRequest/Response). Returns the open HTTP/2 sessions.
 */
function acceptH2c(app: FastifyInstance, model: ListenerModel, handler: ProxyHandler): Set<Http2Session> {
  const limits = model.limits;
  const h2 = http2.createServer({
    maxSessionMemory: 16,
    settings: { maxConcurrentStreams: 250, maxHeaderListSize: limits.maxHeaderBytes },
    // Header count, as for HTTP/1.1 (the handler answers 431 past maxHeaders).
    maxHeaderListPairs: limits.maxHeaders + 5,
  });
  const sessions = new Set<Http2Session>();
  h2.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    // An idle HTTP/2 connection closes as an idle keep-alive connection does.
    session.setTimeout(limits.keepaliveTimeout, () => session.close());
  });
  h2.on('request', (req: Http2ServerRequest, res: Http2ServerResponse) => {
    // The authority stands in for Host, for routing and X-Forwarded-Host.
    if (req.headers.host === undefined && req.authority) req.headers.host = req.authority;
    handler.handle(req as unknown as IncomingMessage, res as unknown as ServerResponse);
  });
  const server = app.server;
  const http1 = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    let seen: Buffer | undefined;
    // A connection that sends nothing is closed as a slow request head would be.
    socket.setTimeout(limits.headerTimeout, () => socket.destroy());
    const onData = (chunk: Buffer) => {
      seen = seen ? Buffer.concat([seen, chunk]) : chunk;
      const n = Math.min(seen.length, H2_PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isH2 && seen.length < H2_PREFACE.length) return; // a prefix so far: wait for more
      socket.off('data', onData);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(seen);
      if (isH2) {
        h2.emit('connection', socket);
      } else {
        for (const l of http1) l.call(server, socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  });
  return sessions;
}
