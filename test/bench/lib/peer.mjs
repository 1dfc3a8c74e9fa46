/**
 * What the bench's Node peers (test/bench/peer-*.mjs) share: their command line, the hop-by-hop
 * headers a forwarder drops, and a clean exit on SIGTERM/SIGINT. Each peer's request path stays
 * in its own file, whole, as someone would write that forwarder.
 */
import { parseArgs } from 'node:util';

/** `--port PORT --upstream URL`, or exit 2 naming the peer. */
export function peerOptions(name) {
  const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' } } });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port <= 0 || !values.upstream) {
    process.stderr.write(`${name}: --port PORT --upstream URL are required\n`);
    process.exit(2);
  }
  return { port, upstream: values.upstream };
}

/** Hop-by-hop headers (and Host, which the upstream's own is set for), lower case. */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

/** On SIGTERM or SIGINT: `close()`, then exit (0 when it resolved; at most 1 s later in any case). */
export function exitOnSignal(close) {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.once(signal, () => {
      close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
      setTimeout(() => process.exit(0), 1000).unref();
    });
  }
}

/**
 * A forwarder peer's node:http server: keep-alive 60 s, listening on 127.0.0.1:`port` (the line
 * the harness waits for printed), and on SIGTERM/SIGINT its connections closed and `pool` closed.
 */
export function serveForwarder(server, port, pool) {
  server.keepAliveTimeout = 60_000;
  server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`listening 127.0.0.1:${port}\n`);
  });
  exitOnSignal(() => {
    server.closeAllConnections();
    server.close();
    return pool.close();
  });
}
