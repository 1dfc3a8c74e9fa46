/**
 * The shoppers: an open-loop generator (requests start on schedule whether or not earlier ones
 * were answered, as real users do) bounded in count (the profile's integral) and in time (every
 * request gives up after 5 s, a checkout after 15 s, and no more than MAX_IN_FLIGHT are outstanding). A checkout is a user
 * action of several requests: every third one is double-clicked (two requests at once with the
 * same Idempotency-Key), and the app retries a 409, 429 or 5xx with the same key, as a mobile
 * client does. A saga checkout (POST /checkout) that fails is compensated by breakwater, and the
 * app tries the whole checkout again (a new saga) after a 409, 429, 5xx or no answer, for up to 20 s.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';
import { type Kind, MIX, type Phase, phaseAt } from './profile.js';
import { PRODUCTS } from './upstreams.js';

/** One HTTP request as the client saw it. */
export interface Sample {
  /** Start, ms from the start of the run. */
  readonly t: number;
  readonly phase: number;
  readonly kind: Kind;
  /** HTTP status; 0 when no response came (connection error or the client's 5 s timeout). */
  readonly status: number;
  readonly ms: number;
  /** `x-breakwater-fallback` was set. */
  readonly fallback: boolean;
}

/** One user action (a page fragment, an order, a whole checkout with its retries). */
export interface Action {
  readonly t: number;
  readonly phase: number;
  readonly kind: Kind;
  ok: boolean;
  /** The final status: 2xx when ok. */
  status: number;
  /** Order id or Idempotency-Key. */
  readonly id: string;
  /** A saga checkout: the id of each saga its attempts started (x-breakwater-saga-id). */
  readonly sagas?: string[];
}

export interface Traffic {
  readonly samples: Sample[];
  readonly actions: Action[];
  /** Actions not started because MAX_IN_FLIGHT requests were outstanding. */
  skipped: number;
  readonly inFlight: () => number;
  /** HTTP requests started so far (a checkout's retries included). */
  readonly started: () => number;
  /** Resolves when every action has finished (or after `graceMs`). */
  drain(graceMs: number): Promise<void>;
  stop(): void;
  close(): Promise<void>;
}

const MAX_IN_FLIGHT = 1000;
const REQUEST_TIMEOUT_MS = 5000;
/**
 * A checkout waits longer than breakwater's deadline for payment (timeout: 5s), so breakwater
 * always answers first: a client that gives up and sends again while its first request is still
 * at the payment service is the one case where a key does not protect a service that does not
 * deduplicate (docs/demo.md).
 */
const CHECKOUT_TIMEOUT_MS = 15_000;
const CHECKOUT_ATTEMPTS = 6;
const CHECKOUT_RETRY_WAIT_MS = 150;
/**
 * A saga checkout is tried again (a new saga) for up to 20 s, honouring Retry-After: while orders
 * is down (12 s in the full profile, then its breaker's 3 s) the saga's first step cannot run, and
 * the app keeps its "placing your order" spinner rather than failing the order. Attempts refused
 * by an open breaker cost the services nothing.
 */
const SAGA_CHECKOUT_PATIENCE_MS = 20_000;
const SAGA_CHECKOUT_ATTEMPTS = 40;
const SAGA_CHECKOUT_RETRY_WAIT_MS = 500;

/** A fixed cycle of the mix's kinds, interleaved so that every window of requests has the mix. */
function mixCycle(): Kind[] {
  const total = MIX.reduce((s, m) => s + m.weight, 0);
  const credit = MIX.map(() => 0);
  const out: Kind[] = [];
  for (let i = 0; i < total; i++) {
    // Smooth weighted round robin (nginx's): the highest credit goes next.
    let best = 0;
    for (let k = 0; k < MIX.length; k++) {
      credit[k] = (credit[k] ?? 0) + (MIX[k]?.weight ?? 0);
      if ((credit[k] ?? 0) > (credit[best] ?? 0)) best = k;
    }
    credit[best] = (credit[best] ?? 0) - total;
    out.push(MIX[best]?.kind ?? 'product');
  }
  return out;
}

export function startTraffic(options: {
  readonly urls: readonly string[];
  readonly phases: readonly Phase[];
  readonly starts: readonly number[];
  readonly totalMs: number;
  /** performance.now() of the run's start. */
  readonly origin: number;
}): Traffic {
  const { urls, phases, starts, totalMs, origin } = options;
  const agent = new Agent({ connections: 128, keepAliveTimeout: 30_000, pipelining: 1 });
  const samples: Sample[] = [];
  const actions: Action[] = [];
  const cycle = mixCycle();
  const perKind = new Map<Kind, number>();
  let inFlight = 0;
  let requestsStarted = 0;
  let started = 0;
  let checkoutCredit = 0;
  let checkouts = 0;
  let checkoutTurn = 0;
  /**
   * Round robin over the replicas per kind of request, so that each replica sees its share of
   * every upstream (one counter for all would tie a kind's place in the mix to a replica), and the
   * next attempt of a checkout goes to another replica than the last.
   */
  const replicaOf = new Map<Kind, number>();
  let stopped = false;
  const pending = new Set<Promise<void>>();
  const clientId = `shopper-${process.pid}`;

  const now = () => performance.now() - origin;

  /** Requests due by `ms`: the integral of the rate over the phases. */
  const due = (ms: number) => {
    let n = 0;
    for (let i = 0; i < phases.length; i++) {
      const start = starts[i] ?? 0;
      const p = phases[i];
      if (!p || ms <= start) break;
      n += (Math.min(ms, start + p.seconds * 1000) - start) * (p.rate / 1000);
    }
    return Math.floor(n);
  };

  async function send(
    kind: Kind,
    phase: number,
    method: 'GET' | 'POST',
    path: string,
    headers: Record<string, string>,
    body?: string,
  ): Promise<{ status: number; retryAfterMs: number; sagaId: string | undefined }> {
    const t = now();
    const turn = replicaOf.get(kind) ?? 0;
    replicaOf.set(kind, turn + 1);
    const base = urls[turn % urls.length] ?? '';
    inFlight++;
    requestsStarted++;
    let status = 0;
    let fallback = false;
    let retryAfterMs = 0;
    let sagaId: string | undefined;
    try {
      const res = await request(`${base}${path}`, {
        method,
        headers,
        body: body ?? null,
        dispatcher: agent,
        signal: AbortSignal.timeout(
          kind === 'checkout' || kind === 'saga-checkout' ? CHECKOUT_TIMEOUT_MS : REQUEST_TIMEOUT_MS,
        ),
      });
      await res.body.dump({ limit: 1 << 20 });
      status = res.statusCode;
      fallback = res.headers['x-breakwater-fallback'] !== undefined;
      const retryAfter = Number(res.headers['retry-after']);
      if (Number.isFinite(retryAfter)) retryAfterMs = retryAfter * 1000;
      const saga = res.headers['x-breakwater-saga-id'];
      if (typeof saga === 'string') sagaId = saga;
    } catch {
      status = 0;
    } finally {
      inFlight--;
    }
    samples.push({ t, phase, kind, status, ms: now() - t, fallback });
    return { status, retryAfterMs, sagaId };
  }

  const ok = (s: number) => s >= 200 && s < 300;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function checkoutChain(action: Action, delayMs: number): Promise<number> {
    if (delayMs > 0) await sleep(delayMs);
    const body = JSON.stringify({ cart: ['p-1', 'p-3'], amount: 263.5 });
    let status = 0;
    for (let attempt = 1; attempt <= CHECKOUT_ATTEMPTS && !stopped; attempt++) {
      const answer = await send(
        'checkout',
        action.phase,
        'POST',
        '/payments/charge',
        { 'idempotency-key': action.id, 'x-client-id': clientId, 'content-type': 'application/json' },
        body,
      );
      status = answer.status;
      if (ok(status) || (status >= 400 && status < 500 && status !== 409 && status !== 429)) break;
      // Retry-After is honoured up to 2 s, as a well-behaved app does.
      await sleep(Math.min(2000, Math.max(CHECKOUT_RETRY_WAIT_MS, answer.retryAfterMs)));
    }
    return status;
  }

  /** POST /checkout until it succeeds: each attempt is a saga of its own, a failed one compensated. */
  async function sagaCheckout(action: Action, sagas: string[]): Promise<number> {
    const body = JSON.stringify({ customer_id: clientId, amount: 263.5, items: ['p-1', 'p-3'] });
    let status = 0;
    const until = now() + SAGA_CHECKOUT_PATIENCE_MS;
    for (let attempt = 1; attempt <= SAGA_CHECKOUT_ATTEMPTS && now() < until && !stopped; attempt++) {
      const answer = await send(
        'saga-checkout',
        action.phase,
        'POST',
        '/checkout',
        { 'content-type': 'application/json' },
        body,
      );
      if (answer.sagaId) sagas.push(answer.sagaId);
      status = answer.status;
      if (ok(status) || (status >= 400 && status < 500 && status !== 409 && status !== 429)) break;
      await sleep(Math.min(2000, Math.max(SAGA_CHECKOUT_RETRY_WAIT_MS, answer.retryAfterMs)));
    }
    return status;
  }

  async function run(kind: Kind, phase: number): Promise<void> {
    const n = perKind.get(kind) ?? 0;
    perKind.set(kind, n + 1);
    const sku = PRODUCTS[n % PRODUCTS.length] ?? 'p-1';
    const t = now();
    const id = kind === 'checkout' || kind === 'order' ? randomUUID() : '';
    const sagas: string[] = [];
    const action: Action =
      kind === 'saga-checkout'
        ? { t, phase, kind, ok: false, status: 0, id, sagas }
        : { t, phase, kind, ok: false, status: 0, id };
    actions.push(action);
    let status = 0;
    switch (kind) {
      case 'product':
        status = (await send(kind, phase, 'GET', `/products/${sku}`, {})).status;
        break;
      case 'recommendations':
        status = (await send(kind, phase, 'GET', '/recommendations', {})).status;
        break;
      case 'reco-svc':
        status = (await send(kind, phase, 'GET', '/reco-svc/recommend', {})).status;
        break;
      case 'stock':
        status = (await send(kind, phase, 'GET', `/inventory/stock/${sku}`, {})).status;
        break;
      case 'search':
        status = (await send(kind, phase, 'GET', `/search?q=${sku}`, {})).status;
        break;
      case 'order':
        status = (
          await send(
            kind,
            phase,
            'POST',
            '/orders',
            // The key lets breakwater defer the write (202) while orders is down.
            { 'x-order-id': id, 'idempotency-key': id, 'content-type': 'application/json' },
            JSON.stringify({ id, items: [sku] }),
          )
        ).status;
        break;
      case 'checkout': {
        checkouts++;
        // Every third checkout is double-clicked: a second identical request 20 ms later.
        const chains =
          checkouts % 3 === 0
            ? [checkoutChain(action, 0), checkoutChain(action, 20)]
            : [checkoutChain(action, 0)];
        const results = await Promise.all(chains);
        status = results.find(ok) ?? results[0] ?? 0;
        break;
      }
      case 'saga-checkout':
        status = await sagaCheckout(action, sagas);
        break;
    }
    action.status = status;
    action.ok = ok(status);
  }

  const tick = setInterval(() => {
    if (stopped) return;
    const ms = now();
    if (ms >= totalMs) {
      stopped = true;
      clearInterval(tick);
      return;
    }
    const phase = phaseAt(starts, ms);
    const p = phases[phase];
    if (!p) return;
    // At most 100 per tick: after an event-loop stall the schedule catches up over a few ticks.
    let todo = Math.min(100, due(ms) - started);
    for (; todo > 0; todo--) {
      started++;
      if (inFlight >= MAX_IN_FLIGHT) {
        traffic.skipped++;
        continue;
      }
      checkoutCredit += p.checkoutShare;
      let kind: Kind;
      if (checkoutCredit >= 1) {
        checkoutCredit -= 1;
        kind = checkoutTurn++ % 2 === 0 ? 'checkout' : 'saga-checkout';
      } else kind = cycle[started % cycle.length] ?? 'product';
      const job = run(kind, phase);
      pending.add(job);
      void job.finally(() => pending.delete(job));
    }
  }, 5);

  const traffic: Traffic = {
    samples,
    actions,
    skipped: 0,
    inFlight: () => inFlight,
    started: () => requestsStarted,
    async drain(graceMs) {
      const end = Date.now() + graceMs;
      while (pending.size > 0 && Date.now() < end) await sleep(50);
    },
    stop() {
      stopped = true;
      clearInterval(tick);
    },
    async close() {
      await agent.close();
    },
  };
  return traffic;
}
