/**
 * Peer for the benchmark: a bare fastify with @fastify/http-proxy forwarding every request to the
 * upstream (undici pool underneath, reply-from defaults: 128 connections, pipelining 1). No logger.
 *
 *   node test/bench/peer-fastify-http-proxy.mjs --port 18002 --upstream http://127.0.0.1:18000
 */
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { exitOnSignal, peerOptions } from './lib/peer.mjs';

const { port, upstream } = peerOptions('peer-fastify-http-proxy');

const app = Fastify({ logger: false });
await app.register(proxy, { upstream });
await app.listen({ port, host: '127.0.0.1' });
process.stdout.write(`listening 127.0.0.1:${port}\n`);

exitOnSignal(() => app.close());
