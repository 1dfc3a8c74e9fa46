import { mkdirSync, mkdtempSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { isLoopback } from '../../src/admin/auth.js';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort, spawnBreakwater, waitFor } from '../kit/process.js';
import { sleep, until } from '../kit/until.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

/** A non-loopback IPv4 address of this machine, for a client that is not on loopback. */
const ownAddress = Object.values(networkInterfaces())
  .flat()
  .find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)?.address;
if (ownAddress === undefined)
  process.stderr.write('skipped: the admin auth test needs a non-loopback IPv4 address on this machine\n');

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function named(name: string): Promise<TestUpstream> {
  const up = await startUpstream((_req, res) => res.end(name));
  cleanup.push(() => up.close());
  return up;
}

const config = (port: number, endpoint: string, extra = '') => `
listeners:
  - name: main
    port: ${port}
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${endpoint}"] ${extra} }
  other: { endpoints: ["http://127.0.0.1:1"] }
`;

async function startWithFile(yaml: string): Promise<{ bw: Running; file: string }> {
  const file = join(mkdtempSync(join(tmpdir(), 'bw-ops-')), 'breakwater.yaml');
  writeFileSync(file, yaml);
  const bw = await startBreakwater(yaml, { file });
  cleanup.push(() => bw.stop());
  return { bw, file };
}

async function json(url: string, init: Parameters<typeof request>[1] = {}) {
  const res = await request(url, init);
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

describe('hot reload', () => {
  it('a reload under load fails no request, and new requests go where the new config says', async () => {
    const a = await named('A');
    const b = await named('B');
    const port = await freePort();
    const { bw, file } = await startWithFile(config(port, a.url));
    const statuses = new Map<number, number>();
    const bodies = new Set<string>();
    const stopAt = performance.now() + 1500;
    const worker = async () => {
      while (performance.now() < stopAt) {
        const res = await request(`http://127.0.0.1:${port}/x`);
        bodies.add(await res.body.text());
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
      }
    };
    const load = Promise.all(Array.from({ length: 20 }, worker));
    await new Promise((r) => setTimeout(r, 500));
    writeFileSync(file, config(port, b.url));
    const status = await bw.bw.reload('test');
    expect(status.ok).toBe(true);
    await load;
    expect([...statuses.keys()]).toEqual([200]);
    expect(bodies).toEqual(new Set(['A', 'B']));
    expect(await (await request(`http://127.0.0.1:${port}/after`)).body.text()).toBe('B');
  });

  it('an invalid config changes nothing: the last good one serves, the error is visible and counted', async () => {
    const a = await named('A');
    const port = await freePort();
    const { bw, file } = await startWithFile(config(port, a.url));
    const hash = bw.bw.configHash;
    writeFileSync(
      file,
      config(port, a.url).replace('routes: [{ upstream: app }]', 'routes: [{ upstream: nowhere }]'),
    );
    const reload = await json(`${bw.adminUrl}/config/reload`, { method: 'POST' });
    expect(reload.status).toBe(422);
    const status = await json(`${bw.adminUrl}/config/status`);
    expect(status.body.hash).toBe(hash);
    expect(status.body.last_reload).toMatchObject({
      ok: false,
      problems: [expect.objectContaining({ line: 5, column: 26, key: 'listeners[0].routes[0].upstream' })],
    });
    expect(await (await request(`http://127.0.0.1:${port}/still`)).body.text()).toBe('A');
    const metrics = await (await request(`${bw.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(/breakwater_config_reloads_total\{result="failure"\} 1/);
    expect(metrics).toMatch(new RegExp(`breakwater_config_info\\{hash="${hash}"\\} 1`));
    expect(bw.logs.some((l) => l.event === 'config_reload' && l.result === 'failure')).toBe(true);
  });

  it('rebinds a listener whose port changed; the other listener keeps its socket and serves throughout', async () => {
    const a = await named('A');
    const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
    const two = (second: number) => `
listeners:
  - { name: one, port: ${p1}, routes: [{ upstream: app }] }
  - { name: two, port: ${second}, routes: [{ upstream: app }] }
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${a.url}"] }
`;
    const { bw, file } = await startWithFile(two(p2));
    // Traffic on listener one flows before, during and after the reload over kept-alive
    // connections; the client counts every connection it opens or loses.
    const { Agent } = await import('undici');
    const keepAlive = new Agent({ connections: 2 });
    cleanup.push(() => keepAlive.close());
    const conns = { opened: 0, lost: 0 };
    keepAlive.on('connect', () => conns.opened++);
    keepAlive.on('disconnect', () => conns.lost++);
    const answers: string[] = [];
    let stop = false;
    const stopAt = performance.now() + 20_000;
    const worker = async () => {
      for (let i = 0; i < 5000 && !stop && performance.now() < stopAt; i++) {
        const res = await request(`http://127.0.0.1:${p1}/x`, { dispatcher: keepAlive }).catch(
          (e: { code?: string }) => ({ statusCode: e.code ?? 'error', body: undefined }),
        );
        answers.push(`${res.statusCode} ${res.body ? await res.body.text() : ''}`);
      }
    };
    const load = Promise.all([worker(), worker()]);
    await until(() => answers.length >= 20, 'traffic before the reload', 10_000);
    const openedBefore = conns.opened;
    writeFileSync(file, two(p3));
    expect((await bw.bw.reload('test')).ok).toBe(true);
    const atReload = answers.length;
    await until(() => answers.length >= atReload + 20, 'traffic after the reload', 10_000);
    stop = true;
    await load;
    // Every answer a 200 from the upstream, on the connections opened before the reload: none
    // was lost, none had to be opened again.
    expect(new Set(answers)).toEqual(new Set(['200 A']));
    expect({ opened: conns.opened, lost: conns.lost }).toEqual({ opened: openedBefore, lost: 0 });
    expect(openedBefore).toBeLessThanOrEqual(2);
    expect(await (await request(`http://127.0.0.1:${p3}/x`)).body.text()).toBe('A');
    await sleep(100);
    const old = await request(`http://127.0.0.1:${p2}/x`).then(
      () => 'open',
      (e: { code?: string }) => e.code,
    );
    expect(old).toBe('ECONNREFUSED');
  });

  it('keeps the breaker state of an upstream whose settings did not change', async () => {
    const port = await freePort();
    const failing = await startUpstream((_req, res) => {
      res.statusCode = 500;
      res.end();
    });
    cleanup.push(() => failing.close());
    const breaker =
      ', retry: { enabled: false }, circuit_breaker: { failure_threshold: 2, reset_timeout: 1m }';
    const { bw, file } = await startWithFile(config(port, failing.url, breaker));
    for (let i = 0; i < 2; i++) await (await request(`http://127.0.0.1:${port}/f`)).body.dump();
    expect((await json(`${bw.adminUrl}/state`)).body).toMatchObject({
      upstreams: { app: { breaker: { state: 'open' } } },
    });
    writeFileSync(file, `${config(port, failing.url, breaker)}\nlogging: { level: warn }\n`);
    expect((await bw.bw.reload('test')).ok).toBe(true);
    expect((await json(`${bw.adminUrl}/state`)).body).toMatchObject({
      upstreams: { app: { breaker: { state: 'open' } } },
    });
    expect((await request(`http://127.0.0.1:${port}/f`)).statusCode).toBe(503);
  });

  it('SIGHUP reloads the running CLI', async () => {
    const a = await named('A');
    const b = await named('B');
    const [port, admin] = [await freePort(), await freePort()];
    const dir = mkdtempSync(join(tmpdir(), 'bw-hup-'));
    const yaml = (u: string) => config(port, u).replace('admin: { port: 0 }', `admin: { port: ${admin} }`);
    const child = spawnBreakwater(yaml(a.url));
    cleanup.push(async () => child.kill('SIGKILL'));
    await waitFor(`http://127.0.0.1:${admin}/health/ready`);
    const status = (await json(`http://127.0.0.1:${admin}/config/status`)).body;
    writeFileSync(String(status.file), yaml(b.url));
    child.kill('SIGHUP');
    const end = Date.now() + 5000;
    let body = '';
    while (Date.now() < end && body !== 'B') {
      body = await (await request(`http://127.0.0.1:${port}/x`)).body.text();
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(body).toBe('B');
    void dir;
  });

  it('follows a Kubernetes ConfigMap update (the ..data symlink swapped in the directory)', async () => {
    const a = await named('A');
    const b = await named('B');
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'bw-cm-'));
    mkdirSync(join(dir, '..2026_11_27_a'));
    writeFileSync(join(dir, '..2026_11_27_a', 'breakwater.yaml'), config(port, a.url));
    symlinkSync('..2026_11_27_a', join(dir, '..data'));
    symlinkSync('..data/breakwater.yaml', join(dir, 'breakwater.yaml'));
    const file = join(dir, 'breakwater.yaml');
    const bw = await startBreakwater(readFileSync(file, 'utf8'), { file });
    cleanup.push(() => bw.stop());
    bw.bw.watchConfig(100);
    expect(await (await request(`http://127.0.0.1:${port}/x`)).body.text()).toBe('A');
    // What the kubelet does: write a new timestamped dir, point a temp link at it, rename over ..data.
    mkdirSync(join(dir, '..2026_11_27_b'));
    writeFileSync(join(dir, '..2026_11_27_b', 'breakwater.yaml'), config(port, b.url));
    symlinkSync('..2026_11_27_b', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    const end = Date.now() + 5000;
    let body = '';
    while (Date.now() < end && body !== 'B') {
      await new Promise((r) => setTimeout(r, 100));
      body = await (await request(`http://127.0.0.1:${port}/x`)).body.text();
    }
    expect(body).toBe('B');
    expect(bw.logs.some((l) => l.event === 'config_reload' && l.trigger === 'file change')).toBe(true);
  });
});

describe('admin API', () => {
  it('GET /config shows the effective config with every default filled in', async () => {
    const a = await named('A');
    const { bw } = await startWithFile(config(0, a.url));
    const body = (await json(`${bw.adminUrl}/config`)).body as {
      config: { upstreams: { app: { timeouts: unknown; retry: unknown } } };
    };
    expect(body.config.upstreams.app.timeouts).toEqual({
      attempt: 5000,
      request: 15000,
      connect: 2000,
      body: 30000,
    });
    expect(body.config.upstreams.app.retry).toMatchObject({ maxAttempts: 3 });
  });

  it('forces a breaker open and back to automatic; GET /state shows it', async () => {
    const a = await named('A');
    const port = await freePort();
    const { bw } = await startWithFile(config(port, a.url, ', circuit_breaker: {}'));
    const forced = await json(`${bw.adminUrl}/upstreams/app/breaker`, {
      method: 'POST',
      body: JSON.stringify({ mode: 'open' }),
      headers: { 'content-type': 'application/json' },
    });
    expect(forced).toEqual({ status: 200, body: { ok: true, state: 'forced_open' } });
    expect((await request(`http://127.0.0.1:${port}/x`)).statusCode).toBe(503);
    const state = (await json(`${bw.adminUrl}/state`)).body as {
      upstreams: { app: { breaker: { state: string; recent_transitions: unknown[] } } };
    };
    expect(state.upstreams.app.breaker.state).toBe('forced_open');
    expect(state.upstreams.app.breaker.recent_transitions).toEqual([
      expect.objectContaining({ from: 'closed', to: 'forced_open', reason: 'forced by operator' }),
    ]);
    await json(`${bw.adminUrl}/upstreams/app/breaker?mode=auto`, { method: 'POST' });
    expect(await (await request(`http://127.0.0.1:${port}/x`)).body.text()).toBe('A');
    expect((await json(`${bw.adminUrl}/upstreams/other/breaker?mode=open`, { method: 'POST' })).status).toBe(
      409,
    );
    expect((await json(`${bw.adminUrl}/upstreams/ghost/breaker?mode=open`, { method: 'POST' })).status).toBe(
      404,
    );
  });

  it.skipIf(ownAddress === undefined)(
    'refuses mutating calls from outside loopback without the bearer token (a real socket from a non-loopback address)',
    async () => {
      expect(isLoopback('127.0.0.1')).toBe(true);
      expect(isLoopback('::ffff:127.0.0.1')).toBe(true);
      expect(isLoopback('10.0.0.5')).toBe(false);
      const a = await named('A');
      const yaml = config(0, a.url, ', circuit_breaker: {}');
      const file = join(mkdtempSync(join(tmpdir(), 'bw-auth-')), 'breakwater.yaml');
      writeFileSync(file, yaml);
      process.env.BREAKWATER_ADMIN_TOKEN = 's3cret-token';
      const bw = await startBreakwater(yaml, { file });
      delete process.env.BREAKWATER_ADMIN_TOKEN;
      cleanup.push(() => bw.stop());
      // A client whose connection comes from the machine's own non-loopback address: the admin
      // listener (on 127.0.0.1) sees a peer that is not loopback. No packet leaves the machine.
      const { Agent } = await import('undici');
      const remote = new Agent({ localAddress: ownAddress });
      cleanup.push(() => remote.close());
      const call = async (path: string, method: 'GET' | 'POST', authorization?: string) => {
        const res = await request(`${bw.adminUrl}${path}`, {
          method,
          dispatcher: remote,
          headers: authorization === undefined ? {} : { authorization },
        });
        const text = await res.body.text();
        return { status: res.statusCode, type: res.statusCode === 403 ? JSON.parse(text).type : undefined };
      };
      const forbidden = { status: 403, type: 'urn:breakwater:problem:admin-forbidden' };
      expect(await call('/upstreams/app/breaker?mode=open', 'POST')).toEqual(forbidden);
      expect(await call('/upstreams/app/breaker?mode=open', 'POST', 'Bearer wrong')).toEqual(forbidden);
      expect(await call('/upstreams/app/breaker?mode=open', 'POST', 's3cret-token')).toEqual(forbidden);
      const breaker = async () =>
        ((await json(`${bw.adminUrl}/state`)).body as { upstreams: { app: { breaker: { state: string } } } })
          .upstreams.app.breaker.state;
      expect(await breaker()).toBe('closed');
      expect(await call('/upstreams/app/breaker?mode=open', 'POST', 'Bearer s3cret-token')).toEqual({
        status: 200,
        type: undefined,
      });
      expect(await breaker()).toBe('forced_open');
      // Reads are open to whoever reaches the port; loopback needs no token.
      expect(await call('/state', 'GET')).toEqual({ status: 200, type: undefined });
      expect((await json(`${bw.adminUrl}/upstreams/app/breaker?mode=auto`, { method: 'POST' })).status).toBe(
        200,
      );
      expect(await breaker()).toBe('closed');
    },
  );
});
