/**
 * Byte-exact forwarding, as a property: whatever method, raw path and query, end-to-end headers
 * and body a client sends, the upstream receives exactly those (percent-encoding untouched, the
 * generated headers in their relative order, the body byte for byte, framing aside), and the client
 * receives exactly the upstream's status, generated response headers and body bytes.
 *
 * Two properties: the whole space, and the same over plain paths, so a finding in the path does not
 * hide one in the methods, headers or bodies (fast-check stops at the first failure it shrinks).
 *
 * The client is an undici Client with a raw `path`: undici's top-level `request(url)` runs the path
 * through the WHATWG URL parser, which would itself resolve `%2e%2e` before breakwater saw it.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { Client } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

/** What the upstream answers for the current run (runs are sequential). */
interface ResponsePlan {
  readonly headers: [string, string][];
  /** undefined: echo the request body. */
  readonly body: Buffer | undefined;
  /** Send Content-Length (else Node frames the response chunked). */
  readonly contentLength: boolean;
}

let plan: ResponsePlan = { headers: [], body: Buffer.alloc(0), contentLength: true };

// ---- generators ------------------------------------------------------------------------------

const TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const tchar = fc.constantFrom(...TCHAR.split(''));
const visible = fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c));

/** Header names breakwater owns, drops or frames itself, or that Node and undici set on their own. */
const RESERVED = new Set([
  'host',
  'connection',
  'keep-alive',
  'te',
  'transfer-encoding',
  'upgrade',
  'expect',
  'content-length',
  'http2-settings',
  'trailer',
  'date',
  'x-request-id',
]);
const reservedName = (name: string): boolean => {
  const l = name.toLowerCase();
  return (
    RESERVED.has(l) || l.startsWith('proxy-') || l.startsWith('x-forwarded-') || l.startsWith('x-breakwater-')
  );
};

const tokenName = fc.string({ unit: tchar, minLength: 1, maxLength: 16 });
const requestHeaderName = fc
  .oneof(
    tokenName,
    fc.constantFrom(
      'Content-Type',
      'accept',
      'Cookie',
      'authorization',
      'Cache-Control',
      'if-none-match',
      'Range',
      'forwarded',
      'Via',
      'X-Custom',
    ),
  )
  .filter((n) => !reservedName(n));
const responseHeaderName = fc
  .oneof(
    tokenName,
    fc.constantFrom(
      'Content-Type',
      'set-cookie',
      'ETag',
      'cache-control',
      'Vary',
      'content-encoding',
      'Location',
      'www-authenticate',
      'Link',
      'X-Custom',
    ),
  )
  .filter((n) => !reservedName(n));
const headerValue = fc.oneof(
  { weight: 1, arbitrary: fc.constant('') },
  { weight: 6, arbitrary: fc.string({ unit: visible, minLength: 1, maxLength: 40 }) },
);

/** 0-8 headers over a small pool of names, so duplicates of a name are common. */
function headerList(name: fc.Arbitrary<string>): fc.Arbitrary<[string, string][]> {
  return fc
    .tuple(
      fc.uniqueArray(name, { minLength: 1, maxLength: 4, selector: (n) => n.toLowerCase() }),
      fc.array(fc.tuple(fc.nat(3), headerValue), { maxLength: 8 }),
    )
    .map(([names, entries]) =>
      entries.map(([i, v]): [string, string] => [names[i % names.length] as string, v]),
    );
}

const PCT = [
  '%2F',
  '%2f',
  '%0D%0A',
  '%2e%2e',
  '%2E',
  '%20',
  '%25',
  '%3F',
  '%23',
  '%00',
  '%C3%A9',
  '%E2%82%AC',
  '%F0%9F%98%80',
];
const pctByte = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.boolean()).map(([b, upper]) => {
  const hex = b.toString(16).padStart(2, '0');
  return `%${upper ? hex.toUpperCase() : hex}`;
});
const encoded = fc.oneof(fc.constantFrom(...PCT), pctByte);
const SEGMENT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@";
const safeRun = fc.string({ unit: fc.constantFrom(...SEGMENT_CHARS.split('')), minLength: 1, maxLength: 8 });
const pieces = fc
  .array(fc.oneof({ weight: 3, arbitrary: safeRun }, { weight: 2, arbitrary: encoded }), {
    minLength: 1,
    maxLength: 4,
  })
  .map((parts) => parts.join(''))
  .filter((s) => s !== '.' && s !== '..');
/** Encoded dot-segments, often enough to be met in every run: they must reach the upstream as sent. */
const encodedDots = fc.constantFrom('%2e%2e', '%2E%2E', '%2E', '.%2e', '%2e.', '%2e');
const segment = fc.oneof({ weight: 9, arbitrary: pieces }, { weight: 1, arbitrary: encodedDots });
const path = fc
  .tuple(fc.array(segment, { minLength: 1, maxLength: 6 }), fc.boolean())
  .map(([segs, slash]) => `/${segs.join('/')}${slash ? '/' : ''}`);
const QUERY_CHARS = `${SEGMENT_CHARS}/?`;
const query = fc.oneof(
  fc.constant(''),
  fc.constant('?'),
  fc
    .array(
      fc.oneof(
        fc.string({ unit: fc.constantFrom(...QUERY_CHARS.split('')), minLength: 1, maxLength: 10 }),
        encoded,
      ),
      { minLength: 1, maxLength: 6 },
    )
    .map((parts) => `?${parts.join('')}`),
);

/** Deterministic pseudo-random bytes (xorshift32), so a 200 KiB body shrinks by its length. */
function bytes(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
const body = fc.oneof(
  fc.constant(Buffer.alloc(0)),
  fc.constant(Buffer.from('0')),
  fc.constant(Buffer.from('false')),
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc
    .record({ length: fc.integer({ min: 0, max: 200 * 1024 }), seed: fc.integer() })
    .map(({ length, seed }) => bytes(length, seed)),
);

const BODYLESS = ['GET', 'DELETE', 'OPTIONS'] as const;
const WITH_BODY = ['POST', 'PUT', 'PATCH', 'PURGE'] as const;

/** Paths with no percent-encoding and no dots: the property below then tests all but the path. */
const plainPath = fc
  .array(fc.stringMatching(/^[a-zA-Z0-9_~-]{1,10}$/), { minLength: 1, maxLength: 4 })
  .map((segs) => `/${segs.join('/')}`);

const exchangeOver = (pathArb: fc.Arbitrary<string>, queryArb: fc.Arbitrary<string>) =>
  fc.record({
    method: fc.constantFrom<string>(...BODYLESS, ...WITH_BODY),
    path: pathArb,
    query: queryArb,
    headers: headerList(requestHeaderName),
    body,
    /** Request framing: Content-Length (a Buffer), or chunked (a stream cut at these fractions). */
    chunkedAt: fc.option(
      fc.array(
        fc.integer({ min: 0, max: 1000 }).map((n) => n / 1000),
        { minLength: 1, maxLength: 5 },
      ),
      { nil: undefined, freq: 2 },
    ),
    response: fc.record({
      headers: headerList(responseHeaderName),
      /** undefined: echo the request body. */
      body: fc.option(body, { nil: undefined }),
      contentLength: fc.boolean(),
    }),
  });
const exchange = exchangeOver(path, query);

type Exchange = typeof exchange extends fc.Arbitrary<infer T> ? T : never;

// ---- the path model --------------------------------------------------------------------------

/**
 * What the upstream should see for a raw path, computed independently of src/listener/router.ts
 * (so a normalization bug there is not copied into the expectation): RFC 3986 section 5.2.4
 * remove_dot_segments as the RFC writes it, with input and output buffers, plus breakwater's
 * documented rules (docs/security.md): `//` is one slash, a segment that is only dots written as
 * `%2e` is a dot-segment, and a backslash (raw or `%5C`) or a `..` above the root makes the path
 * invalid (undefined: 400). Every other byte stays as sent.
 */
function modelPath(raw: string): string | undefined {
  if (raw.includes('\\') || /%5c/i.test(raw)) return undefined;
  let input = raw
    .replace(/\/{2,}/g, '/')
    .split('/')
    .map((seg) => {
      const dots = seg.replace(/%2e/gi, '.');
      return dots === '.' || dots === '..' ? dots : seg;
    })
    .join('/');
  let output = '';
  // The RFC's steps A to E, in its order.
  while (input.length > 0) {
    if (input.startsWith('../')) input = input.slice(3);
    else if (input.startsWith('./')) input = input.slice(2);
    else if (input.startsWith('/./')) input = input.slice(2);
    else if (input === '/.') input = '/';
    else if (input.startsWith('/../') || input === '/..') {
      // Where the RFC drops a `..` above the root silently, breakwater refuses the path.
      if (output === '') return undefined;
      input = input === '/..' ? '/' : input.slice(3);
      output = output.slice(0, Math.max(0, output.lastIndexOf('/')));
    } else if (input === '.' || input === '..') input = '';
    else {
      // The first segment, with its leading slash, moves to the output.
      const next = input.indexOf('/', 1);
      output += next < 0 ? input : input.slice(0, next);
      input = next < 0 ? '' : input.slice(next);
    }
  }
  return output;
}

/** Hand-written: raw path -> what the upstream gets (undefined: 400, nothing sent). */
const PATH_TABLE: [string, string | undefined][] = [
  ['/a/b/c/./../../g', '/a/g'], // RFC 3986 5.2.4
  ['/mid/content=5/../6', '/mid/6'], // RFC 3986 5.2.4
  ['/a/b/c/.', '/a/b/c/'],
  ['/a/b/c/..', '/a/b/'],
  ['/a/..', '/'],
  ['/a/%2e%2E/b', '/b'],
  ['/a/.%2e/b', '/b'],
  ['/a/%2E/b', '/a/b'],
  ['/a%2e/b/%2e%2e%2e', '/a%2e/b/%2e%2e%2e'],
  ['/a//b///c/', '/a/b/c/'],
  ['/a/.//../b', '/b'],
  ['/keep/%2F/and/%0D%0A', '/keep/%2F/and/%0D%0A'],
  ['/..', undefined],
  ['/a/../..', undefined],
  ['/./%2e%2e/x', undefined],
  ['/a\\b', undefined],
  ['/a%5cb', undefined],
];

describe('the path model', () => {
  it('gives the hand-written answers: RFC 3986 examples and the documented rules', () => {
    expect(PATH_TABLE.map(([raw]) => [raw, modelPath(raw)])).toEqual(PATH_TABLE);
  });
});

// ---- helpers ---------------------------------------------------------------------------------

function digest(b: Buffer): { length: number; sha256: string } {
  return { length: b.length, sha256: createHash('sha256').update(b).digest('hex').slice(0, 16) };
}

/** The generated headers' subsequence of a raw [name, value, ...] list, in order. */
function subsequence(raw: readonly string[], generated: readonly [string, string][]): [string, string][] {
  const names = new Set(generated.map(([n]) => n.toLowerCase()));
  const out: [string, string][] = [];
  for (let i = 0; i < raw.length; i += 2)
    if (names.has((raw[i] as string).toLowerCase())) out.push([raw[i] as string, raw[i + 1] as string]);
  return out;
}

/** What a client sees per name (undici lower-cases names and gathers repeats into an array). */
function perName(headers: readonly [string, string][]): Record<string, string | string[]> {
  // A Map, not an object literal: generated names such as `constructor` must not meet a prototype.
  const out = new Map<string, string | string[]>();
  for (const [n, v] of headers) {
    const k = n.toLowerCase();
    const prev = out.get(k);
    out.set(k, prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v]);
  }
  return Object.fromEntries(out);
}

function chunks(b: Buffer, at: readonly number[]): Buffer[] {
  const cuts = [...new Set(at.map((f) => Math.floor(f * b.length)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const c of [...cuts, b.length]) {
    if (c > from) out.push(b.subarray(from, c));
    from = Math.max(from, c);
  }
  return out;
}

// ---- the property ----------------------------------------------------------------------------

describe('byte-exact forwarding (property)', () => {
  let up: TestUpstream;
  let bw: Running;
  let client: Client;
  beforeAll(async () => {
    up = await startUpstream((_req, res, received) => {
      const out = plan.body ?? received;
      const flat = plan.headers.flat();
      if (plan.contentLength) flat.push('content-length', String(out.length));
      res.writeHead(200, flat);
      res.end(out);
    });
    bw = await startBreakwater(simpleConfig(up.url, 'retry: { enabled: false }'));
    client = new Client(bw.url(), { keepAliveTimeout: 2000 });
  });
  afterAll(async () => {
    await client.close();
    await bw.stop();
    await up.close();
  });

  async function run(x: Exchange): Promise<void> {
    const hasBody = (WITH_BODY as readonly string[]).includes(x.method);
    const reqBody = hasBody ? x.body : Buffer.alloc(0);
    const sendBody = !hasBody
      ? null
      : x.chunkedAt === undefined
        ? reqBody
        : Readable.from(chunks(reqBody, x.chunkedAt));
    plan = x.response;
    up.received.length = 0;

    const res = await client.request({
      method: x.method,
      path: x.path + x.query,
      headers: x.headers.flat(),
      body: sendBody,
      headersTimeout: 5000,
      bodyTimeout: 5000,
    });
    const resBody = Buffer.from(await res.body.arrayBuffer());
    const seen = up.received;
    const expectedResponseBody = x.response.body ?? reqBody;
    // The documented exception to byte-exact paths: dot-segments (`.`, `..`, also as %2e) and `//`
    // are resolved, the same way for route matching and for the upstream; a `..` above the root or
    // a backslash is refused with 400 (docs/security.md).
    const normalized = modelPath(x.path);
    if (normalized === undefined) {
      expect({ status: res.statusCode, upstreamRequests: seen.length }).toEqual({
        status: 400,
        upstreamRequests: 0,
      });
      return;
    }

    expect({
      upstreamRequests: seen.length,
      method: seen[0]?.method,
      url: seen[0]?.url,
      headers: subsequence(seen[0]?.rawHeaders ?? [], x.headers),
      body: digest(seen[0]?.body ?? Buffer.alloc(0)),
      clientStatus: res.statusCode,
      clientHeaders: Object.fromEntries(
        Object.keys(perName(x.response.headers)).map((k) => [
          k,
          Object.hasOwn(res.headers, k) ? res.headers[k] : undefined,
        ]),
      ),
      clientBody: digest(resBody),
    }).toEqual({
      upstreamRequests: 1,
      method: x.method,
      url: normalized + x.query,
      headers: x.headers,
      body: digest(reqBody),
      clientStatus: 200,
      clientHeaders: perName(x.response.headers),
      clientBody: digest(expectedResponseBody),
    });
    // Digests agree; the bytes must too (a cheap guard against a hash-prefix collision).
    expect(seen[0]?.body.equals(reqBody)).toBe(true);
    expect(resBody.equals(expectedResponseBody)).toBe(true);
  }

  it('each path of the hand-written table reaches the upstream as the table says, or is refused', async () => {
    const seen: [string, string | undefined][] = [];
    for (const [raw] of PATH_TABLE) {
      up.received.length = 0;
      plan = { headers: [], body: Buffer.alloc(0), contentLength: true };
      const res = await client.request({ method: 'GET', path: `${raw}?q=1`, headersTimeout: 5000 });
      await res.body.dump();
      const url = up.received[0]?.url;
      seen.push([raw, res.statusCode === 400 && up.received.length === 0 ? undefined : url?.slice(0, -4)]);
    }
    expect(seen).toEqual(PATH_TABLE);
  });

  it('the upstream gets exactly what the client sent, the client exactly what the upstream answered', async () => {
    await fc.assert(fc.asyncProperty(exchange, run), { numRuns: 80 });
  }, 60_000);

  // The same property over plain paths, so a path finding above does not hide one in the methods,
  // headers or bodies.
  it('the same, over plain paths: methods, headers and bodies byte-exact', async () => {
    await fc.assert(fc.asyncProperty(exchangeOver(plainPath, query), run), { numRuns: 80 });
  }, 60_000);
});
