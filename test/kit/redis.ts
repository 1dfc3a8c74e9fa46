/**
 * A real redis-server (Debian's package) for tests: started on a free loopback port with a temp dir
 * and no persistence, stopped by its PID. Tests that need it use `describe.skipIf(!redisTool.available)`:
 * the lookup is test/kit/tools.ts's, so without redis-server they skip with its one-line reason, and
 * under BREAKWATER_REQUIRE_TOOLS=1 (CI) the missing program fails the test file instead.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './process.js';
import { requireTool } from './tools.js';

export const redisTool = requireTool('redis-server', 'redis-server');

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  readonly pid: number | undefined;
  /** Stops the server (SIGKILL by default: an outage, not a shutdown). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port (empty: no persistence). */
  restart(): Promise<void>;
  /** SIGSTOP: the server hangs, connections stay open (a stalled Redis, not a dead one). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Whether the server process is running (paused counts as running). */
  readonly running: boolean;
}

/** Resolves when `port` answers PING with PONG, or rejects after `timeoutMs`. */
export async function waitForRedis(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      const done = (v: boolean) => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(500, () => done(false));
      s.on('error', () => done(false));
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d: Buffer) => done(d.toString('latin1').startsWith('+PONG')));
    });
    if (ok) return;
    if (Date.now() > end)
      throw new Error(`redis-server on 127.0.0.1:${port} did not answer within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startRedis(): Promise<RedisServer> {
  const bin = redisTool.path;
  if (bin === undefined) throw new Error(redisTool.reason);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bw-redis-'));
  let proc: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const launch = async () => {
    const p = spawn(
      bin,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    proc = p;
    exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    await waitForRedis(port);
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return proc?.pid;
    },
    async stop(signal: NodeJS.Signals = 'SIGKILL') {
      const p = proc;
      if (p?.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
      process.kill(p.pid, 'SIGCONT');
      process.kill(p.pid, signal);
      await exited;
    },
    restart: launch,
    get running() {
      return proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    },
    pause() {
      if (proc?.pid !== undefined && proc.exitCode === null) process.kill(proc.pid, 'SIGSTOP');
    },
    resume() {
      if (proc?.pid !== undefined && proc.exitCode === null) process.kill(proc.pid, 'SIGCONT');
    },
  };
}
