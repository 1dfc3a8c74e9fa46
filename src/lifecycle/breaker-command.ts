/** Operator control of an upstream's breaker (POST /upstreams/<name>/breaker). */
import type { UpstreamPolicies } from '../pipeline/index.js';

export type BreakerCommandResult =
  | { ok: true; state: string }
  | { ok: false; status: 404 | 409; error: string };

export function forceBreaker(
  policies: ReadonlyMap<string, UpstreamPolicies>,
  upstream: string,
  mode: 'open' | 'close' | 'auto',
): BreakerCommandResult {
  const p = policies.get(upstream);
  if (!p) return { ok: false, status: 404, error: `no upstream ${upstream}` };
  if (!p.breaker)
    return { ok: false, status: 409, error: `upstream ${upstream} has no circuit_breaker configured` };
  p.breaker.force(mode);
  return { ok: true, state: p.breaker.state };
}
