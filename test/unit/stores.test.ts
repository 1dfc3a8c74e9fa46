/**
 * The pieces of fleet mode that need no Redis: the store breaker's state machine (injected clock),
 * the Idempotency-Key record codec, and the local share of a global limit.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../src/config/resolve.js';
import { decodeRecord, encodeCompleted } from '../../src/idempotency/redis-store.js';
import { localShare } from '../../src/pipeline/global-rate-limiter.js';
import { StoreBreaker } from '../../src/stores/breaker.js';
import { ManualClock } from '../kit/clock.js';

describe('store breaker', () => {
  it('opens after failure_threshold failures in a row, refuses until reset_timeout, then lets one probe through', () => {
    const clock = new ManualClock();
    const b = new StoreBreaker({ failureThreshold: 3, resetTimeout: 1000 }, clock);
    const seen: string[] = [];
    b.onTransition((from, to) => seen.push(`${from}->${to}`));
    b.failure('x');
    b.success(); // a success in between resets the count
    b.failure('x');
    b.failure('x');
    expect(b.state).toBe('closed');
    b.failure('x');
    expect(b.state).toBe('open');
    expect(b.allow()).toBe(false);
    expect(b.retryInMs()).toBe(1000);
    clock.advance(999);
    expect(b.allow()).toBe(false);
    clock.advance(1);
    expect(b.allow()).toBe(true); // the probe
    expect(b.state).toBe('half_open');
    expect(b.allow()).toBe(false); // only one at a time
    b.failure('probe');
    expect(b.state).toBe('open');
    clock.advance(1000);
    expect(b.allow()).toBe(true);
    b.success();
    expect(b.state).toBe('closed');
    expect(b.allow()).toBe(true);
    expect(seen).toEqual([
      'closed->open',
      'open->half_open',
      'half_open->open',
      'open->half_open',
      'half_open->closed',
    ]);
  });

  it('lets a probe through at once when the client reconnects', () => {
    const clock = new ManualClock();
    const b = new StoreBreaker({ failureThreshold: 1, resetTimeout: 60_000 }, clock);
    b.failure('down');
    expect(b.allow()).toBe(false);
    b.reconnected();
    expect(b.state).toBe('half_open');
    expect(b.allow()).toBe(true);
    b.success();
    expect(b.state).toBe('closed');
  });
});

describe('Idempotency-Key records in Redis', () => {
  it('round-trips any status, headers (latin1 values) and body bytes', () => {
    const token = fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}$/);
    const value = fc.string({
      unit: fc.integer({ min: 0x20, max: 0xff }).map((c) => String.fromCharCode(c)),
      maxLength: 40,
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 100, max: 599 }),
        fc.array(fc.tuple(token, value), { maxLength: 8 }),
        fc.uint8Array({ maxLength: 300 }),
        (status, pairs, body) => {
          const headers = pairs.flat();
          const rec = encodeCompleted('fp+/=', { status, headers, body: Buffer.from(body) });
          const back = decodeRecord(rec);
          expect(back?.kind).toBe('completed');
          if (back?.kind !== 'completed') return;
          expect(back.fingerprint).toBe('fp+/=');
          expect(back.response.status).toBe(status);
          expect(back.response.headers).toEqual(headers);
          expect(Buffer.compare(back.response.body, Buffer.from(body))).toBe(0);
        },
      ),
    );
  });

  it('reads a claim as in flight with its fingerprint, and anything else as not ours', () => {
    expect(decodeRecord(Buffer.from('P\nowner.1\nabc='))).toEqual({ kind: 'in_flight', fingerprint: 'abc=' });
    expect(decodeRecord(Buffer.from('something else'))).toBeUndefined();
  });
});

describe('local share of a global limit', () => {
  it('divides rate and burst by replicas (burst at least 1)', () => {
    const p = { ...DEFAULTS.rateLimiter, ratePerSecond: 10_000, burst: 5000, key: { kind: 'none' as const } };
    expect(localShare({ ...p, replicas: 20 })).toMatchObject({ ratePerSecond: 500, burst: 250 });
    expect(localShare({ ...p, ratePerSecond: 3, burst: 2, replicas: 3 })).toMatchObject({
      ratePerSecond: 1,
      burst: 1,
    });
  });
});
