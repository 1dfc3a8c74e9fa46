/**
 * A real redis-server (Debian's package) for tests: started on a free loopback port with a temp dir
 * and no persistence, stopped by its PID. Tests that need it use
 * `describe.skipIf(redisSkip)(...)`: without redis-server they skip with a printed reason, unless
 * BREAKWATER_REQUIRE_TOOLS=1 (CI), where the missing tool fails them instead.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from './process.js';

function findOnPath(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/local/bin']) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export const REDIS_SERVER = findOnPath('redis-server');

/** True when the Redis tests must skip (redis-server missing and not required); the reason is printed once. */
export const redisSkip: boolean = (() => {
  if (REDIS_SERVER) return false;
  if (process.env.BREAKWATER_REQUIRE_TOOLS === '1') return false; // run, and fail in startRedis
  console.warn('skipping Redis tests: redis-server is not installed (apt-get install redis-server)');
  return true;
})();

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
  if (!REDIS_SERVER)
    throw new Error(
      'redis-server is not installed and BREAKWATER_REQUIRE_TOOLS=1 requires it (apt-get install redis-server)',
    );
  const bin = REDIS_SERVER;
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
