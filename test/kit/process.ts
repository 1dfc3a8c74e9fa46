/**
 * breakwater as users run it: `node dist/cli.js --config FILE` in a child process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CLI = join(import.meta.dirname, '../../dist/cli.js');

/** Ports freePort() handed out in this process: none is handed out twice. */
const handedOut = new Set<number>();

/**
 * A port free on 127.0.0.1 now, never one this process was given before: the kernel may give the
 * same ephemeral port to two listen(0) calls in a row once the first is closed, and a test that
 * asks for two ports (a listener and the admin, two listeners) then gets one port twice.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

export interface Child {
  readonly proc: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
  /** Peak resident memory (VmHWM) of the process in bytes, from /proc. */
  peakRss(): Promise<number>;
  kill(signal?: NodeJS.Signals): void;
}

export function spawnBreakwater(yaml: string, env: Record<string, string> = {}): Child {
  const dir = mkdtempSync(join(tmpdir(), 'bw-proc-'));
  const file = join(dir, 'breakwater.yaml');
  writeFileSync(file, yaml);
  const proc = spawn(process.execPath, [CLI, '--config', file], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => stdout.push(...d.split('\n').filter(Boolean)));
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return {
    proc,
    stdout,
    stderr,
    exited,
    async peakRss() {
      const { readFile } = await import('node:fs/promises');
      const status = await readFile(`/proc/${proc.pid}/status`, 'utf8');
      const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
      return kb * 1024;
    },
    kill(signal = 'SIGTERM') {
      if (proc.exitCode === null) proc.kill(signal);
    },
  };
}

/** Polls `url` until it answers with `status` (default 200), within `timeoutMs`. */
export async function waitFor(url: string, status = 200, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === status) return;
    } catch {
      // not up yet
    }
    if (Date.now() > end) throw new Error(`${url} did not answer ${status} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
