/**
 * A data-plane listener: one fastify instance bound to the configured host and port. fastify does
 * the HTTP/1.1 server side (connection handling, limits, lifecycle); every request is handed
 * unparsed to the ProxyHandler, whose route and pipeline decide the rest. Bodies are never parsed:
 * a catch-all content-type parser leaves the request stream untouched for the upstream.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { ListenerModel } from '../config/resolve.js';
import { problem, sendProblem } from '../proxy/problem.js';
import type { HandlerDeps, ProxyHandler } from './handler.js';

export class DataListener {
  private constructor(
    public model: ListenerModel,
    readonly app: FastifyInstance,
    private readonly handler: ProxyHandler,
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
    return new DataListener(model, app, handler);
  }

  get port(): number {
    return (this.app.server.address() as AddressInfo).port;
  }

  /** WebSocket tunnels open now. */
  get openWebSockets(): number {
    return this.handler.tunnels.openCount;
  }

  /** Stops accepting; resolves when every connection has ended, open WebSockets included. */
  close(): Promise<void> {
    return this.app.close();
  }

  /**
   * Ends every connection at once (drain timeout passed). An upgraded socket has left Node's HTTP
   * connection list (closeAllConnections does not see it), so WebSocket tunnels are cut here.
   */
  forceClose(): void {
    this.app.server.closeAllConnections();
    this.handler.tunnels.closeAll();
  }
}
