/**
 * Peer for the benchmark: a bare fastify with @fastify/http-proxy forwarding every request to the
 * upstream (undici pool underneath, reply-from defaults: 128 connections, pipelining 1). No logger.
 *
 *   node test/bench/peer-fastify-http-proxy.mjs --port 18002 --upstream http://127.0.0.1:18000
 */
import { parseArgs } from 'node:util';
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';

const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' } } });
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0 || !values.upstream) {
  process.stderr.write('peer-fastify-http-proxy: --port PORT --upstream URL are required\n');
  process.exit(2);
}

const app = Fastify({ logger: false });
await app.register(proxy, { upstream: values.upstream });
await app.listen({ port, host: '127.0.0.1' });
process.stdout.write(`listening 127.0.0.1:${port}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    app.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
