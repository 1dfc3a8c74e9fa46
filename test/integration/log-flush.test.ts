/**
 * Logs written to a file (stdout redirected, as a container runtime or `> breakwater.log` does)
 * show up while breakwater runs: a state change at once, anything else within about a second,
 * and nothing is lost at exit; the same with stdout to a pipe that a reader drains.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, freePort, waitFor } from '../kit/process.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function lines(file: string): Record<string, unknown>[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Polls the log file until a line matches, for at most `withinMs`; the line, or undefined. */
async function lineWithin(
  file: string,
  match: (l: Record<string, unknown>) => boolean,
  withinMs: number,
): Promise<Record<string, unknown> | undefined> {
  const end = performance.now() + withinMs;
  for (;;) {
    const found = lines(file).find(match);
    if (found || performance.now() > end) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function start(
  up: TestUpstream,
): Promise<{ proc: ChildProcess; log: string; port: number; admin: string }> {
  const [port, adminPort] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'bw-log-'));
  const config = join(dir, 'breakwater.yaml');
  writeFileSync(
    config,
    `listeners: [{ name: main, port: ${port}, routes: [{ upstream: app }] }]
admin: { port: ${adminPort} }
upstreams:
  app: { endpoints: ["${up.url}"], circuit_breaker: { failure_threshold: 5 } }
`,
  );
  const log = join(dir, 'out.log');
  const fd = openSync(log, 'w');
  const proc = spawn(process.execPath, [CLI, '--config', config, '--no-watch'], {
    stdio: ['ignore', fd, 'ignore'],
  });
  closeSync(fd);
  const exited = new Promise<void>((resolve) => proc.on('exit', () => resolve()));
  cleanup.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  });
  const admin = `http://127.0.0.1:${adminPort}`;
  await waitFor(`${admin}/health/ready`);
  return { proc, log, port, admin };
}

describe('logs to a file', () => {
  it('"breakwater ready" is in the file at once, and an access line within about a second', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    cleanup.push(() => up.close());
    const bw = await start(up);
    // Readiness answered: the ready line was logged before it; it must be written already.
    expect(await lineWithin(bw.log, (l) => l.msg === 'breakwater ready', 500)).toMatchObject({
      event: 'ready',
      level: 'info',
    });
    await (
      await request(`http://127.0.0.1:${bw.port}/one`, { headers: { 'x-request-id': 'flush-1' } })
    ).body.dump();
    // An access line is buffered, and flushed within the second (the bound leaves room for a busy machine).
    expect(await lineWithin(bw.log, (l) => l.request_id === 'flush-1', 2000)).toMatchObject({
      msg: 'request',
      status: 200,
    });
  });

  it('a breaker transition and a reload are written at once', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    cleanup.push(() => up.close());
    const bw = await start(up);
    await (
      await request(`${bw.admin}/upstreams/app/breaker`, { method: 'POST', body: '{"mode":"open"}' })
    ).body.dump();
    expect(
      await lineWithin(
        bw.log,
        (l) => l.event === 'circuit_breaker_transition' && l.to === 'forced_open',
        1500,
      ),
    ).toMatchObject({ upstream: 'app', from: 'closed', reason: 'forced by operator' });
    await (
      await request(`${bw.admin}/upstreams/app/breaker`, { method: 'POST', body: '{"mode":"auto"}' })
    ).body.dump();
    // An info-level state change (forced_open -> closed) too.
    expect(
      await lineWithin(bw.log, (l) => l.event === 'circuit_breaker_transition' && l.to === 'closed', 1500),
    ).toMatchObject({ level: 'info' });
    await (await request(`${bw.admin}/config/reload`, { method: 'POST' })).body.dump();
    expect(await lineWithin(bw.log, (l) => l.event === 'config_reload', 1500)).toMatchObject({
      result: 'success',
    });
  });

  it('loses no line at exit: every access line is in the file after SIGTERM', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    cleanup.push(() => up.close());
    const bw = await start(up);
    const n = 200;
    for (let i = 0; i < n; i += 20)
      await Promise.all(
        Array.from({ length: 20 }, (_, j) =>
          request(`http://127.0.0.1:${bw.port}/x`, { headers: { 'x-request-id': `exit-${i + j}` } }).then(
            (r) => r.body.dump(),
          ),
        ),
      );
    const exited = new Promise<number | null>((resolve) => bw.proc.on('exit', (code) => resolve(code)));
    bw.proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    const all = lines(bw.log);
    const ids = new Set(all.filter((l) => String(l.request_id).startsWith('exit-')).map((l) => l.request_id));
    expect(ids.size).toBe(n);
    expect(all.at(-1)).toMatchObject({ msg: 'shutdown: done' });
  });
});

describe('logs to a pipe', () => {
  it('loses no line at exit: N requests, then SIGTERM, then N access lines read from the pipe', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    cleanup.push(() => up.close());
    const [port, adminPort] = [await freePort(), await freePort()];
    const dir = mkdtempSync(join(tmpdir(), 'bw-log-pipe-'));
    const config = join(dir, 'breakwater.yaml');
    writeFileSync(
      config,
      `listeners: [{ name: main, port: ${port}, routes: [{ upstream: app }] }]
admin: { port: ${adminPort} }
upstreams:
  app: { endpoints: ["${up.url}"] }
`,
    );
    // stdout is a pipe that this process reads as it comes, as a container runtime does.
    const proc = spawn(process.execPath, [CLI, '--config', config, '--no-watch'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let out = '';
    proc.stdout?.setEncoding('utf8');
    proc.stdout?.on('data', (chunk: string) => {
      out += chunk;
    });
    const ended = new Promise<void>((resolve) => proc.stdout?.on('end', () => resolve()));
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    cleanup.push(async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    });
    await waitFor(`http://127.0.0.1:${adminPort}/health/ready`);
    const n = 500;
    for (let i = 0; i < n; i += 50)
      await Promise.all(
        Array.from({ length: 50 }, (_, j) =>
          request(`http://127.0.0.1:${port}/x`, { headers: { 'x-request-id': `pipe-${i + j}` } }).then((r) =>
            r.body.dump(),
          ),
        ),
      );
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    await ended;
    const all = out
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const ids = new Set(all.filter((l) => String(l.request_id).startsWith('pipe-')).map((l) => l.request_id));
    expect(ids.size).toBe(n);
    expect(all.at(-1)).toMatchObject({ msg: 'shutdown: done' });
  });
});
