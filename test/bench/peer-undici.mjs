/**
 * Peer for the benchmark: the simplest Node forwarder one could write (issue 15's reference). A node:http server that sends each
 * request through an undici Pool (`pool.stream`) to the upstream and pipes the response body back,
 * dropping hop-by-hop headers both ways. No routing, no policies, no logging, no metrics.
 *
 *   node test/bench/peer-undici.mjs --port 18003 --upstream http://127.0.0.1:18000
 */
import http from 'node:http';
import { Pool } from 'undici';
import { HOP_BY_HOP, peerOptions, serveForwarder } from './lib/peer.mjs';

const { port, upstream } = peerOptions('peer-undici');

// Same pool size as breakwater's default max_connections and @fastify/reply-from's default.
const pool = new Pool(upstream, { connections: 128, pipelining: 1 });

function forwardable(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  }
  return out;
}

const server = http.createServer((req, res) => {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.stream(
    {
      path: req.url,
      method: req.method,
      headers: forwardable(req.headers),
      body: hasBody ? req : null,
    },
    ({ statusCode, headers }) => {
      res.writeHead(statusCode, forwardable(headers));
      return res;
    },
    (err) => {
      if (!err) return;
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('bad gateway\n');
      } else {
        res.destroy(err);
      }
    },
  );
});
serveForwarder(server, port, pool);
