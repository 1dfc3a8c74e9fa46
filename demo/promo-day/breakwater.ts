/**
 * breakwater as a user runs it: `node dist/cli.js --config config/examples/promo-day.yaml` in a
 * child process (its own CPU, its own event loop), with the addresses given through the
 * environment the file reads. Ports are 0 and read back from breakwater's log lines, so two runs
 * never collide. dist/ is built first when missing or older than src/.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';

export const ROOT = join(import.meta.dirname, '../..');
export const CLI = join(ROOT, 'dist/cli.js');
export const PROMO_DAY = join(ROOT, 'config/examples/promo-day.yaml');

/** A breaker transition or a degradation change, as breakwater logged it. */
export interface PolicyEvent {
  /** performance.now() time of the event in this process's clock. */
  readonly at: number;
  readonly replica: number;
  readonly upstream: string;
  readonly kind: 'breaker' | 'degradation';
  readonly from: string;
  readonly to: string;
  readonly reason: string;
}

export interface Replica {
  readonly index: number;
  readonly url: string;
  readonly adminUrl: string;
  readonly child: ChildProcess;
  readonly stderr: string[];
}

export interface Fleet {
  readonly replicas: readonly Replica[];
  readonly events: PolicyEvent[];
  stop(): Promise<void>;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const m = entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs;
    if (m > newest) newest = m;
  }
  return newest;
}

/** Builds dist/ (tsc) when dist/cli.js is missing or older than a file of src/. */
export function ensureBuilt(say: (line: string) => void): void {
  if (existsSync(CLI) && statSync(CLI).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
  say('building breakwater (npm run build) ...');
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  if (r.status !== 0) throw new Error('npm run build failed: see the compiler output above');
}

/**
 * Wall-clock milliseconds to this process's performance.now() clock, by one constant offset
 * (performance.timeOrigin): an offset read anew per line (Date.now() - performance.now()) moves
 * by up to 1 ms between lines, which could put two transitions logged in the same millisecond
 * (half_open, then closed) in the wrong order once sorted by time.
 */
function toPerf(wallMs: number): number {
  return wallMs - performance.timeOrigin;
}

function startReplica(
  index: number,
  config: string,
  env: Record<string, string>,
  events: PolicyEvent[],
): Promise<Replica> {
  const child = spawn(process.execPath, [CLI, '--config', config], {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: '0', ADMIN_PORT: '0', ACCESS_LOG: 'false' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Whatever ends this process (Ctrl-C, an error, a kill of the parent), breakwater goes with it.
  const orphanGuard = () => child.kill('SIGKILL');
  process.on('exit', orphanGuard);
  child.once('exit', () => process.off('exit', orphanGuard));
  const stderr: string[] = [];
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 200) stderr.push(d);
  });
  return new Promise<Replica>((resolve, reject) => {
    let port = 0;
    let settled = false;
    const timer = setTimeout(() => fail(new Error('breakwater did not become ready within 20 s')), 20_000);
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\n${stderr.join('')}`));
    };
    child.once('exit', (code) => fail(new Error(`breakwater exited with ${code} before it was ready`)));
    child.once('error', fail);
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    lines.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      const at = toPerf(typeof entry.time === 'string' ? Date.parse(entry.time) : Date.now());
      if (entry.event === 'listener_bound' && typeof entry.port === 'number') port = entry.port;
      else if (entry.event === 'ready' && typeof entry.admin === 'string' && !settled) {
        settled = true;
        clearTimeout(timer);
        resolve({ index, url: `http://127.0.0.1:${port}`, adminUrl: `http://${entry.admin}`, child, stderr });
      } else if (entry.event === 'circuit_breaker_transition') {
        events.push({
          at,
          replica: index,
          upstream: String(entry.upstream),
          kind: 'breaker',
          from: String(entry.from),
          to: String(entry.to),
          reason: String(entry.reason),
        });
      } else if (entry.event === 'degradation') {
        const degraded = entry.degraded === true;
        events.push({
          at,
          replica: index,
          upstream: String(entry.upstream),
          kind: 'degradation',
          from: degraded ? 'normal' : 'degraded',
          to: degraded ? 'degraded' : 'normal',
          reason: String(entry.condition ?? ''),
        });
      }
    });
  });
}

/**
 * Starts `replicas` breakwater processes on promo-day.yaml. With more than one, a copy of the file
 * with a `stores.redis` block appended is used, and the catalog limit and the Idempotency-Key store
 * are switched to Redis through the environment the file reads.
 */
export async function startFleet(
  env: Record<string, string>,
  options: { replicas: number; redisUrl?: string | undefined; dir: string },
): Promise<Fleet> {
  let config = PROMO_DAY;
  const fleetEnv = { ...env };
  if (options.redisUrl !== undefined) {
    const { readFileSync } = await import('node:fs');
    config = join(options.dir, 'promo-day-fleet.yaml');
    const text = readFileSync(PROMO_DAY, 'utf8').replaceAll(
      'body_file: fallbacks/',
      `body_file: ${ROOT}/config/examples/fallbacks/`,
    );
    // 100 ms rather than the 20 ms default: on a shared 2-core machine a local Redis can be slower
    // than that under load, and each timeout counts towards the store's breaker.
    writeFileSync(
      config,
      `${text}\nstores:\n  redis:\n    url: ${options.redisUrl}\n    command_timeout: 100ms\n`,
    );
    fleetEnv.IDEMPOTENCY_STORE = 'redis';
    fleetEnv.CATALOG_LIMIT_SCOPE = 'global';
  }
  const events: PolicyEvent[] = [];
  const replicas: Replica[] = [];
  try {
    // Each replica its own data_dir (the deferred queue and the saga log belong to one process),
    // inside the run's temporary directory, so every run starts empty and leaves nothing behind.
    for (let i = 0; i < options.replicas; i++)
      replicas.push(
        await startReplica(
          i,
          config,
          { ...fleetEnv, BREAKWATER_DATA_DIR: join(options.dir, `data-${i}`) },
          events,
        ),
      );
  } catch (err) {
    for (const r of replicas) r.child.kill('SIGKILL');
    throw err;
  }
  return {
    replicas,
    events,
    async stop() {
      await Promise.all(
        replicas.map(
          (r) =>
            new Promise<void>((resolve) => {
              if (r.child.exitCode !== null || r.child.signalCode !== null) return resolve();
              const kill = setTimeout(() => r.child.kill('SIGKILL'), 5000);
              r.child.once('exit', () => {
                clearTimeout(kill);
                resolve();
              });
              r.child.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}

/** GET `/state` of a replica's admin API (null when it does not answer within 1 s). */
export async function fetchState(adminUrl: string): Promise<BreakwaterState | null> {
  try {
    const res = await fetch(`${adminUrl}/state`, { signal: AbortSignal.timeout(1000) });
    if (!res.ok) return null;
    return (await res.json()) as BreakwaterState;
  } catch {
    return null;
  }
}

/** The part of `/state` the demo reads. */
export interface BreakwaterState {
  readonly upstreams: Record<
    string,
    {
      readonly breaker: { readonly state: string } | null;
      readonly degradation: { readonly degraded: boolean } | null;
      readonly rate_limiter: { readonly rate_per_second: number; readonly burst: number } | null;
    }
  >;
  /** The deferred queue per upstream (null when no route has `deferred:`). */
  readonly deferred: {
    readonly upstreams: Record<string, { readonly pending: number; readonly delivering: number }>;
  } | null;
}

/** Items waiting in a replica's deferred queue (pending or delivering), from its /state. */
export function deferredDepth(state: BreakwaterState | null): number | null {
  if (!state?.deferred) return null;
  let n = 0;
  for (const u of Object.values(state.deferred.upstreams)) n += u.pending + u.delivering;
  return n;
}
