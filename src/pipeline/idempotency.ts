/**
 * Idempotency-Key at the proxy (draft-ietf-httpapi-idempotency-key-header), per route.
 *
 * - First request with a key: it is forwarded, and its final response (status, headers, body) is
 *   stored with a fingerprint of the request (method, path and query, SHA-256 of the body) for `ttl`.
 * - The same key again, completed: the stored response is replayed without calling the upstream,
 *   byte for byte, with `Idempotent-Replayed: true`.
 * - The same key while the first is in flight: 409 (or, with `conflict: wait`, wait and replay).
 * - The same key with another fingerprint: 422. No key where `required`: 400. A malformed key: 400.
 * - Once a request may have reached the upstream (`ctx.maybeProcessed`), its key stays claimed:
 *   - a client that leaves does not stop it: the upstream call runs to its end (within the route's
 *     timeouts), its answer is read whole into the store, and the retry gets 409 while it runs (or
 *     waits, with `conflict: wait`) and the stored answer afterwards;
 *   - an outcome breakwater did not see (a timeout after sending, a reset, an answer cut short or
 *     over `max_body_bytes`) stores nothing and keeps the claim until its in-flight lease lapses:
 *     a retry meanwhile gets 409, never a second call ('unknown').
 * - A request that certainly never reached the upstream (connect failure, open breaker, limiter or
 *   bulkhead refusal, a client that left before it was sent) releases its key: the next try runs
 *   for real. So does an answer not to store (a 5xx with `store_server_errors: false`).
 * - Keys are scoped by `key_scope` (the client address by default), so clients cannot collide.
 */

import { createHash } from 'node:crypto';
import { AttemptError, type BodyTee } from '../attempt/attempt.js';
import { clientResponseHeaders } from '../attempt/headers.js';
import type { Clock } from '../clock.js';
import type { IdempotencyPolicy } from '../config/resolve.js';
import type { BeginResult, IdempotencyStore } from '../idempotency/store.js';
import { clientAddress } from '../listener/client-address.js';
import { problem } from '../listener/problem.js';
import { FileBody } from '../listener/request-body.js';
import { type HttpResponse, type Layer, type Outcome, onFinish, type RequestContext } from './types.js';

export type IdempotencyResult =
  | 'stored'
  | 'replayed'
  | 'conflict'
  | 'mismatch'
  | 'missing'
  | 'malformed'
  | 'released'
  | 'unknown'
  | 'store_error_rejected'
  | 'store_error_forwarded';

const BARE_KEY = /^[\x21-\x7e]{1,255}$/;
const QUOTED_KEY = /^"([\x20\x21\x23-\x5b\x5d-\x7e]{1,255})"$/;
const PER_REQUEST = new Set([
  'x-request-id',
  'x-breakwater-attempts',
  'connection',
  'date',
  'idempotent-replayed',
]);

/** The key's value: an sf-string (`"abc"`, as the draft writes it) or a bare token (as most clients send). */
export function parseIdempotencyKey(raw: string | string[]): string | undefined {
  if (Array.isArray(raw)) return undefined;
  const v = raw.trim();
  const quoted = QUOTED_KEY.exec(v);
  if (quoted) return quoted[1];
  return v.startsWith('"') || !BARE_KEY.test(v) ? undefined : v;
}

async function readBody(ctx: RequestContext, max: number): Promise<Buffer | FileBody | 'too_large'> {
  const body = ctx.body;
  if (body === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (body instanceof FileBody) return body.size > max ? 'too_large' : body;
  const declared = ctx.req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) return 'too_large';
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) return 'too_large';
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

function scopeOf(policy: IdempotencyPolicy, ctx: RequestContext): string {
  const s = policy.keyScope;
  if (s.kind === 'global') return '*';
  if (s.kind === 'header') {
    const v = ctx.req.headers[s.header];
    if (typeof v === 'string' && v !== '') return `h:${v}`;
  }
  return `ip:${clientAddress(ctx, ctx.route.trust)}`;
}

export function idempotencyLayer(
  policy: IdempotencyPolicy,
  store: IdempotencyStore,
  route: string,
  count: (result: IdempotencyResult) => void,
  clock: Clock,
): Layer {
  return (next) => async (ctx) => {
    if (!policy.methods.has(ctx.method)) return next(ctx);
    const raw = ctx.req.headers['idempotency-key'];
    const answer = (kind: Parameters<typeof problem>[0], detail: string, status?: number): Outcome => ({
      type: 'problem',
      problem: problem(kind, detail, {
        upstream: ctx.upstream.name,
        requestId: ctx.requestId,
        ...(status ? { status } : {}),
      }),
    });
    if (raw === undefined) {
      if (!policy.required) return next(ctx);
      count('missing');
      return answer('idempotency-key-missing', `${ctx.method} on this route needs an Idempotency-Key header`);
    }
    const key = parseIdempotencyKey(raw);
    if (key === undefined) {
      count('malformed');
      return answer(
        'idempotency-key-malformed',
        'the Idempotency-Key must be one string of 1-255 visible characters, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324"',
      );
    }
    let body: Buffer | FileBody | 'too_large';
    try {
      body = await readBody(ctx, policy.maxBodyBytes);
    } catch (err) {
      if ((err as { code?: string }).code === 'BW_BODY_TOO_LARGE')
        return answer('payload-too-large', (err as Error).message);
      ctx.clientGone = true;
      return answer('bad-request', 'the request body could not be read');
    }
    if (body === 'too_large') {
      return answer(
        'payload-too-large',
        `requests with an Idempotency-Key may carry at most ${policy.maxBodyBytes} bytes`,
      );
    }
    let bodyHash: Buffer;
    if (body instanceof FileBody) {
      // A body the listener buffered into a temporary file is hashed from it, not read into memory.
      try {
        bodyHash = await body.digest();
      } catch {
        return answer('body-storage-failed', 'the buffered request body could not be read back', 503);
      }
    } else {
      ctx.body = body.length || ctx.body !== null ? body : null;
      bodyHash = createHash('sha256').update(body).digest();
    }
    const fingerprint = createHash('sha256')
      .update(`${ctx.method}\n${ctx.path}\n`)
      .update(bodyHash)
      .digest('base64');
    const storeKey = `${route}\n${scopeOf(policy, ctx)}\n${key}`;

    // A claim lapses after its lease if its request never finishes (a replica that died) or its
    // outcome is unknown (kept by `abandon`): the request deadline twice, plus time for the
    // response body to stream, at most the TTL.
    const inFlight = ctx.route.timeouts.request * 2 + 10_000;
    let r: BeginResult;
    try {
      r = await store.begin(storeKey, fingerprint, policy.ttl, inFlight);
      if (r.kind === 'in_flight' && r.fingerprint === fingerprint && policy.conflict === 'wait') {
        await store.settled(storeKey, ctx.route.timeouts.request);
        r = await store.begin(storeKey, fingerprint, policy.ttl, inFlight);
      }
    } catch {
      // Only a shared store fails here (Redis unreachable): on_store_error decides.
      if (policy.onStoreError === 'forward') {
        count('store_error_forwarded');
        return next(ctx);
      }
      count('store_error_rejected');
      return {
        type: 'problem',
        problem: problem(
          'store-unavailable',
          'the Idempotency-Key cannot be checked because the shared store (Redis) is unreachable; retry with the same key',
          { upstream: ctx.upstream.name, requestId: ctx.requestId, headers: ['retry-after', '1'] },
        ),
      };
    }
    if (r.kind !== 'acquired') {
      if (r.fingerprint !== fingerprint) {
        count('mismatch');
        return answer(
          'idempotency-key-mismatch',
          'this Idempotency-Key was used with a different request (method, path or body)',
        );
      }
      if (r.kind === 'in_flight') {
        count('conflict');
        return answer(
          'idempotency-conflict',
          'a request with this Idempotency-Key is still being processed, or its outcome is not known yet; retry later with the same key',
        );
      }
      count('replayed');
      const res = r.response;
      return {
        type: 'local',
        status: res.status,
        headers: res.headers,
        body: res.body,
        fallback: undefined,
        age: undefined,
        replayed: true,
      };
    }

    // What becomes of the claim: stored (complete), released (never reached the upstream, or an
    // answer not to store), or kept until its lease lapses (outcome unknown). Decided once, when
    // the client's response is over, or, for a client that left, when the call is.
    let stored = false;
    let declined = false;
    let running = true;
    let teeOpen = false;
    let settled = false;
    const save = (status: number, headers: readonly string[], b: Buffer): void => {
      stored = true;
      count('stored');
      const kept: string[] = [];
      for (let i = 0; i < headers.length; i += 2) {
        if (!PER_REQUEST.has((headers[i] as string).toLowerCase()))
          kept.push(headers[i] as string, headers[i + 1] as string);
      }
      void store.complete(storeKey, { status, headers: kept, body: b }, policy.ttl);
    };
    const settle = (): void => {
      if (stored || settled) return;
      settled = true;
      if (declined || !ctx.maybeProcessed) {
        count('released');
        void store.release(storeKey);
      } else {
        count('unknown');
        void store.abandon(storeKey);
      }
    };
    ctx.keepUpstream = true;
    ctx.responseTee = (status, headers) => {
      if (status >= 500 && !policy.storeServerErrors) {
        declined = true;
        return undefined;
      }
      teeOpen = true;
      return new StoreTee(
        policy.maxBodyBytes,
        (b) => {
          teeOpen = false;
          save(status, headers, b);
        },
        () => {
          teeOpen = false;
          if (ctx.finished) settle();
        },
      );
    };
    // A body still read for the store (its client left mid-body) settles when it ends.
    onFinish(ctx, () => {
      if (!running && !teeOpen) settle();
    });
    let outcome: Outcome;
    try {
      outcome = await next(ctx);
    } catch (err) {
      running = false;
      if (ctx.finished) settle();
      throw err;
    }
    running = false;
    if (!ctx.clientGone) return outcome; // relayed by the listener; settled when that is over
    // The client left while the call ran: its answer is read whole for the retry.
    if (outcome.type === 'response') await keepAnswer(ctx, outcome);
    settle();
    return outcome;

    async function keepAnswer(c: RequestContext, r: HttpResponse): Promise<void> {
      const { attempt, head } = r;
      if (head.status >= 500 && !policy.storeServerErrors) {
        declined = true;
        attempt.discard();
        return;
      }
      // Bounded by what is left of the request deadline, as if the client were still there.
      const left = Math.max(1, Math.floor(c.deadline - clock.now()));
      const timer = Number.isFinite(c.deadline)
        ? clock.setTimeout(
            () => attempt.abort(new AttemptError('timeout', 'the request deadline passed', true)),
            left,
          )
        : undefined;
      const body = await attempt.collect(policy.maxBodyBytes);
      if (timer !== undefined) clock.clearTimeout(timer);
      if (body.complete) save(head.status, clientResponseHeaders(head.rawHeaders, c.requestId), body.body);
    }
  };
}

/**
 * Collects a response body up to `max` bytes; hands it over only when it arrived whole, else (over
 * `max`, or cut) says so.
 */
class StoreTee implements BodyTee {
  private chunks: Buffer[] | undefined = [];
  private size = 0;
  constructor(
    private readonly max: number,
    private readonly onWhole: (body: Buffer) => void,
    private readonly onBroken: () => void,
  ) {}
  data(chunk: Buffer): void {
    if (!this.chunks) return;
    this.size += chunk.length;
    if (this.size > this.max) this.chunks = undefined;
    else this.chunks.push(chunk);
  }
  end(): void {
    if (this.chunks) this.onWhole(Buffer.concat(this.chunks, this.size));
    else this.onBroken();
    this.chunks = undefined;
  }
  fail(): void {
    this.chunks = undefined;
    this.onBroken();
  }
}
