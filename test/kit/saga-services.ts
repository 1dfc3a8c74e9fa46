/**
 * Fake services for saga tests: each a real node:http server on 127.0.0.1 that deduplicates by
 * Idempotency-Key as the issue asks of saga participants (a repeated key gets the first answer
 * again and changes nothing), and records every call and every effect in order.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Call {
  readonly service: string;
  readonly method: string;
  readonly path: string;
  readonly key: string | undefined;
  readonly body: string;
  readonly lra: string | undefined;
}

export interface Answer {
  readonly status: number;
  readonly body?: unknown;
  /** Wait this long before answering (ms). */
  readonly delay?: number;
}

export type Behaviour = (call: Call, nth: number) => Answer;

export interface FakeService {
  readonly name: string;
  readonly url: string;
  readonly calls: Call[];
  behaviour: Behaviour;
  close(): Promise<void>;
}

/** Effects across services in the order they happened: `<service> <method> <path>` once per key. */
export const effects: string[] = [];

export async function fakeService(name: string, behaviour: Behaviour): Promise<FakeService> {
  const calls: Call[] = [];
  const answered = new Map<string, Answer>();
  const svc: FakeService = {
    name,
    url: '',
    calls,
    behaviour,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const key = req.headers['idempotency-key'] as string | undefined;
      const call: Call = {
        service: name,
        method: req.method ?? '',
        path: req.url ?? '',
        key,
        body: Buffer.concat(chunks).toString('utf8'),
        lra: req.headers['long-running-action'] as string | undefined,
      };
      calls.push(call);
      const replay = key === undefined ? undefined : answered.get(key);
      const a = replay ?? svc.behaviour(call, calls.filter((c) => c.path === call.path).length);
      const send = () => {
        if (replay === undefined && a.status < 300) {
          if (key !== undefined) answered.set(key, a);
          effects.push(`${name} ${call.method} ${call.path}`);
        }
        const body = JSON.stringify(a.body ?? {});
        res.writeHead(a.status, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        });
        res.end(body);
      };
      if (a.delay) setTimeout(send, a.delay);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  Object.assign(svc, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
  return svc;
}

/** The checkout saga of the tests: order -> payment -> inventory reservation. */
export function checkoutConfig(
  urls: { orders: string; payments: string; inventory: string },
  dataDir: string,
  opts: { timeout?: string; compensateMaxAttempts?: number; inventoryPolicies?: string } = {},
): string {
  const comp = `initial_wait: 20ms, max_wait: 100ms, max_attempts: ${opts.compensateMaxAttempts ?? 10}`;
  return `
listeners:
  - name: main
    port: 0
    routes: [{ upstream: orders }]
admin: { port: 0 }
data_dir: ${dataDir}
logging: { level: info }
upstreams:
  orders: { endpoints: ["${urls.orders}"], retry: { max_attempts: 1 } }
  payments: { endpoints: ["${urls.payments}"], retry: { max_attempts: 1 } }
  inventory: { endpoints: ["${urls.inventory}"], ${opts.inventoryPolicies ?? 'retry: { max_attempts: 1 }'} }
sagas:
  checkout:
    trigger: { listener: main, method: POST, path: /checkout/:cart }
    timeout: ${opts.timeout ?? '5s'}
    long_running_action: true
    steps:
      - name: order
        call: { upstream: orders, path: /orders, body: '{"cart": "{{ request.params.cart }}", "customer": "{{ request.body.customer }}"}' }
        compensate: { upstream: orders, path: "/orders/{{ steps.order.body.id }}/cancel", ${comp} }
      - name: payment
        call: { upstream: payments, path: /payments, body: '{"order": "{{ steps.order.body.id }}", "amount": {{ request.body.amount }}}' }
        compensate: { upstream: payments, path: "/payments/{{ steps.payment.body.id }}/refund", ${comp} }
      - name: reservation
        call: { upstream: inventory, path: /reservations, body: '{"order": "{{ steps.order.body.id }}"}' }
        compensate: { upstream: inventory, method: DELETE, path: "/reservations/{{ saga.id }}", ${comp} }
`;
}
