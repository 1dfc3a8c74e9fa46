/**
 * Peer for the benchmark: the floor of the stack breakwater is built on. A node:http server that
 * hands each request to an undici Pool through the low-level `dispatch` API (the one breakwater's
 * attempts use), with a raw handler that writes the response straight to the client: no stream
 * wrapper, no routing, no policies, no timers of its own, no request id or X-Forwarded-* headers,
 * no metrics, no logging, no slow-client buffering. Hop-by-hop headers are dropped both ways.
 * Whatever breakwater adds costs CPU on top of this.
 *
 *   node test/bench/peer-undici-dispatch.mjs --port 18004 --upstream http://127.0.0.1:18000
 */
import http from 'node:http';
import { Pool } from 'undici';
import { HOP_BY_HOP, peerOptions, serveForwarder } from './lib/peer.mjs';

const { port, upstream } = peerOptions('peer-undici-dispatch');

// The same pool as the forwarder's (and breakwater's default max_connections).
const pool = new Pool(upstream, { connections: 128, pipelining: 1 });

/** undici's raw dispatch handler: response head, body chunks, end, or an error. */
class Relay {
  constructor(res) {
    this.res = res;
  }
  onConnect() {}
  onHeaders(status, raw) {
    const headers = [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i].toString('latin1');
      if (!HOP_BY_HOP.has(name.toLowerCase())) headers.push(name, raw[i + 1].toString('latin1'));
    }
    this.res.writeHead(status, headers);
    return true;
  }
  onData(chunk) {
    this.res.write(chunk);
    return true;
  }
  onComplete() {
    this.res.end();
  }
  onError(err) {
    if (this.res.headersSent) {
      this.res.destroy(err);
      return;
    }
    this.res.writeHead(502, { 'content-type': 'text/plain' });
    this.res.end('bad gateway\n');
  }
}

const server = http.createServer((req, res) => {
  const raw = req.rawHeaders;
  const headers = [];
  for (let i = 0; i < raw.length; i += 2) {
    if (!HOP_BY_HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  }
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.dispatch({ path: req.url, method: req.method, headers, body: hasBody ? req : null }, new Relay(res));
});
serveForwarder(server, port, pool);
