#!/usr/bin/env node
/**
 * The three stand-in services of docs/getting-started.md ("the first hour"), on node:http only:
 *
 *   catalog         two replicas (:9001, :9002) that say which one answered
 *   payments        :9003, charges once per request it receives and counts charges per
 *                   Idempotency-Key (GET /payments/charges); a request with
 *                   `x-demo-fail: after-charge` is charged, then answered 503 (a crash after the commit)
 *   recommendation  :9004, flaky: every third request gets 503 (counted from start or /_up)
 *
 * Every service takes `POST /_down` and `POST /_up` on its own port (not through breakwater) to fail
 * everything, health checks included, or to come back.
 *
 *   node config/examples/first-hour-services.mjs
 *
 * Ports: CATALOG_1_PORT, CATALOG_2_PORT, PAYMENTS_PORT, RECOMMENDATION_PORT (0 picks a free one;
 * the line "services ready" then names them).
 */
import http from 'node:http';

const env = (name, fallback) => Number(process.env[name] ?? fallback);

/** Starts one service; `handle` answers when the service is up (`state.calls`: requests since up). */
function service(name, port, handle) {
  const state = { down: false, calls: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (req.method === 'POST' && (req.url === '/_down' || req.url === '/_up')) {
        state.down = req.url === '/_down';
        state.calls = 0;
        log(name, `${state.down ? 'DOWN' : 'up'} (${req.url})`);
        res.end(`${name} is ${state.down ? 'down' : 'up'}\n`);
        return;
      }
      if (state.down) {
        log(name, `${req.method} ${req.url} -> 503 (down)`);
        send(res, 503, { error: `${name} is down` });
        return;
      }
      state.calls++;
      handle(req, res, body, state);
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

function send(res, status, json) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(json)}\n`);
}

function log(name, line) {
  process.stdout.write(`[${name}] ${line}\n`);
}

function catalog(replica) {
  return (req, res) => {
    if (req.url === '/health') {
      res.end('ok');
      return;
    }
    log(replica, `${req.method} ${req.url} -> 200`);
    send(res, 200, { service: 'catalog', replica, path: req.url });
  };
}

/** Charges per Idempotency-Key (requests without one are counted under "(none)"). */
const charges = new Map();
let chargeCount = 0;
function payments(req, res, body) {
  if (req.method === 'GET' && req.url === '/payments/charges') {
    send(res, 200, Object.fromEntries(charges));
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, { error: 'POST a charge' });
    return;
  }
  const key = String(req.headers['idempotency-key'] ?? '(none)');
  chargeCount++;
  charges.set(key, (charges.get(key) ?? 0) + 1);
  const crash = req.headers['x-demo-fail'] === 'after-charge';
  log(
    'payments',
    `CHARGED key=${key} (charge #${chargeCount}, ${charges.get(key)} for this key)${crash ? ', then answering 503' : ''}`,
  );
  if (crash) send(res, 503, { error: 'charged, then crashed before answering' });
  else send(res, 201, { charge: `ch_${chargeCount}`, key, request: body });
}

function recommendation(req, res, _body, state) {
  if (state.calls % 3 === 0) {
    log('recommendation', `${req.method} ${req.url} -> 503 (flaky)`);
    send(res, 503, { error: 'flaky' });
    return;
  }
  log('recommendation', `${req.method} ${req.url} -> 200`);
  send(res, 200, { items: ['for-you-1', 'for-you-2', 'for-you-3'] });
}

const servers = await Promise.all([
  service('catalog-1', env('CATALOG_1_PORT', 9001), catalog('catalog-1')),
  service('catalog-2', env('CATALOG_2_PORT', 9002), catalog('catalog-2')),
  service('payments', env('PAYMENTS_PORT', 9003), payments),
  service('recommendation', env('RECOMMENDATION_PORT', 9004), recommendation),
]);
const names = ['catalog-1', 'catalog-2', 'payments', 'recommendation'];
process.stdout.write(
  `services ready: ${servers.map((s, i) => `${names[i]}=http://127.0.0.1:${s.address().port}`).join(' ')}\n`,
);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const s of servers) s.close();
    for (const s of servers) s.closeAllConnections();
  });
}
