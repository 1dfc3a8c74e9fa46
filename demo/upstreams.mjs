#!/usr/bin/env node
/**
 * The demo upstreams: five small JSON services of a shop, for docker compose and local try-outs
 * (breakwater's config/compose.yaml routes to them). No dependencies: node:http only.
 *
 *   node demo/upstreams.mjs
 *
 * Environment (ports default to 8081-8085; 0 picks a free port):
 *   DEMO_HOST            address to bind (default 127.0.0.1; 0.0.0.0 in a container)
 *   CATALOG_PORT, RECOMMENDATION_PORT, INVENTORY_PORT, ORDERS_PORT, PAYMENT_PORT
 *
 * Prints one JSON line per service once it listens: {"event":"listening","service":...,"port":...}.
 * Every service answers GET /health with {"status":"ok"}. SIGTERM or SIGINT closes them and exits 0.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';

const PRODUCTS = [
  { id: 'p-1', name: 'Espresso machine', price: 249.0 },
  { id: 'p-2', name: 'Burr grinder', price: 119.0 },
  { id: 'p-3', name: 'Milk jug', price: 14.5 },
];

/** Each service: its default port and a handler (method, path segments, request) -> [status, body]. */
const SERVICES = {
  catalog: {
    port: 8081,
    handle(method, parts) {
      if (method !== 'GET') return [405, { error: 'method not allowed' }];
      if (parts[0] !== 'products') return [200, { products: PRODUCTS.map((p) => p.id) }];
      if (parts.length === 1) return [200, { products: PRODUCTS }];
      const product = PRODUCTS.find((p) => p.id === parts[1]);
      return product ? [200, product] : [404, { error: 'no such product', id: parts[1] }];
    },
  },
  recommendation: {
    port: 8082,
    handle(method) {
      if (method !== 'GET') return [405, { error: 'method not allowed' }];
      return [200, { recommendations: ['p-2', 'p-3'], personalized: true }];
    },
  },
  inventory: {
    port: 8083,
    handle(method, parts) {
      if (method !== 'GET') return [405, { error: 'method not allowed' }];
      const sku = parts[0] === 'stock' && parts[1] ? parts[1] : 'p-1';
      return [200, { sku, available: 3 + (sku.length % 5) }];
    },
  },
  orders: {
    port: 8084,
    handle(method, parts) {
      if (method === 'POST') return [201, { id: `o-${randomUUID()}`, status: 'created' }];
      if (method === 'GET' && parts[1]) return [200, { id: parts[1], status: 'created' }];
      return [200, { orders: [] }];
    },
  },
  payment: {
    port: 8085,
    handle(method, _parts, req) {
      if (method !== 'POST') return [405, { error: 'method not allowed' }];
      const key = req.headers['idempotency-key'];
      return [200, { charged: true, id: `ch-${randomUUID()}`, idempotency_key: key ?? null }];
    },
  },
};

const host = process.env.DEMO_HOST || '127.0.0.1';

function serve(name, service) {
  const server = http.createServer((req, res) => {
    // Drain the request body (the demo services do not read it) before answering.
    req.resume();
    req.on('end', () => {
      const path = new URL(req.url ?? '/', 'http://demo').pathname;
      const parts = path.split('/').filter(Boolean);
      const [status, body] =
        path === '/health' ? [200, { status: 'ok' }] : service.handle(req.method ?? 'GET', parts, req);
      const text = JSON.stringify({ service: name, ...body });
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(text),
      });
      res.end(text);
    });
  });
  const envPort = process.env[`${name.toUpperCase()}_PORT`];
  const port = envPort === undefined || envPort === '' ? service.port : Number(envPort);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const address = server.address();
      const bound = typeof address === 'object' && address ? address.port : port;
      process.stdout.write(`${JSON.stringify({ event: 'listening', service: name, host, port: bound })}\n`);
      resolve(server);
    });
  });
}

await Promise.all(Object.entries(SERVICES).map(([name, service]) => serve(name, service)));

// As PID 1 in a container, node would ignore SIGTERM without a handler.
process.once('SIGTERM', () => process.exit(0));
process.once('SIGINT', () => process.exit(0));
