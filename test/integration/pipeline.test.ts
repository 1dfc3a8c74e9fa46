import { readFileSync } from 'node:fs';
import type http from 'node:http';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { ManualClock } from '../kit/clock.js';
import { startFaultUpstream } from '../kit/fault-upstream.js';
import { freePort } from '../kit/process.js';
import { sleep, until } from '../kit/until.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function upstream(
  handler: (n: number, req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void,
) {
  let n = 0;
  const up = await startUpstream((req, res, body) => handler(++n, req, res, body));
  cleanup.push(() => up.close());
  return up;
}

async function proxy(
  upstreams: string,
  routes = '[{ upstream: app }]',
  extra = '',
  clock?: ManualClock,
): Promise<Running> {
  const bw = await startBreakwater(
    `
listeners:
  - name: main
    port: 0
    routes: ${routes}
admin: { port: 0 }
upstreams:
${upstreams}
${extra}
`,
    { clock },
  );
  cleanup.push(() => bw.stop());
  return bw;
}

async function metrics(bw: Running): Promise<string> {
  return (await request(`${bw.adminUrl}/metrics`)).body.text();
}

const failTwice = (n: number, _req: http.IncomingMessage, res: http.ServerResponse) => {
  res.statusCode = n <= 2 ? 500 : 200;
  res.end(n <= 2 ? 'boom' : 'ok');
};

describe('the order of the policies', () => {
  it('limiter before bulkhead before the upstream; the fallback outside them all', async () => {
    const hang = await startUpstream(() => undefined);
    cleanup.push(() => hang.close());
    const bw = await proxy(
      `  app:
    endpoints: ["${hang.url}"]
    timeout: 2s
    rate_limiter: { max_requests_per_second: 1, burst_limit: 2 }
    bulkhead: { max_concurrent: 1, max_queue: 0 }
    fallback: busy`,
      '[{ upstream: app }]',
      `fallbacks:\n  busy: { type: static_response, status: 503, body: busy, on: [bulkhead_full] }`,
      new ManualClock(), // no token comes back while the test runs, however slow the machine
    );
    const first = request(`${bw.url()}/1`).catch(() => undefined); // takes a token and the only slot, then hangs
    await until(() => hang.received.length === 1, 'the first request at the upstream');
    // Second: a token is left, the bulkhead is full -> bulkhead_full, answered by the fallback.
    const second = await request(`${bw.url()}/2`);
    expect(second.headers['x-breakwater-fallback']).toBe('busy');
    await second.body.dump();
    // Third: no token -> the limiter answers first, before the bulkhead is asked (429, not 503),
    // and rate_limited is not in the fallback's `on` list.
    const third = await request(`${bw.url()}/3`);
    expect(third.statusCode).toBe(429);
    await third.body.dump();
    expect(hang.received).toHaveLength(1);
    const text = await metrics(bw);
    expect(text).toMatch(/breakwater_bulkhead_rejected_total\{upstream="app"\} 1/);
    expect(text).toMatch(/breakwater_rate_limited_total\{upstream="app",mode="reject"\} 1/);
    await bw.stop();
    await first;
  });
});

describe('retries', () => {
  it('retries a GET on 5xx: 3 attempts reach the upstream, the client gets the 200 and x-breakwater-attempts', async () => {
    const up = await upstream(failTwice);
    const bw = await proxy(`  app: { endpoints: ["${up.url}"], retry: { initial_wait: 10ms } }`);
    const res = await request(`${bw.url()}/r`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('ok');
    expect(res.headers['x-breakwater-attempts']).toBe('3');
    expect(up.received).toHaveLength(3);
    expect(await metrics(bw)).toMatch(/breakwater_retries_total\{upstream="app",reason="5xx"\} 2/);
  });

  it('never retries a POST without an Idempotency-Key, and counts the skip', async () => {
    const up = await upstream(failTwice);
    const bw = await proxy(`  app: { endpoints: ["${up.url}"], retry: { initial_wait: 10ms } }`);
    const res = await request(`${bw.url()}/pay`, { method: 'POST', body: 'charge 10' });
    expect(res.statusCode).toBe(500);
    await res.body.dump();
    expect(up.received).toHaveLength(1);
    expect(await metrics(bw)).toMatch(/breakwater_retries_skipped_total\{upstream="app",reason="method"\} 1/);
  });

  it('retries a POST with an Idempotency-Key to an upstream that honours keys, replaying the body byte-exact', async () => {
    const up = await upstream(failTwice);
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], idempotency_keys: honored, retry: { initial_wait: 10ms } }`,
    );
    const body = Buffer.from([0, 1, 2, 255, 10, 13]);
    const res = await request(`${bw.url()}/pay`, {
      method: 'POST',
      body,
      headers: { 'idempotency-key': '"k-1"' },
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(up.received.map((r) => r.body)).toEqual([body, body, body]);
  });

  it('honours Retry-After: never retries earlier than it says (3 attempts, never 11)', async () => {
    const fault = await startFaultUpstream({ kind: 'retry-after', seconds: 1 });
    cleanup.push(() => fault.close());
    const bw = await proxy(
      `  app: { endpoints: ["${fault.url}"], retry: { initial_wait: 1ms, max_wait: 2s } }`,
    );
    const t0 = performance.now();
    const res = await request(`${bw.url()}/busy`);
    const took = performance.now() - t0;
    expect(res.statusCode).toBe(503);
    await res.body.dump();
    expect(fault.requests).toBe(3);
    expect(took).toBeGreaterThanOrEqual(2000);
  });

  it('does not retry when Retry-After asks for longer than max_wait', async () => {
    const fault = await startFaultUpstream({ kind: 'retry-after', seconds: 30 });
    cleanup.push(() => fault.close());
    const bw = await proxy(`  app: { endpoints: ["${fault.url}"], retry: { max_wait: 1s } }`);
    const res = await request(`${bw.url()}/busy`);
    expect(res.statusCode).toBe(503);
    expect(res.headers['retry-after']).toBe('30');
    await res.body.dump();
    expect(fault.requests).toBe(1);
    expect(await metrics(bw)).toMatch(
      /breakwater_retries_skipped_total\{upstream="app",reason="retry_after"\} 1/,
    );
  });

  it('retries a connect failure on another endpoint, even for a POST', async () => {
    const up = await upstream((_n, _req, res) => res.end('ok'));
    const dead = `http://127.0.0.1:${await freePort()}`;
    const bw = await proxy(`  app: { endpoints: ["${dead}", "${up.url}"], retry: { initial_wait: 1ms } }`);
    for (let i = 0; i < 4; i++) {
      const res = await request(`${bw.url()}/p${i}`, { method: 'POST', body: `order ${i}` });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    expect(up.received.map((r) => r.body.toString())).toEqual(['order 0', 'order 1', 'order 2', 'order 3']);
  });

  it('does not retry an unbuffered (request_buffering: false) body once sent, and counts it', async () => {
    const up = await upstream(failTwice);
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { initial_wait: 1ms, max_body_bytes: 1024 } }`,
      '[{ upstream: app, request_buffering: false }]',
    );
    const big = Buffer.alloc(4096, 'a');
    const res = await request(`${bw.url()}/big`, { method: 'PUT', body: big });
    expect(res.statusCode).toBe(500);
    await res.body.dump();
    expect(up.received).toHaveLength(1);
    expect(up.received[0]?.body.equals(big)).toBe(true);
    expect(await metrics(bw)).toMatch(
      /breakwater_retries_skipped_total\{upstream="app",reason="body_too_large"\} 1/,
    );
  });

  it('retries a body the listener buffered, whatever retry.max_body_bytes says', async () => {
    const up = await upstream(failTwice);
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { initial_wait: 1ms, max_body_bytes: 1024 } }`,
    );
    const big = Buffer.alloc(4096, 'a');
    const res = await request(`${bw.url()}/big`, { method: 'PUT', body: big });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(up.received).toHaveLength(3);
    expect(up.received.every((r) => r.body.equals(big))).toBe(true);
  });

  it('stops retrying when the retry budget is spent', async () => {
    const up = await upstream((_n, _req, res) => {
      res.statusCode = 503;
      res.end();
    });
    // The budget counts per second of the injected clock, which stands still: all three requests
    // fall in one second, whatever the machine's speed.
    const clock = new ManualClock();
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { initial_wait: 0ms, budget: { ratio: 0%, min_per_second: 1, window: 2s } } }`,
      undefined,
      undefined,
      clock,
    );
    const attempts: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await request(`${bw.url()}/b`);
      attempts.push(String(res.headers['x-breakwater-attempts']));
      await res.body.dump();
    }
    // 3 requests and max_attempts 3 would make 9 attempts; the budget allows one retry a second.
    expect(attempts).toEqual(['2', '1', '1']);
    expect(up.received).toHaveLength(4);
    const text = await metrics(bw);
    expect(text).toMatch(/breakwater_retries_total\{upstream="app",reason="5xx"\} 1\n/);
    expect(text).toMatch(/breakwater_retries_skipped_total\{upstream="app",reason="budget"\} 3\n/);
  });
});

describe('timeouts', () => {
  it('request_timeout bounds the whole request: 504, attempt aborted, remaining budget sent upstream', async () => {
    // `timeout` may not exceed `request_timeout` (refused at load), so both are 400ms: the attempt
    // is cut to what is left of the deadline, and when it ends the deadline has passed. Were
    // request_timeout ignored, the attempt timeout would answer `upstream-timeout` instead.
    let aborted = false;
    const up = await upstream((_n, _req, res) => {
      res.on('close', () => {
        aborted = !res.writableEnded;
      });
    });
    const bw = await proxy(`  app: { endpoints: ["${up.url}"], timeout: 400ms, request_timeout: 400ms }`);
    const t0 = performance.now();
    const res = await request(`${bw.url()}/slow`);
    expect(res.statusCode).toBe(504);
    expect(await res.body.json()).toMatchObject({
      type: 'urn:breakwater:problem:request-timeout',
      detail: 'the request did not complete within request_timeout (400 ms)',
    });
    expect(performance.now() - t0).toBeLessThan(4000);
    expect(up.received).toHaveLength(1);
    expect(Number(up.received[0]?.headers['x-breakwater-timeout-ms'])).toBeLessThanOrEqual(400);
    // The upstream's request was cut, not left running.
    await until(() => aborted, 'the upstream request aborted', 3000);
  });

  it('answers 408 and sends nothing upstream when a slow body does not arrive within request_timeout', async () => {
    const up = await upstream((_n, _req, res) => res.end('charged'));
    const bw = await proxy(`  app: { endpoints: ["${up.url}"], timeout: 300ms, request_timeout: 300ms }`);
    const net = await import('node:net');
    const socket = net.connect(bw.bw.listenerPort('main'), '127.0.0.1');
    let answer = '';
    socket.on('data', (d) => {
      answer += d.toString();
    });
    socket.on('error', () => undefined);
    socket.write('POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345');
    await new Promise((r) => setTimeout(r, 500));
    socket.write('67890');
    await new Promise((r) => setTimeout(r, 200));
    socket.destroy();
    expect(answer).toMatch(/^HTTP\/1.1 408/);
    expect(answer).toContain('urn:breakwater:problem:body-timeout');
    expect(up.received).toHaveLength(0);
  });

  it('starts no retry that cannot finish before the deadline', async () => {
    const fault = await startFaultUpstream({ kind: 'hang' });
    cleanup.push(() => fault.close());
    const bw = await proxy(
      `  app: { endpoints: ["${fault.url}"], timeout: 300ms, request_timeout: 500ms, retry: { retry_on: [timeout], initial_wait: 1ms } }`,
    );
    const res = await request(`${bw.url()}/t`);
    expect(res.statusCode).toBe(504);
    expect(((await res.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:upstream-timeout',
    );
    expect(fault.requests).toBe(1);
    expect(await metrics(bw)).toMatch(
      /breakwater_retries_skipped_total\{upstream="app",reason="deadline"\} 1/,
    );
  });
});

describe('circuit breaker', () => {
  it('opens after failure_threshold consecutive failures, rejects at once with Retry-After, probes, closes', async () => {
    let healthy = false;
    const up = await upstream((_n, _req, res) => {
      res.statusCode = healthy ? 200 : 500;
      res.end();
    });
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { enabled: false }, circuit_breaker: { failure_threshold: 3, reset_timeout: 300ms } }`,
    );
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await request(`${bw.url()}/c`);
      statuses.push(res.statusCode);
      if (i === 5) {
        expect(res.headers['retry-after']).toBe('1');
        expect(((await res.body.json()) as { type: string }).type).toBe(
          'urn:breakwater:problem:circuit-open',
        );
      } else await res.body.dump();
    }
    expect(statuses).toEqual([500, 500, 500, 503, 503, 503]);
    expect(up.received).toHaveLength(3);
    let text = await metrics(bw);
    expect(text).toMatch(/breakwater_circuit_breaker_state\{upstream="app",state="open"\} 1/);
    expect(text).toMatch(
      /breakwater_circuit_breaker_transitions_total\{upstream="app",from="closed",to="open",reason="consecutive_failures"\} 1/,
    );
    healthy = true;
    await new Promise((r) => setTimeout(r, 350));
    const probe = await request(`${bw.url()}/c`);
    expect(probe.statusCode).toBe(200);
    await probe.body.dump();
    text = await metrics(bw);
    expect(text).toMatch(/breakwater_circuit_breaker_state\{upstream="app",state="closed"\} 1/);
    const logged = bw.logs
      .filter((l) => l.event === 'circuit_breaker_transition')
      .map((l) => `${l.from}->${l.to}`);
    expect(logged).toEqual(['closed->open', 'open->half_open', 'half_open->closed']);
  });

  it('the e-commerce seed block: 10 failures open the breaker; recommendation falls back to static_top_items', async () => {
    const up = await upstream((_n, _req, res) => {
      res.statusCode = 503;
      res.end();
    });
    const seed = readFileSync(
      join(import.meta.dirname, '../fixtures/seed-examples/ecommerce-promo.yaml'),
      'utf8',
    );
    const bw = await proxy(
      `  recommendation: { endpoints: ["${up.url}"], retry: { enabled: false } }\n  inventory: { endpoints: ["${up.url}"] }`,
      '[{ upstream: recommendation }]',
      `fallbacks:\n  static_top_items: { type: static_response, headers: { content-type: application/json }, body: '["top-1","top-2"]' }\n  estimated_stock: { type: static_response, body: '{}' }\n${seed}`,
    );
    const answers: string[] = [];
    for (let i = 0; i < 12; i++) {
      const res = await request(`${bw.url()}/top`);
      answers.push(`${res.statusCode} ${res.headers['x-breakwater-fallback']} ${await res.body.text()}`);
    }
    expect(up.received).toHaveLength(10);
    expect(new Set(answers)).toEqual(new Set(['200 static_top_items ["top-1","top-2"]']));
    const text = await metrics(bw);
    expect(text).toMatch(/breakwater_circuit_breaker_state\{upstream="recommendation",state="open"\} 1/);
    expect(text).toMatch(
      /breakwater_fallbacks_total\{upstream="recommendation",fallback="static_top_items",reason="error"\} 10/,
    );
    expect(text).toMatch(
      /breakwater_fallbacks_total\{upstream="recommendation",fallback="static_top_items",reason="breaker_open"\} 2/,
    );
  });

  it('without a fallback, an open breaker answers 503 with Retry-After until reset_timeout', async () => {
    const up = await upstream((_n, _req, res) => {
      res.statusCode = 503;
      res.end();
    });
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { enabled: false }, circuit_breaker: { failure_threshold: 10, reset_timeout: 60 } }`,
    );
    let last: { status: number; retryAfter: unknown } = { status: 0, retryAfter: undefined };
    for (let i = 0; i < 11; i++) {
      const res = await request(`${bw.url()}/x`);
      last = { status: res.statusCode, retryAfter: res.headers['retry-after'] };
      await res.body.dump();
    }
    expect(up.received).toHaveLength(10);
    expect(last).toEqual({ status: 503, retryAfter: '60' });
  });
});

describe('clients that leave', () => {
  it('do not count as upstream failures: giving up early never opens the breaker', async () => {
    const up = await upstream((_n, _req, res) => {
      setTimeout(() => res.end('slow but fine'), 300);
    });
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], retry: { enabled: false }, circuit_breaker: { failure_threshold: 3 } }`,
    );
    for (let i = 0; i < 4; i++) {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 50);
      await request(`${bw.url()}/impatient`, { signal: ac.signal }).catch(() => undefined);
    }
    await new Promise((r) => setTimeout(r, 100));
    const res = await request(`${bw.url()}/patient`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('slow but fine');
    expect(await metrics(bw)).toMatch(/breakwater_circuit_breaker_state\{upstream="app",state="closed"\} 1/);
  });

  it('a client that leaves while queued in the bulkhead gives its slot back and is never sent upstream', async () => {
    // /a is held at the upstream until the test lets it go; anything else is answered at once.
    let releaseA: () => void = () => undefined;
    const up = await upstream((_n, req, res) => {
      if (req.url === '/a') releaseA = () => res.end('done');
      else res.end('done');
    });
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], bulkhead: { max_concurrent: 1, max_queue: 1, queue_timeout: 10s } }`,
    );
    const gauge = async (name: string) =>
      Number(
        new RegExp(`breakwater_bulkhead_${name}\\{upstream="app"\\} (\\d+)`).exec(await metrics(bw))?.[1],
      );
    const first = request(`${bw.url()}/a`).then((r) => r.body.text());
    await until(() => up.received.length === 1, '/a at the upstream');
    const ac = new AbortController();
    const queued = request(`${bw.url()}/b`, { signal: ac.signal }).catch(() => 'aborted');
    await until(async () => (await gauge('queued')) === 1, '/b queued');
    ac.abort();
    expect(await queued).toBe('aborted');
    await until(async () => (await gauge('queued')) === 0, 'the queue empty again');
    releaseA();
    expect(await first).toBe('done');
    await until(async () => (await gauge('in_flight')) === 0, 'the slot given back');
    const after = await request(`${bw.url()}/c`);
    expect(await after.body.text()).toBe('done');
    expect(up.received.map((r) => r.url)).toEqual(['/a', '/c']);
    expect(await gauge('in_flight')).toBe(0);
  });
});

describe('rate limiter and shaper', () => {
  // The limiter reads the injected clock: time moves only when the test says, so no request can
  // earn a token by arriving late on a busy machine, and the shaper releases exactly on schedule.
  it('reject mode: a burst beyond burst_limit gets 429 with Retry-After and RateLimit headers', async () => {
    const up = await upstream((_n, _req, res) => res.end('ok'));
    const clock = new ManualClock();
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], rate_limiter: { max_requests_per_second: 2, burst_limit: 5 } }`,
      undefined,
      undefined,
      clock,
    );
    const burst = () =>
      Promise.all(
        Array.from({ length: 8 }, () =>
          request(`${bw.url()}/rl`).then(async (r) => ({
            status: r.statusCode,
            headers: r.headers,
            body: await r.body.text(),
          })),
        ),
      );
    const results = await burst();
    const ok = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status === 429);
    expect(ok).toHaveLength(5);
    expect(limited).toHaveLength(3);
    for (const r of limited) {
      expect(r.headers['retry-after']).toBe('1');
      expect(r.headers['ratelimit-policy']).toBe('"default";q=2;w=1');
      expect(r.headers.ratelimit).toBe('"default";r=0;t=1');
    }
    expect(up.received).toHaveLength(5);
    // One second refills two tokens.
    clock.advance(1000);
    const next = await burst();
    expect(next.map((r) => r.status).sort()).toEqual([200, 200, 429, 429, 429, 429, 429, 429]);
    expect(up.received).toHaveLength(7);
    expect(await metrics(bw)).toMatch(/breakwater_rate_limited_total\{upstream="app",mode="reject"\} 9\n/);
  });

  it('shape mode: excess requests wait and are released at the configured rate, not rejected', async () => {
    const up = await upstream((_n, _req, res) => res.end('ok'));
    const clock = new ManualClock();
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], rate_limiter: { max_requests_per_second: 20, burst_limit: 1, mode: shape, max_delay: 2s } }`,
      undefined,
      undefined,
      clock,
    );
    const statuses = Promise.all(
      Array.from({ length: 10 }, () =>
        request(`${bw.url()}/s`).then((r) => r.body.dump().then(() => r.statusCode)),
      ),
    );
    // One at once, nine queued (every one of them counted as delayed)...
    await until(async () => /_delayed_total\{upstream="app"\} 9\n/.test(await metrics(bw)), 'nine delayed');
    await until(() => up.received.length === 1, 'the first request through');
    // ...then one every 50 ms of the clock, none earlier.
    for (let released = 2; released <= 10; released++) {
      clock.advance(49);
      await sleep(30);
      expect(up.received).toHaveLength(released - 1);
      clock.advance(1);
      await until(() => up.received.length === released, `request ${released} released`);
    }
    expect(await statuses).toEqual(Array(10).fill(200));
    expect(await metrics(bw)).not.toMatch(
      /breakwater_rate_limited_total\{upstream="app",mode="shape"\} [1-9]/,
    );
  });

  it('shape mode rejects past max_queue', async () => {
    const up = await upstream((_n, _req, res) => res.end('ok'));
    const clock = new ManualClock();
    const bw = await proxy(
      `  app: { endpoints: ["${up.url}"], rate_limiter: { max_requests_per_second: 5, burst_limit: 1, mode: shape, max_queue: 2, max_delay: 5s } }`,
      undefined,
      undefined,
      clock,
    );
    const statuses: number[] = [];
    const all = Promise.all(
      Array.from({ length: 6 }, () =>
        request(`${bw.url()}/s`).then((r) => r.body.dump().then(() => statuses.push(r.statusCode))),
      ),
    );
    // One through, two queued, three refused at once, while the clock stands still.
    await until(() => statuses.length === 4, 'three refused, one through');
    expect([...statuses].sort()).toEqual([200, 429, 429, 429]);
    await sleep(30);
    expect(up.received).toHaveLength(1);
    // The two queued go at 200 ms and 400 ms of the clock.
    clock.advance(400);
    await all;
    expect([...statuses].sort()).toEqual([200, 200, 200, 429, 429, 429]);
    expect(up.received).toHaveLength(3);
  });
});

describe('bulkhead', () => {
  it('a hanging upstream fills only its own bulkhead; another upstream keeps answering', async () => {
    const hang = await startUpstream(() => undefined);
    cleanup.push(() => hang.close());
    const fine: TestUpstream = await upstream((_n, _req, res) => res.end('fine'));
    const bw = await proxy(
      `  stuck: { endpoints: ["${hang.url}"], timeout: 5s, bulkhead: { max_concurrent: 2, max_queue: 1, queue_timeout: 200ms } }\n  ok: { endpoints: ["${fine.url}"] }`,
      '[{ match: { path_prefix: /stuck }, upstream: stuck }, { upstream: ok }]',
    );
    const hanging = [0, 1].map(() => request(`${bw.url()}/stuck`).catch(() => undefined));
    await until(() => hang.received.length === 2, 'both slots taken');
    const t0 = performance.now();
    const queued = await request(`${bw.url()}/stuck`);
    expect(queued.statusCode).toBe(503);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(150);
    expect(((await queued.body.json()) as { type: string }).type).toBe(
      'urn:breakwater:problem:bulkhead-full',
    );
    for (let i = 0; i < 20; i++) {
      const res = await request(`${bw.url()}/other`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    const text = await metrics(bw);
    expect(text).toMatch(/breakwater_bulkhead_in_flight\{upstream="stuck"\} 2/);
    expect(text).toMatch(/breakwater_bulkhead_rejected_total\{upstream="stuck"\} 1/);
    await bw.stop();
    await Promise.all(hanging);
  });
});
