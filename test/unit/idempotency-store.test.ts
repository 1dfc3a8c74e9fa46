/**
 * The memory Idempotency-Key store's claim lifecycle: a claim lives for its in-flight lease (so one
 * abandoned with an unknown outcome lapses), a completed record for its TTL, and `abandon` keeps
 * the claim while waking whoever waits on it.
 */
import { describe, expect, it } from 'vitest';
import { MemoryIdempotencyStore } from '../../src/idempotency/store.js';
import { ManualClock } from '../kit/clock.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const RESPONSE = { status: 201, headers: ['content-type', 'text/plain'], body: Buffer.from('ok') };

describe('MemoryIdempotencyStore claims', () => {
  it('an abandoned claim holds the key (in flight) until its in-flight lease lapses, then the key is free', async () => {
    const store = new MemoryIdempotencyStore();
    expect(await store.begin('k', 'fp', 60_000, 40)).toEqual({ kind: 'acquired' });
    await store.abandon('k');
    expect(await store.begin('k', 'fp', 60_000, 40)).toEqual({ kind: 'in_flight', fingerprint: 'fp' });
    await sleep(200);
    expect(await store.begin('k', 'fp', 60_000, 40)).toEqual({ kind: 'acquired' });
  });

  it('a completed record outlives the claim lease: it is kept for the TTL', async () => {
    const store = new MemoryIdempotencyStore();
    await store.begin('k', 'fp', 60_000, 40);
    await store.complete('k', RESPONSE, 60_000);
    await sleep(200);
    expect(await store.begin('k', 'fp', 60_000, 40)).toEqual({
      kind: 'completed',
      fingerprint: 'fp',
      response: RESPONSE,
    });
  });

  it('abandon wakes a waiter (conflict: wait) at once; release frees the key', async () => {
    const clock = new ManualClock();
    const store = new MemoryIdempotencyStore({ clock });
    await store.begin('k', 'fp', 60_000, 60_000);
    let woken = false;
    const waiting = store.settled('k', 30_000).then(() => {
      woken = true;
    });
    await store.abandon('k');
    await waiting;
    expect(woken).toBe(true);
    expect((await store.begin('k', 'fp', 60_000, 60_000)).kind).toBe('in_flight');
    await store.release('k');
    expect((await store.begin('k', 'fp', 60_000, 60_000)).kind).toBe('acquired');
  });
});
