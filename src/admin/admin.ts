/**
 * The admin listener: health, metrics and operator endpoints, on their own port so the data
 * plane's routes can never shadow them. Each group of routes is its own small plugin.
 *
 * Bodies are read as text whatever their content type (curl's `-d` says
 * `application/x-www-form-urlencoded`), and each write call parses its JSON itself; every error,
 * fastify's own included, is answered as `application/problem+json` (problem.ts).
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { deferredRoutes } from '../deferred/admin-routes.js';
import type { Metrics } from '../observability/metrics.js';
import { sagaRoutes } from '../sagas/admin-routes.js';
import { configRoutes } from './config-routes.js';
import { healthRoutes, type Readiness } from './health.js';
import { metricsRoute } from './metrics.js';
import { adminProblem, kindOfStatus } from './problem.js';
import type { AdminRuntime } from './runtime.js';
import { stateRoutes } from './state-routes.js';
import { statusPage } from './status-page.js';

export interface AdminDeps {
  readonly host: string;
  readonly port: number;
  readonly metrics: Metrics;
  readonly readiness: Readiness;
  readonly runtime: AdminRuntime;
  /** Bearer token for mutating calls from outside loopback (from admin.token_env). */
  readonly adminToken: string | undefined;
}

/** Admin calls carry a few bytes of JSON. */
const ADMIN_BODY_LIMIT = 64 * 1024;

/**
 * No admin route declares a schema: these compilers (never called) keep fastify from loading ajv
 * and fast-json-stringify (about 100 modules, resident in every sidecar) all the same. fastify
 * types them as ajv's compilers, which a no-op cannot satisfy without a cast.
 */
const NO_SCHEMAS = {
  compilersFactory: {
    buildValidator: () => () => () => true,
    buildSerializer: () => () => (data: unknown) => JSON.stringify(data),
  },
} as unknown as FastifyServerOptions['schemaController'];

export class AdminListener {
  private constructor(readonly app: FastifyInstance) {}

  static async start(deps: AdminDeps): Promise<AdminListener> {
    const app = Fastify({
      logger: false,
      forceCloseConnections: true,
      bodyLimit: ADMIN_BODY_LIMIT,
      schemaController: NO_SCHEMAS,
    });
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => done(null, body));
    app.setNotFoundHandler((req, reply) =>
      adminProblem(reply, 404, 'not-found', `no admin endpoint ${req.method} ${req.url.split('?')[0]}`),
    );
    app.setErrorHandler((err: { statusCode?: number; message?: string }, _req, reply) => {
      const status = err.statusCode !== undefined && err.statusCode >= 400 ? err.statusCode : 500;
      return adminProblem(reply, status, kindOfStatus(status), err.message ?? String(err));
    });
    await app.register(healthRoutes(deps.readiness));
    await app.register(metricsRoute(deps.metrics));
    await app.register(configRoutes(deps.runtime, deps.adminToken));
    await app.register(stateRoutes(deps.runtime, deps.adminToken));
    await app.register(sagaRoutes(deps.runtime, deps.adminToken));
    await app.register(deferredRoutes(deps.runtime, deps.adminToken));
    await app.register(statusPage());
    await app.listen({ host: deps.host, port: deps.port });
    return new AdminListener(app);
  }

  get port(): number {
    return (this.app.server.address() as AddressInfo).port;
  }

  close(): Promise<void> {
    return this.app.close();
  }
}
