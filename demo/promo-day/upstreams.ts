/**
 * The scripted shop: seven small node:http services on 127.0.0.1 (ports chosen by the OS) whose
 * behaviour follows the phase's Faults. They count what reached them, which is what the figures
 * trust: arrivals per second (the surge limit), charges per Idempotency-Key (duplicate charges),
 * orders per order id (lost or doubled orders).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Faults } from './profile.js';

export const SERVICES = ['catalog', 'recommendation', 'inventory', 'orders', 'payment', 'search'] as const;
export type Service = (typeof SERVICES)[number];

/** Environment variable of promo-day.yaml that holds each service's URL. */
export const URL_ENV: Record<Service, string> = {
  catalog: 'CATALOG_URL',
  recommendation: 'RECOMMENDATION_URL',
  inventory: 'INVENTORY_URL',
  orders: 'ORDERS_URL',
  payment: 'PAYMENT_URL',
  search: 'SEARCH_URL',
};

export const PRODUCTS = ['p-1', 'p-2', 'p-3', 'p-4', 'p-5', 'p-6', 'p-7', 'p-8'];

export interface Shop {
  readonly urls: Record<Service, string>;
  /** Arrival times (performance.now()) of requests at each service, health checks excluded. */
  readonly arrivals: Record<Service, number[]>;
  /** Successful charges per Idempotency-Key at payment. */
  readonly charges: Map<string, number>;
  /** Orders created per order id at orders. */
  readonly orders: Map<string, number>;
  /**
   * What the checkout saga's steps and compensations did, counted per id (the step's
   * Idempotency-Key, `<saga id>:<step>`): reservations made and released at inventory, refunds at
   * payment, orders cancelled at orders. A fully compensated checkout has each of its completed
   * steps undone.
   */
  readonly saga: {
    readonly reservations: Map<string, number>;
    readonly releases: Map<string, number>;
    readonly refunds: Map<string, number>;
    readonly cancellations: Map<string, number>;
  };
  setFaults(faults: Faults): Promise<void>;
  close(): Promise<void>;
}

const HEALTHY: Faults = {
  recommendationDown: false,
  inventoryDelayMs: 0,
  paymentBlip: false,
  ordersDown: false,
};

function send(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function header(req: http.IncomingMessage, name: string): string {
  const v = req.headers[name];
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
}

export async function startShop(): Promise<Shop> {
  let faults = HEALTHY;
  let paymentCalls = 0;
  let reservationCalls = 0;
  const arrivals = Object.fromEntries(SERVICES.map((s) => [s, [] as number[]])) as Record<Service, number[]>;
  const charges = new Map<string, number>();
  const orders = new Map<string, number>();
  const saga = {
    reservations: new Map<string, number>(),
    releases: new Map<string, number>(),
    refunds: new Map<string, number>(),
    cancellations: new Map<string, number>(),
  };
  const count = (map: Map<string, number>, id: string) => map.set(id, (map.get(id) ?? 0) + 1);
  const timers = new Set<NodeJS.Timeout>();

  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };

  const handlers: Record<
    Service,
    (req: http.IncomingMessage, res: http.ServerResponse, path: string) => void
  > = {
    catalog(_req, res, path) {
      const id = path.split('/')[2] ?? 'p-1';
      send(res, 200, { service: 'catalog', id, name: `Product ${id}`, price: 10 + id.length });
    },
    recommendation(_req, res) {
      if (faults.recommendationDown) return send(res, 500, { error: 'recommendation model unavailable' });
      send(res, 200, { service: 'recommendation', items: ['p-2', 'p-5'], personalized: true });
    },
    inventory(req, res, path) {
      // The checkout saga's step and its compensation: POST /reservations (the reservation's id is
      // its Idempotency-Key), POST /reservations/{id}/release.
      const parts = path.split('/');
      if (req.method === 'POST' && parts[1] === 'reservations') {
        if (parts[3] === 'release') {
          const id = decodeURIComponent(parts[2] ?? '');
          count(saga.releases, id);
          return send(res, 200, { service: 'inventory', reservation: id, released: true });
        }
        const id = header(req, 'idempotency-key');
        // While inventory is slow, every third reservation finds the stock held by another cart
        // (409): the saga refunds the payment and cancels the order. (During the payment blip the
        // saga fails at payment instead, and cancels the order.)
        reservationCalls++;
        if (faults.inventoryDelayMs > 0 && reservationCalls % 3 === 0)
          return send(res, 409, { error: 'stock held by another cart', reserved: false });
        count(saga.reservations, id);
        return send(res, 201, { service: 'inventory', reservation: id });
      }
      const sku = path.split('/')[3] ?? 'p-1';
      const answer = () => send(res, 200, { service: 'inventory', sku, available: 3 + (sku.length % 5) });
      if (faults.inventoryDelayMs > 0) later(faults.inventoryDelayMs, answer);
      else answer();
    },
    search(_req, res) {
      send(res, 200, { service: 'search', results: PRODUCTS.slice(0, 3) });
    },
    payment(req, res, path) {
      if (req.method !== 'POST') return send(res, 405, { error: 'method not allowed' });
      const parts = path.split('/');
      // The saga's compensation: POST /payments/{key}/refund.
      if (parts[3] === 'refund') {
        const key = decodeURIComponent(parts[2] ?? '');
        count(saga.refunds, key);
        return send(res, 200, { service: 'payment', refunded: true, idempotency_key: key });
      }
      const key = header(req, 'idempotency-key');
      paymentCalls++;
      if (faults.paymentBlip && paymentCalls % 2 === 0)
        return send(res, 503, { error: 'payment processor blip', charged: false });
      const charge = () => {
        charges.set(key, (charges.get(key) ?? 0) + 1);
        send(res, 200, { service: 'payment', charged: true, idempotency_key: key });
      };
      // Slow while blipping, so that a client's second click arrives while the first is in flight.
      if (faults.paymentBlip) later(120, charge);
      else charge();
    },
    orders(req, res, path) {
      if (req.method !== 'POST') return send(res, 200, { orders: orders.size });
      const parts = path.split('/');
      // The saga's compensation: POST /orders/{id}/cancel.
      if (parts[3] === 'cancel') {
        const id = decodeURIComponent(parts[2] ?? '');
        count(saga.cancellations, id);
        return send(res, 200, { service: 'orders', id, status: 'cancelled' });
      }
      const id = header(req, 'x-order-id') || header(req, 'idempotency-key');
      orders.set(id, (orders.get(id) ?? 0) + 1);
      send(res, 201, { service: 'orders', id, status: 'created' });
    },
  };

  const servers = {} as Record<Service, http.Server>;
  const ports = {} as Record<Service, number>;

  const listen = (server: http.Server, port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });

  for (const name of SERVICES) {
    const server = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      req.resume();
      req.on('end', () => {
        if (path === '/health') return send(res, 200, { status: 'ok' });
        arrivals[name].push(performance.now());
        handlers[name](req, res, path);
      });
    });
    server.keepAliveTimeout = 30_000;
    servers[name] = server;
    ports[name] = await listen(server, 0);
  }

  let ordersListening = true;
  const closeServer = (server: http.Server) =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });

  return {
    urls: Object.fromEntries(SERVICES.map((s) => [s, `http://127.0.0.1:${ports[s]}`])) as Record<
      Service,
      string
    >,
    arrivals,
    charges,
    orders,
    saga,
    async setFaults(next) {
      faults = next;
      if (next.ordersDown && ordersListening) {
        ordersListening = false;
        await closeServer(servers.orders);
      } else if (!next.ordersDown && !ordersListening) {
        await listen(servers.orders, ports.orders);
        ordersListening = true;
      }
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await Promise.all(
        SERVICES.filter((s) => s !== 'orders' || ordersListening).map((s) => closeServer(servers[s])),
      );
    },
  };
}
