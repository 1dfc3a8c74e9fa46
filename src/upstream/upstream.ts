/**
 * An upstream: its endpoints, a bounded keep-alive connection pool per endpoint (undici Pool), and
 * the choice of endpoint for each attempt.
 */
import { Pool } from 'undici';
import type { EndpointModel, UpstreamModel } from '../config/resolve.js';

export class Endpoint {
  readonly pool: Pool;
  /** Attempts in flight to this endpoint. */
  inflight = 0;
  constructor(
    readonly model: EndpointModel,
    upstream: UpstreamModel,
  ) {
    this.pool = new Pool(model.origin, {
      connections: upstream.maxConnections,
      pipelining: 1,
      keepAliveTimeout: upstream.keepaliveTimeout,
      keepAliveMaxTimeout: upstream.keepaliveTimeout,
      connect: { timeout: upstream.timeouts.connect },
      headersTimeout: 0,
      bodyTimeout: upstream.timeouts.body,
      strictContentLength: true,
    });
  }
}

export class Upstream {
  readonly name: string;
  readonly endpoints: readonly Endpoint[];
  private next = 0;

  constructor(
    readonly model: UpstreamModel,
    endpoints?: readonly Endpoint[],
  ) {
    this.name = model.name;
    this.endpoints = endpoints ?? model.endpoints.map((e) => new Endpoint(e, model));
  }

  /** The same endpoints and connection pools under a changed model (a reload that kept them). */
  withModel(model: UpstreamModel): Upstream {
    return new Upstream(model, this.endpoints);
  }

  /** Round robin over the endpoints; `avoid` (already tried) is skipped when another is left. */
  pick(avoid?: Endpoint): Endpoint {
    const eps = this.endpoints;
    const n = eps.length;
    let ep = eps[this.next % n] as Endpoint;
    this.next = (this.next + 1) % n;
    if (ep === avoid && n > 1) {
      ep = eps[this.next % n] as Endpoint;
      this.next = (this.next + 1) % n;
    }
    return ep;
  }

  /** Host header for an attempt to `ep`. */
  hostFor(ep: Endpoint, clientHost: string | undefined): string {
    const hh = this.model.hostHeader;
    if (hh.kind === 'endpoint') return ep.model.authority;
    if (hh.kind === 'preserve') return clientHost ?? ep.model.authority;
    return hh.value;
  }

  /** Closes pools gracefully: requests in flight finish. */
  async close(): Promise<void> {
    await Promise.all(this.endpoints.map((e) => e.pool.close()));
  }

  async destroy(): Promise<void> {
    await Promise.all(this.endpoints.map((e) => e.pool.destroy()));
  }
}
