/**
 * What the bench scripts (run.mjs, attack.mjs) share: child processes started and stopped by their
 * PID, temp directories, free ports on 127.0.0.1, readiness polling, and a child's CPU time and
 * memory from /proc. Every child registered here is killed (SIGKILL) and every temp dir removed
 * when the process exits, whatever the way out.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = path.resolve(BENCH_DIR, '..', '..');
export const CLI = path.join(ROOT, 'dist', 'cli.js');
export const RESULTS_DIR = path.join(BENCH_DIR, 'results');
export const HOST = '127.0.0.1';
export const PORT_MAX = 18999;

/** A positive integer from the environment, or `fallback` when unset. */
export function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0)
    throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Children.

/** Every child started and not yet exited. */
export const children = new Set();
const tempDirs = [];

/**
 * Spawns a child with cwd at the repository root. stdout is discarded ('ignore', /dev/null) unless
 * `stdout` is 'pipe' (its last 200 KB kept in `stdoutText`) or 'drain' (a pipe this process reads
 * and throws away, counting `stdoutBytes`, as a container runtime reads a container's stdout);
 * stderr's last 4 KB are kept to explain a failed start. With `cpu` (a core number) and taskset on PATH, the child is pinned to that core.
 */
export function startChild(name, command, args, { stdout = 'ignore', cpu } = {}) {
  const taskset = cpu === undefined ? undefined : which('taskset');
  const [cmd, argv] = taskset ? [taskset, ['-c', String(cpu), command, ...args]] : [command, args];
  const stdio = ['ignore', stdout === 'drain' ? 'pipe' : stdout, 'pipe'];
  const child = spawn(cmd, argv, { cwd: ROOT, stdio, env: process.env });
  const handle = { name, child, exited: false, exitInfo: '', stderrTail: '', stdoutText: '', stdoutBytes: 0 };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    handle.stderrTail = (handle.stderrTail + chunk).slice(-4096);
  });
  if (stdout === 'pipe') {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      handle.stdoutText = (handle.stdoutText + chunk).slice(-200_000);
    });
  } else if (stdout === 'drain') {
    child.stdout.on('data', (chunk) => {
      handle.stdoutBytes += chunk.length;
    });
  }
  handle.done = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      handle.exited = true;
      handle.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
      children.delete(handle);
      resolve();
    });
    child.on('error', (err) => {
      handle.exited = true;
      handle.exitInfo = `spawn error: ${err.message}`;
      children.delete(handle);
      resolve();
    });
  });
  children.add(handle);
  return handle;
}

export function signalPid(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/** SIGTERM by PID, then SIGKILL if it has not exited after `graceMs`. */
export async function stopChild(handle, graceMs = 3000) {
  if (handle.exited || handle.child.pid === undefined) return;
  signalPid(handle.child.pid, 'SIGTERM');
  const timer = new Promise((resolve) => setTimeout(resolve, graceMs, 'timeout'));
  if ((await Promise.race([handle.done, timer])) === 'timeout' && !handle.exited) {
    signalPid(handle.child.pid, 'SIGKILL');
    await Promise.race([handle.done, new Promise((resolve) => setTimeout(resolve, 1000))]);
  }
}

/** Stops every child still running, and removes the temp dirs. */
export async function stopAllChildren(graceMs = 2000) {
  await Promise.all([...children].map((h) => stopChild(h, graceMs)));
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

// Last resort: whatever is still alive when this process exits gets SIGKILL.
process.on('exit', () => {
  for (const h of children) if (h.child.pid !== undefined) signalPid(h.child.pid, 'SIGKILL');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

export function makeTempDir(label) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `breakwater-bench-${label}-`));
  tempDirs.push(dir);
  return dir;
}

export function which(bin) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, bin);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Ports and readiness.

function isPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

/** A function giving the next free port in base..18999 on 127.0.0.1. */
export function portAllocator(base) {
  let next = base;
  return async function allocPort() {
    while (next <= PORT_MAX) {
      const port = next++;
      if (await isPortFree(port)) return port;
    }
    throw new Error(`no free port left in ${base}..${PORT_MAX}`);
  };
}

/** One GET / on 127.0.0.1:port; resolves {status, bytes}. Any HTTP answer counts. */
export function probe(port, timeoutMs = 1000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: HOST, port, path: '/', agent: false, timeout: timeoutMs }, (res) => {
      let bytes = 0;
      res.on('data', (c) => {
        bytes += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode, bytes }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
  });
}

/** Polls until the port answers HTTP; fails early when `handle` (the child serving it) exits. */
export async function waitForHttp(port, handle, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    if (handle?.exited) {
      throw new Error(`${handle.name} exited (${handle.exitInfo}) before answering:\n${handle.stderrTail}`);
    }
    try {
      return await probe(port);
    } catch (err) {
      lastErr = err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  const tail = handle ? `\n${handle.stderrTail}` : '';
  throw new Error(`127.0.0.1:${port} did not answer within ${timeoutMs} ms (${lastErr?.message})${tail}`);
}

// ---------------------------------------------------------------------------------------------
// /proc (Linux; undefined or NaN elsewhere).

/** User + system CPU time of a process in ms (undefined without /proc or a pid). */
export function cpuMs(pid) {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 per second on Linux).
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return undefined;
  }
}

function statusField(pid, field) {
  if (pid === undefined) return Number.NaN;
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Resident memory (VmRSS) of a process now, in MiB. */
export const rssMiB = (pid) => statusField(pid, 'VmRSS');
/** Peak resident memory (VmHWM) of a process, in MiB. */
export const peakRssMiB = (pid) => statusField(pid, 'VmHWM');
