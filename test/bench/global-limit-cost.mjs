/**
 * What one global rate-limit decision costs, without the HTTP stack around it: a redis-server of
 * its own (no persistence, a free port on 127.0.0.1), breakwater's RedisStore and GCRA script from
 * dist/, 30,000 decisions 50 at a time (as 50 concurrent requests would make them).
 * Prints CPU per decision in this process and in redis-server, and decisions per second.
 *
 *   npm run build && node test/bench/global-limit-cost.mjs
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { RedisStore } = await import(path.join(ROOT, 'dist/stores/redis.js'));
const { GCRA_SCRIPT } = await import(path.join(ROOT, 'dist/pipeline/global-rate-limiter.js'));
const { createMetrics } = await import(path.join(ROOT, 'dist/observability/metrics.js'));
const { createLogger } = await import(path.join(ROOT, 'dist/observability/logger.js'));
const { systemClock } = await import(path.join(ROOT, 'dist/pipeline/types.js'));

const N = 30_000;
const CONCURRENCY = 50;

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const dir = mkdtempSync(path.join(os.tmpdir(), 'bw-limit-cost-'));
const redis = spawn(
  'redis-server',
  ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
  { stdio: 'ignore' },
);
const cpuMs = (pid) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
};

try {
  const store = new RedisStore(
    {
      host: '127.0.0.1',
      port,
      db: 0,
      username: undefined,
      password: undefined,
      tls: undefined,
      address: `redis://127.0.0.1:${port}/0`,
      keyPrefix: 'bench:',
      commandTimeout: 250,
      connectTimeout: 5000,
      breaker: { failureThreshold: 3, resetTimeout: 1000 },
    },
    createMetrics({ defaultMetrics: false }),
    createLogger({ level: 'silent' }),
    systemClock,
  );
  await store.waitReady(5000);
  const keys = [store.key('rl', 'bench')];
  const args = [String(1e6 / 1e7), String(1e6)]; // 10,000,000/s, never limiting
  const call = (c) => store.evalScript(c, GCRA_SCRIPT, keys, args);
  const run = async (n) => {
    let i = 0;
    const worker = async () => {
      while (i++ < n) await store.run('rate_limit', call);
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  };
  await run(5_000); // warm-up
  const r0 = cpuMs(redis.pid);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await run(N);
  const seconds = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const redisUs = ((cpuMs(redis.pid) - r0) * 1000) / N;
  console.log(
    `${N} decisions, ${CONCURRENCY} at a time: ${((c.user + c.system) / N).toFixed(1)} µs CPU per decision in ` +
      `breakwater, ${redisUs.toFixed(1)} µs in redis-server, ${Math.round(N / seconds)} decisions/s`,
  );
  await store.close();
} finally {
  redis.kill('SIGKILL');
}
