/**
 * Where a request on a route with `deferred:` meets the queue. For the methods it covers (and,
 * with `require_idempotency_key`, a request that carries a key) the request runs through the
 * route's pipeline without fallbacks (a write is never answered by a static or cached fallback);
 * when the live attempt fails in one of the `on` ways, the whole request is stored durably and
 * answered `202 Accepted` with `Location` (its status on the admin listener). A request whose
 * ordering key already has items waiting is queued behind them without a live attempt, so it
 * cannot overtake them.
 */

import { isHopByHop } from '../attempt/headers.js';
import type { DeferredPolicy, RouteModel } from '../config/resolve.js';
import { clientAddress } from '../listener/client-address.js';
import { problem } from '../listener/problem.js';
import { FileBody } from '../listener/request-body.js';
import { parseIdempotencyKey } from '../pipeline/idempotency.js';
import type { Handler, Outcome, RequestContext } from '../pipeline/types.js';
import type { DeferredBackend } from './backend.js';
import { deferTrigger, nextDelay, summary } from './model.js';

/** Request headers not stored: hop-by-hop, framing, and those breakwater sets on every send. */
const NOT_STORED = new Set(['content-length', 'transfer-encoding', 'expect', 'host', 'x-request-id']);
const JSON_HEADERS = ['content-type', 'application/json', 'cache-control', 'no-store'];

export class DeferredRoute {
  constructor(
    readonly route: RouteModel,
    readonly policy: DeferredPolicy,
    /** The route's pipeline without its fallback layer. */
    private readonly pipeline: Handler,
    private readonly queue: DeferredBackend,
    /** The admin listener's base URL (Location: <base>/deferred/<id>). */
    private readonly base: () => string,
    private readonly random: () => number,
  ) {}

  /** Whether this request is one the route may defer (else it takes the route's usual pipeline). */
  takes(ctx: RequestContext): boolean {
    if (!this.policy.methods.has(ctx.method) || ctx.grpc) return false;
    const b = ctx.body;
    if (b !== null && !Buffer.isBuffer(b) && !(b instanceof FileBody)) return false;
    return !this.policy.requireIdempotencyKey || this.key(ctx) !== undefined;
  }

  async run(ctx: RequestContext): Promise<Outcome> {
    const key = this.key(ctx);
    const ordering = this.orderingKey(ctx);
    let waiting: boolean;
    try {
      waiting = await this.queue.laneWaiting(ctx.upstream.name, ordering);
    } catch (err) {
      return this.failed(ctx, err);
    }
    if (waiting) return this.store(ctx, key, ordering, 'queued_behind');
    const outcome = await this.pipeline(ctx);
    const trigger = deferTrigger(outcome, ctx, this.policy, key !== undefined);
    if (trigger === undefined) return outcome;
    if (outcome.type === 'response') outcome.attempt.discard();
    return this.store(ctx, key, ordering, trigger);
  }

  private async store(
    ctx: RequestContext,
    key: string | undefined,
    orderingKey: string | undefined,
    reason: string,
  ): Promise<Outcome> {
    const extra = { upstream: ctx.upstream.name, requestId: ctx.requestId };
    let body: Buffer | null;
    try {
      body = await bodyOf(ctx);
    } catch (err) {
      return {
        type: 'problem',
        problem: problem(
          'body-storage-failed',
          `the buffered request body could not be read back: ${(err as Error).message}`,
          { ...extra, status: 503 },
        ),
      };
    }
    const headers: string[] = [];
    const raw = ctx.req.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const lower = (raw[i] as string).toLowerCase();
      if (!isHopByHop(lower) && !NOT_STORED.has(lower)) headers.push(raw[i] as string, raw[i + 1] as string);
    }
    const p = this.policy;
    let r: Awaited<ReturnType<DeferredBackend['enqueue']>>;
    try {
      r = await this.queue.enqueue(
        {
          route: this.route.name,
          upstream: ctx.upstream.name,
          method: ctx.method,
          path: ctx.path,
          headers,
          body,
          requestId: ctx.requestId,
          clientAddress: clientAddress(ctx, this.route.trust),
          idempotencyKey: key,
          orderingKey,
          reason,
          schedule: p.schedule,
          maxAttempts: p.maxAttempts,
          maxAge: p.maxAge,
        },
        reason === 'queued_behind' ? 0 : nextDelay(p.schedule, 0, this.random),
      );
    } catch (err) {
      return this.failed(ctx, err);
    }
    if (r.kind === 'full')
      return {
        type: 'problem',
        problem: problem('deferred-store-full', `${r.detail}; nothing was stored, send it again later`, {
          ...extra,
          headers: ['retry-after', '5'],
        }),
      };
    const location = `${this.base()}/deferred/${r.item.id}`;
    const view = { ...summary(r.item, r.item.updatedAt), location };
    return {
      type: 'local',
      status: 202,
      headers: [...JSON_HEADERS, 'location', location],
      body: Buffer.from(JSON.stringify(view)),
      fallback: undefined,
      age: undefined,
    };
  }

  /** The store could not be written (or read): 503, nothing accepted. */
  private failed(ctx: RequestContext, err: unknown): Outcome {
    return {
      type: 'problem',
      problem: problem(
        'deferred-store-failed',
        `the request could not be stored for later delivery: ${(err as Error).message}`,
        { upstream: ctx.upstream.name, requestId: ctx.requestId, headers: ['retry-after', '5'] },
      ),
    };
  }

  private key(ctx: RequestContext): string | undefined {
    const raw = ctx.req.headers['idempotency-key'];
    return raw === undefined ? undefined : parseIdempotencyKey(raw);
  }

  private orderingKey(ctx: RequestContext): string | undefined {
    const h = this.policy.orderingKey;
    if (h === undefined) return undefined;
    const v = ctx.req.headers[h];
    return typeof v === 'string' && v !== '' ? v : undefined;
  }
}

async function bodyOf(ctx: RequestContext): Promise<Buffer | null> {
  const b = ctx.body;
  if (b === null) return null;
  if (Buffer.isBuffer(b)) return b;
  if (b instanceof FileBody) {
    const chunks: Buffer[] = [];
    for await (const c of b.stream()) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }
  return null;
}
