/**
 * The admin listener: health, metrics and (later) operator endpoints, on their own port so the
 * data plane's routes can never shadow them. Each group of routes is its own small plugin.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Metrics } from '../observability/metrics.js';
import { healthRoutes, type Readiness } from './health.js';
import { metricsRoute } from './metrics.js';

export interface AdminDeps {
  readonly host: string;
  readonly port: number;
  readonly metrics: Metrics;
  readonly readiness: Readiness;
}

export class AdminListener {
  private constructor(readonly app: FastifyInstance) {}

  static async start(deps: AdminDeps): Promise<AdminListener> {
    const app = Fastify({ logger: false, forceCloseConnections: true });
    await app.register(healthRoutes(deps.readiness));
    await app.register(metricsRoute(deps.metrics));
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
