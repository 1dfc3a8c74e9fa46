import { spawn } from 'node:child_process';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, simpleConfig, startBreakwater } from '../kit/breakwater.js';
import { freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { requireTool } from '../kit/tools.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const promtool = requireTool('promtool', 'prometheus');

function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(promtool.path ?? 'promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    p.stdout.on('data', (d) => {
      output += d;
    });
    p.stderr.on('data', (d) => {
      output += d;
    });
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code, output }));
    p.stdin.end(text);
  });
}

describe('admin listener', () => {
  let up: TestUpstream;
  let bw: Running;
  beforeAll(async () => {
    up = await startUpstream();
    bw = await startBreakwater(
      simpleConfig(up.url).replace(
        'logging:\n  level: info',
        'logging:\n  level: info\n  access_log_headers: [user-agent, authorization, cookie]',
      ),
    );
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  it('GET /health/live answers 200 even when the upstream is down', async () => {
    const down = await startBreakwater(simpleConfig('http://127.0.0.1:1'));
    try {
      const res = await request(`${down.adminUrl}/health/live`);
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toEqual({ status: 'alive' });
    } finally {
      await down.stop();
    }
  });

  it('GET /health/ready is 200 while serving and 503 once shutdown begins', async () => {
    const other = await startBreakwater(simpleConfig(up.url));
    const ready = await request(`${other.adminUrl}/health/ready`);
    expect(ready.statusCode).toBe(200);
    await ready.body.dump();
    expect(other.bw.readiness()).toEqual({ ready: true, reason: 'config loaded, listeners bound' });
    const stopping = other.bw.stop(200);
    expect(other.bw.readiness().ready).toBe(false);
    await stopping;
  });

  it('GET /metrics exposes the request counter and duration histogram after traffic', async () => {
    for (let i = 0; i < 5; i++) await (await request(`${bw.url()}/m`)).body.dump();
    await (await request(`${bw.url()}/m`, { method: 'BREW' })).body.dump().catch(() => undefined);
    const res = await request(`${bw.adminUrl}/metrics`);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0.0.4/);
    const text = await res.body.text();
    expect(text).toMatch(
      /breakwater_requests_total\{listener="main",route="all",upstream="app",method="GET",code="200"\} 5\n/,
    );
    // Every request of the route is in the histogram once: its count and +Inf bucket are the
    // route's request total, and no bucket holds more.
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? Number.NaN);
    const requests = [
      ...text.matchAll(
        /^breakwater_requests_total\{listener="main",route="all",upstream="app",[^}]*\} (\d+)$/gm,
      ),
    ].reduce((n, m) => n + Number(m[1]), 0);
    expect(requests).toBeGreaterThanOrEqual(5);
    const series = 'listener="main",route="all",upstream="app"';
    expect(value(new RegExp(`^breakwater_request_duration_seconds_count\\{${series}\\} (\\d+)$`, 'm'))).toBe(
      requests,
    );
    expect(
      value(
        new RegExp(`^breakwater_request_duration_seconds_bucket\\{le="\\+Inf",${series}\\} (\\d+)$`, 'm'),
      ),
    ).toBe(requests);
    expect(
      value(new RegExp(`^breakwater_request_duration_seconds_bucket\\{le="0.1",${series}\\} (\\d+)$`, 'm')),
    ).toBeLessThanOrEqual(requests);
  });

  it.skipIf(!promtool.available)(
    'passes promtool check metrics on a scrape of the running CLI taken under load',
    async () => {
      const [port, admin] = [await freePort(), await freePort()];
      const child = spawnBreakwater(
        `listeners: [{ name: main, port: ${port}, routes: [{ upstream: app }] }]\nadmin: { port: ${admin} }\nupstreams: { app: { endpoints: ["${up.url}"] } }\nlogging: { access_log: false }\n`,
      );
      try {
        await waitFor(`http://127.0.0.1:${admin}/health/ready`);
        const load = Array.from({ length: 300 }, (_, i) =>
          request(`http://127.0.0.1:${port}/load/${i}`, {
            method: i % 3 ? 'GET' : 'POST',
            body: i % 3 ? null : 'x',
          }).then((r) => r.body.dump()),
        );
        const scrape = await (await request(`http://127.0.0.1:${admin}/metrics`)).body.text();
        await Promise.all(load);
        expect(scrape).toMatch(/breakwater_process_resident_memory_bytes [1-9]\d*\n/);
        expect(scrape).toMatch(/breakwater_requests_in_flight\{listener="main"\}/);
        const result = await promtoolCheck(scrape);
        expect(result.output).toBe('');
        expect(result.code).toBe(0);
      } finally {
        child.kill('SIGKILL');
      }
    },
  );

  it('writes one access-log line per request with the documented fields, secrets redacted', async () => {
    const res = await request(`${bw.url()}/logged?q=secret-token`, {
      headers: {
        authorization: 'Bearer abc',
        cookie: 'session=1',
        'user-agent': 'test-agent',
        'x-request-id': 'log-1',
      },
    });
    await res.body.dump();
    await new Promise((r) => setTimeout(r, 20));
    const lines = bw.logs.filter((l) => l.request_id === 'log-1');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      msg: 'request',
      listener: 'main',
      route: 'all',
      upstream: 'app',
      method: 'GET',
      path: '/logged',
      status: 200,
      duration_ms: expect.any(Number),
      bytes_out: 0,
      complete: true,
      headers: { authorization: '[REDACTED]', cookie: '[REDACTED]', 'user-agent': 'test-agent' },
    });
    expect(JSON.stringify(lines[0])).not.toMatch(/secret-token|Bearer abc|session=1/);
  });
});
