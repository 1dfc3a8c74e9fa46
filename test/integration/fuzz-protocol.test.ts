/**
 * Byte-level fuzzing of the client side: fast-check writes request lines (methods, targets,
 * versions, separators, line endings), header framing (names, values, folding, duplicates, control
 * characters), bodies, cut-off requests, raw bytes and HTTP/2 prefaces, and sends them on raw
 * sockets to a running breakwater (an HTTP/1.1 listener and a `protocol: h2c` one). Every
 * connection must get an answer or be closed within the header timeout (plus slack), every error
 * answer breakwater writes must be a problem, and afterwards the process must be alive
 * (`/health/live` 200, a normal request still served) with no uncaught error. A request line saying
 * HTTP/2.0 once took the process down this way.
 *
 * Bounded: a fixed number of runs (BW_FUZZ_RUNS, default 20) of up to 25 concurrent connections,
 * and fast-check stops starting new runs after 15 s (at least 5 must have run).
 */
import net from 'node:net';
import fc from 'fast-check';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { parseResponses } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const HEADER_TIMEOUT_MS = 500;
/** On top of the header timeout: Node checks it every 125 ms here, and the machine may be busy. */
const SLACK_MS = 2500;
const H2_PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

interface Probe {
  readonly listener: 'main' | 'h2c';
  readonly bytes: string;
  /** HTTP/1 bytes (an answer must be an HTTP/1.1 response), or an HTTP/2 preface. */
  readonly http1: boolean;
}

interface Outcome {
  /** ms from the write to the first byte back or the close. */
  readonly after: number;
  readonly how: 'answer' | 'closed' | 'silent';
  readonly text: string;
}

/** Writes the bytes; resolves at the first answer (plus a little, to read it whole) or the close. */
function probe(port: number, bytes: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let started = 0;
    let firstAt = -1;
    let done = false;
    const finish = (how: Outcome['how']) => {
      if (done) return;
      done = true;
      clearTimeout(limit);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      resolve({ after: (firstAt < 0 ? performance.now() : firstAt) - started, how, text });
    };
    const limit = setTimeout(() => finish('silent'), HEADER_TIMEOUT_MS + SLACK_MS);
    socket.on('connect', () => {
      started = performance.now();
      socket.write(Buffer.from(bytes, 'latin1'));
    });
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (firstAt < 0) {
        firstAt = performance.now();
        // Read on briefly so the first answer is whole, then stop: an answer is what was asked.
        setTimeout(() => finish('answer'), 150);
      }
    });
    socket.on('end', () => finish(firstAt < 0 ? 'closed' : 'answer'));
    socket.on('close', () => finish(firstAt < 0 ? 'closed' : 'answer'));
    socket.on('error', () => finish(firstAt < 0 ? 'closed' : 'answer'));
  });
}

// ---- the grammar ----

const TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const latin1 = fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c));
const anyText = (max: number) => fc.string({ unit: latin1, maxLength: max });
const token = fc.string({ unit: fc.constantFrom(...TCHAR.split('')), minLength: 1, maxLength: 12 });

const method = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'TRACE',
      'CONNECT',
      'PRI',
      'DESCRIBE',
      'SETUP',
      'SOURCE',
      'PURGE',
      'QUERY',
      'M-SEARCH',
    ),
  },
  { weight: 2, arbitrary: fc.constantFrom('get', 'G ET', '', 'GET\0', ' GET', 'GET/') },
  { weight: 1, arbitrary: token },
  { weight: 1, arbitrary: anyText(8) },
);
const target = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.constantFrom('/', '/x', '/a/b?c=d', '*', '/%2e%2e/x', '//a//b', '/a/../..', '/\\x'),
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom('http://x/y', 'http://elsewhere.example/', 'x', '', '/x#frag', '/%00'),
  },
  { weight: 1, arbitrary: anyText(12) },
);
const version = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom('HTTP/1.1', 'HTTP/1.0') },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      'HTTP/2.0',
      'HTTP/0.9',
      'HTTP/3.0',
      'HTTP/1.2',
      'HTTP/9.9',
      'HTTP/11',
      'HTTP/1.',
      'http/1.1',
      'RTSP/1.0',
      'ICE/1.0',
      'HTTP/1.1 ',
      '',
    ),
  },
  { weight: 1, arbitrary: anyText(10) },
);
const sep = fc.constantFrom(' ', ' ', ' ', '  ', '\t', '');
const eol = fc.constantFrom('\r\n', '\r\n', '\r\n', '\n', '\r', '\r\r\n');
const headerName = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.constantFrom(
      'Host',
      'Content-Length',
      'Transfer-Encoding',
      'Expect',
      'Connection',
      'Upgrade',
      'X-A',
      'host',
      'content-length',
      'transfer-encoding',
    ),
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom('Host ', ' Host', 'Content-Length ', 'Transfer-Encoding\t', 'X A', ''),
  },
  { weight: 1, arbitrary: token },
  { weight: 1, arbitrary: anyText(8) },
);
const headerValue = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.constantFrom('x', '5', '0', '3', '-1', '+5', '5a', '99999999999', 'chunked', 'Chunked'),
  },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'gzip, chunked',
      'chunked, identity',
      'chunked, chunked',
      '100-continue',
      'teapot',
      'close',
      'upgrade',
      'websocket',
      'h2c',
      'a, b',
    ),
  },
  { weight: 1, arbitrary: anyText(16) },
);
const header = fc.tuple(headerName, fc.constantFrom(':', ': ', ' : ', ':\t', ''), headerValue, fc.boolean());
const body = fc.oneof(
  fc.constant(''),
  fc.constantFrom('hello', '0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'zz\r\n', '3\r\nabc\r\n'),
  anyText(40),
);

const http1Request = fc
  .record({
    method,
    sep1: sep,
    target,
    sep2: sep,
    version,
    eol,
    headers: fc.array(header, { maxLength: 6 }),
    withHost: fc.boolean(),
    body,
    /** Cut the bytes short (a request that never completes), as a fraction of its length. */
    cut: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { freq: 4 }),
    /** A well-formed request pipelined behind it. */
    pipelined: fc.boolean(),
  })
  .map((r) => {
    let text = `${r.method}${r.sep1}${r.target}${r.sep2}${r.version}${r.eol}`;
    if (r.withHost) text += `Host: x${r.eol}`;
    for (const [name, colon, value, folded] of r.headers)
      text += `${name}${colon}${value}${folded ? `${r.eol} folded` : ''}${r.eol}`;
    text += `${r.eol}${r.body}`;
    if (r.pipelined) text += 'GET /behind HTTP/1.1\r\nHost: x\r\n\r\n';
    if (r.cut !== null) text = text.slice(0, Math.floor(text.length * r.cut));
    return text;
  });

const h2Bytes = fc.oneof(
  fc.tuple(fc.integer({ min: 1, max: H2_PREFACE.length - 1 })).map(([n]) => H2_PREFACE.slice(0, n)),
  anyText(60).map((rest) => H2_PREFACE + rest),
  fc.uint8Array({ maxLength: 60 }).map((b) => H2_PREFACE + Buffer.from(b).toString('latin1')),
);

const probeArb: fc.Arbitrary<Probe> = fc
  .oneof(
    { weight: 8, arbitrary: fc.tuple(fc.constantFrom('main', 'h2c'), http1Request) },
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom('main', 'h2c'), anyText(60)) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('h2c'), h2Bytes) },
  )
  .map(([listener, bytes]) => ({
    listener: listener as Probe['listener'],
    bytes,
    http1: !bytes.startsWith(H2_PREFACE.slice(0, Math.min(bytes.length, 4))) || bytes.length === 0,
  }));

describe('fuzzing the client side over raw sockets', () => {
  let up: TestUpstream;
  let bw: Running;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  beforeAll(async () => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    up = await startUpstream();
    const listener = (name: string, protocol: string) => `
  - name: ${name}
    port: 0
    protocol: ${protocol}
    limits: { header_timeout: ${HEADER_TIMEOUT_MS}ms, body_idle_timeout: ${HEADER_TIMEOUT_MS}ms, max_body_bytes: 1KiB }
    routes: [{ upstream: app, timeout: 2s, request_timeout: 2s }]`;
    bw = await startBreakwater(`
listeners:${listener('main', 'http1')}${listener('h2c', 'h2c')}
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], retry: { enabled: false } }
logging: { level: error }
`);
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await bw.stop();
    await up.close();
  });

  it('answers or closes every connection within the header timeout, and stays alive', async () => {
    /** What went wrong in the last failing run (after shrinking: the smallest one found). */
    let failures: string[] = [];
    const result = await fc.check(
      fc.asyncProperty(fc.array(probeArb, { minLength: 1, maxLength: 25 }), async (probes) => {
        const outcomes = await Promise.all(probes.map((p) => probe(bw.bw.listenerPort(p.listener), p.bytes)));
        const wrong: string[] = [];
        for (const [i, o] of outcomes.entries()) {
          const p = probes[i] as Probe;
          const what = `${p.listener} ${JSON.stringify(p.bytes)}`;
          if (o.how === 'silent') {
            wrong.push(`no answer and no close within ${HEADER_TIMEOUT_MS + SLACK_MS} ms: ${what}`);
            continue;
          }
          if (o.how !== 'answer' || !p.http1) continue;
          if (!o.text.startsWith('HTTP/1.1 ')) {
            wrong.push(`not an HTTP/1.1 answer (${JSON.stringify(o.text.slice(0, 40))}): ${what}`);
            continue;
          }
          for (const r of parseResponses(o.text).responses) {
            if (r.status >= 400 && r.headers['content-type'] !== 'application/problem+json')
              wrong.push(
                `a ${r.status} that is not a problem (${JSON.stringify(o.text.slice(0, 60))}): ${what}`,
              );
          }
        }
        if (wrong.length > 0) failures = wrong;
        return wrong.length === 0;
      }),
      {
        numRuns: Number(process.env.BW_FUZZ_RUNS ?? 20),
        interruptAfterTimeLimit: 15_000,
      },
    );
    expect({ failed: result.failed, failures: failures.slice(0, 5), seed: result.seed }).toEqual({
      failed: false,
      failures: [],
      seed: result.seed,
    });
    expect(result.numRuns).toBeGreaterThanOrEqual(5);
    // The process is alive and still serves.
    expect(uncaught).toEqual([]);
    expect((await request(`${bw.adminUrl}/health/live`)).statusCode).toBe(200);
    for (const name of ['main', 'h2c']) {
      const res = await request(`${bw.url(name)}/after`, { method: 'POST', body: 'still here' });
      expect([res.statusCode, await res.body.text()]).toEqual([200, 'still here']);
    }
  });
});
