/**
 * The benchmark's upstream: plain node:http on 127.0.0.1 that answers every request 200 with the
 * same 64-byte JSON body (content-type application/json, content-length set, keep-alive).
 *
 *   node test/bench/upstream.mjs --port 18000
 *   node test/bench/upstream.mjs --port 18000 --big-bytes 4194304   (GET /big: that many bytes)
 *
 * Prints `listening 127.0.0.1:<port>` on stdout once it accepts connections.
 */
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string' }, 'big-bytes': { type: 'string' } } });
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write('upstream: --port PORT is required\n');
  process.exit(2);
}

/** Exactly 64 bytes of JSON. */
function fixedBody() {
  const base = { ok: true, service: 'bench-upstream', pad: '' };
  const without = Buffer.byteLength(JSON.stringify(base));
  base.pad = 'x'.repeat(64 - without);
  const body = Buffer.from(JSON.stringify(base));
  if (body.length !== 64) throw new Error(`body is ${body.length} bytes, expected 64`);
  return body;
}

const BODY = fixedBody();
const HEADERS = {
  'content-type': 'application/json',
  'content-length': String(BODY.length),
};

/** With --big-bytes, GET /big answers that many bytes (test/bench/attack.mjs's slow readers). */
const BIG = values['big-bytes'] ? Buffer.alloc(Number(values['big-bytes']), 'b') : undefined;
const BIG_HEADERS = BIG && {
  'content-type': 'application/octet-stream',
  'content-length': String(BIG.length),
};

const server = http.createServer((req, res) => {
  if (BIG && req.url === '/big') {
    req.resume();
    res.writeHead(200, BIG_HEADERS);
    res.end(BIG);
    return;
  }
  // Drain any request body before answering so the connection stays reusable.
  if (req.readableEnded) {
    res.writeHead(200, HEADERS);
    res.end(BODY);
    return;
  }
  req.resume();
  req.on('end', () => {
    res.writeHead(200, HEADERS);
    res.end(BODY);
  });
});
// Long idle keep-alive so the proxies' pools do not churn connections during a run.
server.keepAliveTimeout = 60_000;
server.headersTimeout = 61_000;
server.maxRequestsPerSocket = 0;

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening 127.0.0.1:${port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
