/**
 * The hot path's hand-made shortcuts hold to what they replace: the access line written by
 * infoLineWriter is the line pino writes for the same fields, and the response header names read
 * from the name cache give the same headers as a plain lower-case comparison.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { clientResponseHeaders } from '../../src/attempt/headers.js';
import { createLogger, infoLineWriter, isoTimeAt } from '../../src/observability/logger.js';

function capture() {
  const lines: string[] = [];
  return { lines, destination: { write: (s: string) => void lines.push(s) } };
}

const withoutTime = (line: string) => line.replace(/"time":"[^"]*"/, '"time":""');

/** The members as the recorder serializes them (see src/listener/recorder.ts). */
function members(fields: Record<string, string | number | boolean | undefined>): string {
  let out = '';
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const value =
      typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' && !Number.isFinite(v) ? 'null' : v;
    out += `,${JSON.stringify(k)}:${value}`;
  }
  return out;
}

describe('the timestamp', () => {
  it('is the member pino writes with toISOString, for any millisecond of years 0000-9999, in any order', () => {
    const min = new Date('0000-01-01T00:00:00.000Z').getTime();
    const max = new Date('9999-12-31T23:59:59.999Z').getTime();
    // Neighbouring milliseconds across a second (the cached part changes) and back; the last
    // second before the epoch first, as this file's first call (fast-check found it: a sentinel of -1 was taken for it).
    for (const t of [-32, 999, 1000, 1001, 999, -1, 0, min + 1])
      expect(isoTimeAt(t)).toBe(`,"time":"${new Date(t).toISOString()}"`);
    fc.assert(
      fc.property(fc.array(fc.integer({ min, max }), { minLength: 1, maxLength: 20 }), (times) => {
        for (const t of times) expect(isoTimeAt(t)).toBe(`,"time":"${new Date(t).toISOString()}"`);
      }),
    );
  });
});

describe('the access line', () => {
  it('has the bytes pino writes for the same fields (bindings, undefined members, escapes, NaN)', () => {
    fc.assert(
      fc.property(
        fc.string(),
        fc.option(fc.string(), { nil: undefined }),
        fc.integer({ min: 100, max: 599 }),
        fc.oneof(fc.double(), fc.constant(Number.NaN)),
        fc.boolean(),
        (requestId, path, status, bytesIn, complete) => {
          const { lines, destination } = capture();
          const log = createLogger({ destination }).child({
            listener: 'l"1',
            route: undefined,
            upstream: 'u',
          });
          const fields = { request_id: requestId, method: 'GET', path, status, bytes_in: bytesIn, complete };
          log.info(fields, 'request');
          infoLineWriter(log, 'request')(members(fields));
          expect(lines).toHaveLength(2);
          expect(withoutTime(lines[1] as string)).toBe(withoutTime(lines[0] as string));
          expect(JSON.parse(lines[1] as string)).toMatchObject({ msg: 'request', listener: 'l"1', status });
        },
      ),
      { numRuns: 200 },
    );
  });

  it('is not written when the logger level is above info', () => {
    const { lines, destination } = capture();
    const log = createLogger({ destination, level: 'warn' }).child({ listener: 'l' });
    infoLineWriter(log, 'request')(',"status":200');
    expect(lines).toEqual([]);
    log.level = 'info';
    infoLineWriter(log, 'request')(',"status":200');
    expect(lines).toHaveLength(1);
  });
});

const HOP = ['connection', 'keep-alive', 'te', 'transfer-encoding', 'upgrade', 'proxy-connection'];
const OWNED = ['x-breakwater-attempts', 'x-breakwater-fallback'];

/** What clientResponseHeaders should give, by plain string comparison. */
function reference(raw: [string, string][], requestId: string): string[] {
  const listed = new Set<string>();
  for (const [n, v] of raw)
    if (n.toLowerCase() === 'connection')
      for (const t of v.split(',')) {
        const token = t.trim().toLowerCase();
        if (token !== '' && token !== 'close' && token !== 'keep-alive') listed.add(token);
      }
  const out: string[] = [];
  let sawId = false;
  for (const [n, v] of raw) {
    const lower = n.toLowerCase();
    if (HOP.includes(lower) || OWNED.includes(lower) || listed.has(lower)) continue;
    if (lower === 'x-request-id') sawId = true;
    out.push(n, v);
  }
  if (!sawId) out.push('x-request-id', requestId);
  return out;
}

describe('response header names from the name cache', () => {
  it('give the headers a plain lower-case comparison gives, in their case, call after call', () => {
    const name = fc.oneof(
      fc.constantFrom(
        'Content-Type',
        'content-type',
        'Date',
        'Connection',
        'CONNECTION',
        'Keep-Alive',
        'X-Request-Id',
        'x-custom',
        'X-Custom',
        'Transfer-Encoding',
        'x-breakwater-attempts',
      ),
      fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,60}$/),
    );
    const value = fc.oneof(
      fc.constantFrom('keep-alive', 'close', 'x-custom', 'X-Custom, foo'),
      fc.stringMatching(/^[a-z0-9 ]{0,12}$/),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(name, value), { maxLength: 12 }), (pairs) => {
        const raw = pairs.flatMap(([n, v]) => [Buffer.from(n, 'latin1'), Buffer.from(v, 'latin1')]);
        const expected = reference(pairs, 'rid');
        // Twice: the second call reads every name from the cache.
        expect(clientResponseHeaders(raw, 'rid')).toEqual(expected);
        expect(clientResponseHeaders(raw, 'rid')).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });
});
