/**
 * The admin API as operators call it: with curl (whose `-d` sends
 * `application/x-www-form-urlencoded`), with raw HTTP requests, and every error in one
 * `application/problem+json` shape.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const run = promisify(execFile);
const CURL = ['/usr/bin/curl', '/bin/curl', '/usr/local/bin/curl'].find((p) => existsSync(p));

/** A raw HTTP/1.1 request with exactly the headers given (no client adds its own content type). */
function raw(
  url: string,
  method: string,
  body: string | undefined,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const CURL_FORM = { 'content-type': 'application/x-www-form-urlencoded' };

/** The one shape every admin error has. */
function expectProblem(
  res: { status: number; headers: http.IncomingHttpHeaders; text: string },
  status: number,
  kind: string,
) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(res.text) as Record<string, unknown>;
  expect(body).toMatchObject({
    type: `urn:breakwater:problem:admin-${kind}`,
    title: expect.any(String),
    status,
    detail: expect.any(String),
  });
  return body;
}

describe('admin API', () => {
  let up: TestUpstream;
  let bw: Running;
  let file: string;
  const yaml = (upstreamUrl: string) => `
listeners:
  - name: main
    port: 0
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app:
    endpoints: ["${upstreamUrl}"]
    retry: { enabled: false }
    circuit_breaker: { failure_threshold: 3, reset_timeout: 30s, failure_rate_threshold: 90%, minimum_calls: 50 }
  plain: { endpoints: ["http://127.0.0.1:1"] }
`;
  beforeAll(async () => {
    up = await startUpstream((_req, res) => res.end('ok'));
    file = join(mkdtempSync(join(tmpdir(), 'bw-admin-api-')), 'breakwater.yaml');
    writeFileSync(file, yaml(up.url));
    bw = await startBreakwater(yaml(up.url), { file });
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it("accepts a JSON body with curl's default content type (application/x-www-form-urlencoded)", async () => {
    const res = await raw(`${bw.adminUrl}/upstreams/app/breaker`, 'POST', '{"mode":"open"}', CURL_FORM);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ ok: true, state: 'forced_open' });
    expect(bw.bw.policies.get('app')?.breaker?.state).toBe('forced_open');
    const back = await raw(`${bw.adminUrl}/upstreams/app/breaker`, 'POST', '{"mode":"auto"}', {
      'content-type': 'text/plain',
    });
    expect(back.status).toBe(200);
    expect(bw.bw.policies.get('app')?.breaker?.state).toBe('closed');
    // No content type at all.
    const bare = await raw(`${bw.adminUrl}/upstreams/app/breaker`, 'POST', '{"mode":"close"}');
    expect(bare.status).toBe(200);
    expect(JSON.parse(bare.text)).toEqual({ ok: true, state: 'forced_closed' });
    await raw(`${bw.adminUrl}/upstreams/app/breaker?mode=auto`, 'POST', undefined);
    expect(bw.bw.policies.get('app')?.breaker?.state).toBe('closed');
  });

  it.runIf(CURL)('works with curl itself: -d forces the breaker, an unknown upstream is 404', async () => {
    const curl = (path: string, data: string) =>
      run(CURL as string, ['-s', '-X', 'POST', `${bw.adminUrl}${path}`, '-d', data, '-w', '\n%{http_code}']);
    const forced = await curl('/upstreams/app/breaker', '{"mode":"open"}');
    const [body, code] = forced.stdout.split('\n');
    expect(code).toBe('200');
    expect(JSON.parse(body as string)).toEqual({ ok: true, state: 'forced_open' });
    const ghost = await curl('/upstreams/ghost/breaker', '{"mode":"open"}');
    const [ghostBody, ghostCode] = ghost.stdout.split('\n');
    expect(ghostCode).toBe('404');
    expect(JSON.parse(ghostBody as string)).toMatchObject({
      type: 'urn:breakwater:problem:admin-unknown-upstream',
      status: 404,
    });
    await curl('/upstreams/app/breaker', '{"mode":"auto"}');
    expect(bw.bw.policies.get('app')?.breaker?.state).toBe('closed');
  });

  it('answers every admin error as application/problem+json in one shape', async () => {
    const base = bw.adminUrl;
    const ghost = expectProblem(
      await raw(`${base}/upstreams/ghost/breaker`, 'POST', '{"mode":"open"}', CURL_FORM),
      404,
      'unknown-upstream',
    );
    expect(ghost.detail).toMatch(/ghost/);
    expectProblem(
      await raw(`${base}/upstreams/app/breaker`, 'POST', 'mode=open', CURL_FORM),
      400,
      'bad-request',
    );
    expectProblem(
      await raw(`${base}/upstreams/app/breaker`, 'POST', '{"mode":', { 'content-type': 'application/json' }),
      400,
      'bad-request',
    );
    expectProblem(
      await raw(`${base}/upstreams/app/breaker`, 'POST', '{"mode":"sideways"}', CURL_FORM),
      400,
      'bad-request',
    );
    expectProblem(
      await raw(`${base}/upstreams/plain/breaker`, 'POST', '{"mode":"open"}', CURL_FORM),
      409,
      'no-circuit-breaker',
    );
    expectProblem(await raw(`${base}/no/such/thing`, 'GET', undefined), 404, 'not-found');
    expectProblem(await raw(`${base}/state`, 'DELETE', undefined), 404, 'not-found');
    expectProblem(
      await raw(`${base}/upstreams/app/breaker`, 'POST', `{"mode":"open","pad":"${'x'.repeat(100_000)}"}`, {
        'content-type': 'application/json',
      }),
      413,
      'payload-too-large',
    );
    // A rejected reload is a problem too, with the reload status as extension members.
    writeFileSync(file, yaml(up.url).replace('upstream: app', 'upstream: nowhere'));
    try {
      const reload = expectProblem(
        await raw(`${base}/config/reload`, 'POST', undefined),
        422,
        'config-invalid',
      );
      expect(reload).toMatchObject({
        ok: false,
        problems: [expect.objectContaining({ key: 'listeners[0].routes[0].upstream' })],
      });
    } finally {
      writeFileSync(file, yaml(up.url));
    }
    expect((await raw(`${base}/config/reload`, 'POST', undefined)).status).toBe(200);
  });

  it('a forced-open breaker answers no Retry-After, and /state shows no time to a probe', async () => {
    await raw(`${bw.adminUrl}/upstreams/app/breaker`, 'POST', '{"mode":"open"}', CURL_FORM);
    try {
      const res = await request(`${bw.url()}/x`);
      const body = (await res.body.json()) as { type: string };
      expect(res.statusCode).toBe(503);
      expect(body.type).toBe('urn:breakwater:problem:circuit-open');
      expect(res.headers['retry-after']).toBeUndefined();
      const state = (await (await request(`${bw.adminUrl}/state`)).body.json()) as {
        upstreams: Record<string, { breaker: Record<string, unknown> | null }>;
      };
      expect(state.upstreams.app?.breaker).toMatchObject({
        state: 'forced_open',
        forced: true,
        retry_after_ms: null,
      });
    } finally {
      await raw(`${bw.adminUrl}/upstreams/app/breaker`, 'POST', '{"mode":"auto"}', CURL_FORM);
    }
  });

  it('an open breaker still answers Retry-After and /state its retry_after_ms', async () => {
    let failing = true;
    const flaky = await startUpstream((_req, res) => {
      res.statusCode = failing ? 500 : 200;
      res.end();
    });
    const other = await startBreakwater(yaml(flaky.url));
    try {
      for (let i = 0; i < 3; i++) await (await request(`${other.url()}/x`)).body.dump();
      const res = await request(`${other.url()}/x`);
      await res.body.dump();
      expect(res.statusCode).toBe(503);
      expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(30);
      const state = (await (await request(`${other.adminUrl}/state`)).body.json()) as {
        upstreams: Record<string, { breaker: { retry_after_ms: number; forced: boolean } }>;
      };
      expect(state.upstreams.app?.breaker.forced).toBe(false);
      expect(state.upstreams.app?.breaker.retry_after_ms).toBeGreaterThan(0);
      expect(state.upstreams.app?.breaker.retry_after_ms).toBeLessThanOrEqual(30_000);
      failing = false;
    } finally {
      await other.stop();
      await flaky.close();
    }
  });

  it('GET /state uses snake_case keys everywhere', async () => {
    await (await request(`${bw.url()}/x`)).body.dump();
    const state = (await (await request(`${bw.adminUrl}/state`)).body.json()) as {
      upstreams: Record<string, unknown>;
    };
    const bad: string[] = [];
    const walk = (v: unknown, at: string) => {
      if (Array.isArray(v)) {
        for (const [i, x] of v.entries()) walk(x, `${at}[${i}]`);
      } else if (v && typeof v === 'object')
        for (const [k, x] of Object.entries(v)) {
          // The children of `upstreams` are upstream names from the config, not keys.
          if (at !== 'upstreams' && !/^[a-z0-9]+(_[a-z0-9]+)*$/.test(k)) bad.push(`${at}.${k}`);
          walk(x, at ? `${at}.${k}` : k);
        }
    };
    walk(state, '');
    expect(bad).toEqual([]);
    expect(state.upstreams.app).toMatchObject({
      breaker: { consecutive_failures: 0, calls: expect.any(Number), failure_rate: 0, slow_rate: 0 },
    });
  });
});
