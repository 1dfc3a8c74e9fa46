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

export interface ListenerOptions {
  /** Keep-alive idle time of client connections (ms). */
  readonly keepAliveTimeout?: number;
}

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

  static async start(
    model: ListenerModel,
    handler: ProxyHandler,
    options: ListenerOptions = {},
  ): Promise<DataListener> {
    const app = Fastify({
      logger: false,
      return503OnClosing: false,
      forceCloseConnections: 'idle',
      keepAliveTimeout: options.keepAliveTimeout ?? 65_000,
      requestTimeout: 0,
      connectionTimeout: 0,
      exposeHeadRoutes: false,
      http: { headersTimeout: 60_000 },
    });
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', (_request, _payload, done) => done(null));
    app.all('/*', (request, reply) => {
      reply.hijack();
      handler.handle(request.raw, reply.raw);
    });
    app.setNotFoundHandler((request, reply) => {
      reply.hijack();
      sendProblem(reply.raw, problem('no-route', `no route matches ${request.method} ${request.url}`));
    });
    await app.listen({ host: model.host, port: model.port });
    return new DataListener(model, app, handler);
  }

  get port(): number {
    return (this.app.server.address() as AddressInfo).port;
  }

  /** Stops accepting; resolves when every connection has ended. */
  close(): Promise<void> {
    return this.app.close();
  }

  /** Ends every connection at once (drain timeout passed). */
  forceClose(): void {
    this.app.server.closeAllConnections();
  }
}
