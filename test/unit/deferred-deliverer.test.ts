/**
 * The deliverer's stop against a queue whose take is slow (the Redis backend's take is several
 * round trips): items a take hands out after stop began are put back, never sent.
 */
import { describe, expect, it } from 'vitest';
import { systemClock } from '../../src/clock.js';
import type { DeferredBackend } from '../../src/deferred/backend.js';
import { Deliverer } from '../../src/deferred/deliverer.js';
import type { Item } from '../../src/deferred/model.js';
import { createLogger } from '../../src/observability/logger.js';
import type { InternalResult } from '../../src/pipeline/internal-call.js';

const item: Item = {
  id: 'i1',
  seq: 1,
  route: 'orders',
  upstream: 'orders',
  method: 'POST',
  path: '/orders',
  headers: [],
  body: null,
  requestId: 'r1',
  clientAddress: undefined,
  idempotencyKey: 'k1',
  orderingKey: undefined,
  reason: 'connect_failure',
  bytes: 7,
  schedule: [1_000],
  maxAttempts: 0,
  maxAge: 60_000,
  state: 'delivering',
  createdAt: 0,
  updatedAt: 0,
  expiresAt: 60_000,
  nextAt: 0,
  attempts: 0,
  history: [],
  lastBody: undefined,
};

describe('the deliverer', () => {
  it('puts back, and never sends, the items a take in progress hands out after stop began', async () => {
    let handOut: (r: { items: Item[]; nextAt: number }) => void = () => undefined;
    let takeStarted: () => void = () => undefined;
    const started = new Promise<void>((r) => {
      takeStarted = r;
    });
    const putBack: Item[] = [];
    const sent: string[] = [];
    const queue = {
      onDue: () => undefined,
      take: () => {
        takeStarted();
        return new Promise<{ items: Item[]; nextAt: number }>((r) => {
          handOut = r;
        });
      },
      putBack: async (items: Iterable<Item>) => {
        putBack.push(...items);
      },
      settle: async () => 'synced' as const,
    } as unknown as DeferredBackend;
    const send = async (_u: string, r: { requestId: string }): Promise<InternalResult> => {
      sent.push(r.requestId);
      return { type: 'response', status: 201, headers: [], body: Buffer.alloc(0), attempts: 1 };
    };
    const d = new Deliverer(queue, send, () => 4, createLogger({ level: 'silent' }), systemClock);
    d.start();
    await started;
    await d.stop(0);
    handOut({ items: [item], nextAt: Number.POSITIVE_INFINITY });
    await new Promise((r) => setTimeout(r, 50));
    expect(sent).toEqual([]);
    expect(putBack.map((i) => i.id)).toEqual(['i1']);
  });
});
