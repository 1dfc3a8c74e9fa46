/**
 * The policy stack of a route, outermost first. This function is the architecture: reading it
 * tells what happens to a request and in which order.
 *
 *   upstream call   one attempt to one endpoint (connect, attempt and body timeouts)
 */
import type { RouteModel } from '../config/resolve.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Upstream } from '../upstream/upstream.js';
import type { Clock, Handler, Layer } from './types.js';
import { upstreamCall } from './upstream-call.js';

export interface PipelineServices {
  readonly clock: Clock;
  readonly metrics: Metrics;
  readonly logger: Logger;
}

export function buildPipeline(_route: RouteModel, _upstream: Upstream, _services: PipelineServices): Handler {
  const layers: Layer[] = [];
  let handler = upstreamCall();
  for (let i = layers.length - 1; i >= 0; i--) handler = (layers[i] as Layer)(handler);
  return handler;
}
