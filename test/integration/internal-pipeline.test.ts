/**
 * A call breakwater makes itself (a replayed or composed request) runs through an upstream's
 * pipeline with no client connection: a context made from a header list and a peer address, no
 * IncomingMessage, no ServerResponse. The policies read what they need from it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { callRequest, newContext, type Outcome } from '../../src/pipeline/types.js';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

let bw: Running | undefined;
let up: TestUpstream | undefined;
afterEach(async () => {
  await bw?.stop();
  await up?.close();
  bw = undefined;
  up = undefined;
});

async function call(
  running: Running,
  peer: string,
  headers: string[],
  body: Buffer | null,
): Promise<Outcome> {
  const p = running.bw.internalPipeline('app');
  if (!p) throw new Error('no pipeline for app');
  const ctx = newContext({
    req: callRequest(headers),
    peer,
    res: undefined,
    route: p.route,
    upstream: p.upstream,
    requestId: `internal-${peer}`,
    method: body === null ? 'GET' : 'POST',
    path: '/replay?x=1',
    start: 0,
    body,
    grpc: false,
    grpcTimeout: Number.POSITIVE_INFINITY,
    unbufferedResponse: false,
  });
  return p.handler(ctx);
}

describe('an internal call through an upstream pipeline', () => {
  it('reaches the upstream with its headers, body and X-Forwarded-For from its peer', async () => {
    up = await startUpstream();
    bw = await startBreakwater(simpleConfig(up.url));
    const out = await call(
      bw,
      '10.1.2.3',
      ['X-Origin', 'deferred', 'content-type', 'text/plain'],
      Buffer.from('hello'),
    );
    expect(out.type).toBe('response');
    if (out.type !== 'response') return;
    expect(out.head.status).toBe(200);
    out.attempt.discard();
    const got = up.received[0];
    expect(got?.method).toBe('POST');
    expect(got?.url).toBe('/replay?x=1');
    expect(got?.body.toString()).toBe('hello');
    expect(got?.headers['x-origin']).toBe('deferred');
    expect(got?.headers['x-forwarded-for']).toBe('10.1.2.3');
    expect(got?.headers['x-request-id']).toBe('internal-10.1.2.3');
  });

  it('is admitted by the upstream limiter, keyed by the client address it gives', async () => {
    up = await startUpstream();
    // One token per client, the next only in 100 s.
    bw = await startBreakwater(
      simpleConfig(up.url, 'rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1, key: client_ip }'),
    );
    const first = await call(bw, '10.0.0.1', [], null);
    const again = await call(bw, '10.0.0.1', [], null);
    const other = await call(bw, '10.0.0.2', [], null);
    expect(first.type).toBe('response');
    expect(again.type === 'problem' && again.problem.kind).toBe('rate-limited');
    expect(other.type).toBe('response');
    for (const o of [first, other]) if (o.type === 'response') o.attempt.discard();
    expect(up.received.length).toBe(2);
  });
});
