/**
 * The parts of undici breakwater uses, loaded by themselves: the connection Pool, its TLS/TCP
 * connector, and `request` (health checks only). undici's index also loads fetch, WebSocket,
 * EventSource, the cache and mock agents and the rest of its API: 1.1 MB of source that no request
 * of breakwater's runs. A bare process that imports the index idles at 60 MiB, one that imports
 * these at 51 MiB (plain Node: 41 MiB); breakwater after load holds ~3.5 MiB less with these (some
 * of the rest is loader machinery other modules need anyway). Types still come from undici's own
 * declarations (type-only imports are erased).
 *
 * The paths are undici's internal layout (it has no `exports` map, so they are importable); the
 * version is pinned by package-lock.json, and test/unit/undici-parts.test.ts checks that these are
 * the very classes undici's index exports, so an upgrade that moves them fails the tests.
 */
import type { Dispatcher } from 'undici';
import requestImpl from 'undici/lib/api/api-request.js';
import buildConnectorImpl from 'undici/lib/core/connect.js';
import PoolImpl from 'undici/lib/dispatcher/pool.js';

export const Pool = PoolImpl;
export const buildConnector = buildConnectorImpl;

/** undici's `dispatcher.request(options)` (what the index adds to every Dispatcher). */
export function request(
  dispatcher: Dispatcher,
  options: Dispatcher.RequestOptions,
): Promise<Dispatcher.ResponseData> {
  return requestImpl.call(dispatcher, options);
}
