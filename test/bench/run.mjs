/**
 * breakwater's throughput/latency benchmark.
 *
 *   npm run bench                                   build, then run every scenario
 *   node test/bench/run.mjs                         run every scenario (dist/ must be built)
 *   node test/bench/run.mjs --only direct,breakwater-plain
 *   node test/bench/run.mjs --list                  print the scenario names and exit
 *   npm run bench -- attack                         the slow-HTTP attack section instead
 *                                                   (test/bench/attack.mjs: slowhttptest's four modes)
 *
 * Environment: BENCH_DURATION (s, default 8), BENCH_CONNECTIONS (default 50), BENCH_WARMUP (s,
 * default 2), BENCH_PORT_BASE (default 18000; ports are taken from BENCH_PORT_BASE..18999).
 *
 * One upstream (test/bench/upstream.mjs) runs in a child process; each scenario starts its proxy in
 * another child process; autocannon drives the load from this process. Everything listens and
 * connects on 127.0.0.1 only. Every child is killed by its PID at the end, on error and on SIGINT.
 *
 * Adding a scenario: push an object {name, description, kind, start(ctx)} to SCENARIOS, where
 * start resolves to {port, stop()}. For a breakwater configuration use breakwaterScenario(), which
 * takes YAML fragments (see the commented examples next to SCENARIOS).
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const HOST = '127.0.0.1';
const PORT_MAX = 18999;
/** Body size of test/bench/upstream.mjs's answer. */
const UPSTREAM_BODY_BYTES = 64;

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return n;
}

const settings = {
  duration: envInt('BENCH_DURATION', 8),
  warmup: envInt('BENCH_WARMUP', 2),
  connections: envInt('BENCH_CONNECTIONS', 50),
  portBase: envInt('BENCH_PORT_BASE', 18000),
};

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered here and killed by its PID on the way out.

/** @type {Set<{name: string, child: import('node:child_process').ChildProcess, exited: boolean, stderrTail: string}>} */
const children = new Set();

/**
 * Spawns a child with cwd at the repository root. stdout is discarded ('ignore', i.e. /dev/null);
 * stderr is kept (last 4 KB) to explain a failed start.
 */
function startChild(name, command, args) {
  const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: process.env });
  const handle = { name, child, exited: false, exitInfo: '', stderrTail: '' };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    handle.stderrTail = (handle.stderrTail + chunk).slice(-4096);
  });
  child.on('exit', (code, signal) => {
    handle.exited = true;
    handle.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
    children.delete(handle);
  });
  child.on('error', (err) => {
    handle.exited = true;
    handle.exitInfo = `spawn error: ${err.message}`;
    children.delete(handle);
  });
  children.add(handle);
  return handle;
}

/** SIGTERM by PID, then SIGKILL if it has not exited after `graceMs`. */
async function stopChild(handle, graceMs = 3000) {
  if (handle.exited || handle.child.pid === undefined) return;
  const exited = new Promise((resolve) => handle.child.once('exit', resolve));
  signalPid(handle.child.pid, 'SIGTERM');
  const timer = new Promise((resolve) => setTimeout(resolve, graceMs, 'timeout'));
  if ((await Promise.race([exited, timer])) === 'timeout' && !handle.exited) {
    signalPid(handle.child.pid, 'SIGKILL');
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 1000))]);
  }
}

function signalPid(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

async function stopAllChildren() {
  await Promise.all([...children].map((h) => stopChild(h, 2000)));
}

// Last resort: whatever is still alive when this process exits gets SIGKILL.
process.on('exit', () => {
  for (const h of children) if (h.child.pid !== undefined) signalPid(h.child.pid, 'SIGKILL');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Temp dirs, ports, readiness.

const tempDirs = [];
function makeTempDir(label) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `breakwater-bench-${label}-`));
  tempDirs.push(dir);
  return dir;
}

function isPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

let nextPort = settings.portBase;
/** The next free port in BENCH_PORT_BASE..18999 on 127.0.0.1 (fixed when nothing else holds them). */
async function allocPort() {
  while (nextPort <= PORT_MAX) {
    const port = nextPort++;
    if (await isPortFree(port)) return port;
  }
  throw new Error(`no free port left in ${settings.portBase}..${PORT_MAX}`);
}

/** One GET on 127.0.0.1:port; resolves {status, bytes}. Any HTTP answer counts. */
function probe(port, timeoutMs = 1000) {
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
async function waitForHttp(port, handle, timeoutMs = 15_000) {
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

/** Starts `command ...args` and waits until `port` answers. Returns {port, stop()}. */
async function startServerChild(name, command, args, port) {
  const handle = startChild(name, command, args);
  try {
    await waitForHttp(port, handle);
  } catch (err) {
    await stopChild(handle);
    throw err;
  }
  return { port, stop: () => stopChild(handle) };
}

/** Starts `node <script> ...args` and waits until `port` answers. */
function startNodeChild(name, script, port, args) {
  return startServerChild(name, process.execPath, [script, ...args], port);
}

// ---------------------------------------------------------------------------------------------
// Scenario helpers.

/** Removes the common leading indentation of a template-literal fragment, and blank edges. */
function dedent(text) {
  const lines = text
    .replace(/^\s*\n/, '')
    .replace(/\s+$/, '')
    .split('\n');
  const widths = lines.filter((l) => l.trim()).map((l) => l.match(/^ */)[0].length);
  const cut = widths.length ? Math.min(...widths) : 0;
  return lines.map((l) => l.slice(cut)).join('\n');
}

function indent(fragment, spaces) {
  const body = dedent(fragment ?? '');
  if (!body) return '';
  const pad = ' '.repeat(spaces);
  return `${body
    .split('\n')
    .map((l) => (l ? pad + l : l))
    .join('\n')}\n`;
}

/**
 * A breakwater scenario: one listener with one route to the upstream `backend`.
 *
 * @param {object} o
 * @param {string} o.name
 * @param {string} o.description
 * @param {string} [o.upstream] YAML keys added under `upstreams.backend` (next to `endpoints`).
 * @param {string} [o.route] YAML keys added to the route (next to `upstream: backend`).
 * @param {string} [o.listener] YAML keys added to the listener (next to `port`).
 * @param {string | ((ctx: object) => string)} [o.extra] top-level YAML sections added at the end
 *   (e.g. `fallbacks:`, `resilience:`), or a function of the run context that returns them. Do not
 *   repeat `listeners`, `admin`, `upstreams` or `logging`.
 * @param {boolean} [o.accessLog] logging.access_log (default false). stdout goes to /dev/null.
 * @param {string} [o.logLevel] logging.level (default info).
 */
function breakwaterScenario({
  name,
  description,
  upstream = '',
  route = '',
  listener = '',
  extra = '',
  accessLog = false,
  logLevel = 'info',
}) {
  return {
    name,
    description,
    kind: 'breakwater',
    async start(ctx) {
      const port = await ctx.allocPort();
      const adminPort = await ctx.allocPort();
      const dir = makeTempDir(name);
      const yaml =
        `# generated by test/bench/run.mjs for scenario ${name}\n` +
        'listeners:\n' +
        '  - name: bench\n' +
        `    host: ${HOST}\n` +
        `    port: ${port}\n` +
        indent(listener, 4) +
        '    routes:\n' +
        '      - name: all\n' +
        '        upstream: backend\n' +
        indent(route, 8) +
        'admin:\n' +
        `  host: ${HOST}\n` +
        `  port: ${adminPort}\n` +
        'upstreams:\n' +
        '  backend:\n' +
        '    endpoints:\n' +
        `      - ${ctx.upstreamUrl}\n` +
        indent(upstream, 4) +
        'logging:\n' +
        `  level: ${logLevel}\n` +
        `  access_log: ${accessLog ? 'true' : 'false'}\n` +
        indent(typeof extra === 'function' ? extra(ctx) : extra, 0);
      const file = path.join(dir, 'breakwater.yaml');
      writeFileSync(file, yaml);
      const handle = startChild(name, process.execPath, [CLI, '--config', file]);
      try {
        await waitForHttp(port, handle);
      } catch (err) {
        await stopChild(handle);
        throw new Error(`${err.message}\n--- generated config ${file} ---\n${yaml}`);
      }
      return {
        port,
        adminPort,
        pid: handle.child.pid,
        configFile: file,
        stop: () => stopChild(handle, 5000),
      };
    },
  };
}

/** A Node peer proxy script from this folder, started with --port and --upstream. */
function nodePeerScenario({ name, description, script }) {
  return {
    name,
    description,
    kind: 'peer',
    async start(ctx) {
      const port = await ctx.allocPort();
      return startNodeChild(name, path.join(BENCH_DIR, script), port, [
        '--port',
        String(port),
        '--upstream',
        ctx.upstreamUrl,
      ]);
    },
  };
}

function which(bin) {
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

/** nginx version as [major, minor, patch], or undefined. `nginx -v` writes to stderr. */
function nginxVersion(bin) {
  const out = spawnSync(bin, ['-v'], { encoding: 'utf8', timeout: 5000 });
  const m = /nginx\/(\d+)\.(\d+)\.(\d+)/.exec(`${out.stderr}${out.stdout}`);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function h2loadAvailable() {
  return which('h2load') ? true : 'no h2load on PATH (Debian: apt-get install nghttp2-client)';
}

/** One PING to redis-server on 127.0.0.1:port; resolves true on PONG. */
function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    const done = (v) => {
      s.destroy();
      resolve(v);
    };
    s.setTimeout(500, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => done(d.toString('latin1').startsWith('+PONG')));
  });
}

/**
 * A breakwater scenario that needs Redis (stores.redis): a redis-server child (no persistence) is
 * started first on a bench port, its URL given to `extra(redisUrl)`, and stopped after breakwater.
 * Skipped when redis-server is not installed (Debian: apt-get install redis-server).
 */
function redisBreakwaterScenario({ extra, ...options }) {
  return {
    name: options.name,
    description: options.description,
    kind: 'breakwater',
    available() {
      return which('redis-server') ? true : 'no redis-server on PATH (Debian: apt-get install redis-server)';
    },
    async start(ctx) {
      const redisPort = await ctx.allocPort();
      const dir = makeTempDir(`${options.name}-redis`);
      const redis = startChild('redis-server', which('redis-server'), [
        ...['--port', String(redisPort), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir],
      ]);
      const deadline = Date.now() + 10_000;
      while (!(await redisPing(redisPort))) {
        if (redis.exited || Date.now() > deadline) {
          await stopChild(redis);
          throw new Error(`redis-server did not start on ${HOST}:${redisPort}: ${redis.stderrTail}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      try {
        const bw = await breakwaterScenario({
          ...options,
          extra: extra(`redis://${HOST}:${redisPort}`),
        }).start(ctx);
        return {
          ...bw,
          storePid: redis.child.pid,
          stop: async () => {
            await bw.stop();
            await stopChild(redis);
          },
        };
      } catch (err) {
        await stopChild(redis);
        throw err;
      }
    },
  };
}

const nginxScenario = {
  name: 'nginx',
  description: 'nginx, 1 worker, proxy_pass to an upstream block with keepalive (reference, not Node)',
  kind: 'reference',
  available() {
    return which('nginx') ? true : 'no nginx binary on PATH (the bench does not install it)';
  },
  async start(ctx) {
    const bin = which('nginx');
    const port = await ctx.allocPort();
    const dir = makeTempDir('nginx');
    const p = (name) => path.join(dir, name);
    const conf = `# generated by test/bench/run.mjs
worker_processes 1;
daemon off;
master_process off;
pid ${p('nginx.pid')};
error_log ${p('error.log')} warn;
events {
  worker_connections 4096;
}
http {
  access_log off;
  client_body_temp_path ${p('client_body')};
  proxy_temp_path ${p('proxy')};
  fastcgi_temp_path ${p('fastcgi')};
  uwsgi_temp_path ${p('uwsgi')};
  scgi_temp_path ${p('scgi')};
  keepalive_requests 1000000;
  upstream bench_upstream {
    server ${HOST}:${ctx.upstreamPort};
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen ${HOST}:${port};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
    writeFileSync(p('nginx.conf'), conf);
    const args = ['-p', `${dir}/`, '-c', p('nginx.conf')];
    // -e (start-up error log) exists from 1.19.5; older versions warn about the default path.
    const v = nginxVersion(bin);
    if (v && (v[0] > 1 || (v[0] === 1 && (v[1] > 19 || (v[1] === 19 && v[2] >= 5))))) {
      args.push('-e', p('error.log'));
    }
    return startServerChild('nginx', bin, args, port);
  },
};

// ---------------------------------------------------------------------------------------------
// The scenario registry. Order is the run order (and the table order).
//
// kind: 'baseline' (direct), 'breakwater', 'peer' (a Node proxy breakwater is compared with),
// 'reference' (anything else worth a row, e.g. nginx). Each breakwater row gets a ratio to every
// peer that ran. `available()` (optional) returns true, or a string saying why it is skipped.
//
// Examples of scenarios to add later:
//
//   breakwaterScenario({
//     name: 'breakwater-policies',
//     description: 'every resilience policy on, none triggering',
//     upstream: `
//       retry: { max_attempts: 3 }   # attempts, the first included
//       circuit_breaker: { failure_threshold: 1000000 }
//       rate_limiter: { max_requests_per_second: 10000000 }
//       bulkhead: { max_concurrent: 100000 }
//     `,
//   }),
//   breakwaterScenario({
//     name: 'breakwater-cache-tee',
//     description: 'cache fallback on: every 2xx response is teed into the cache',
//     upstream: 'fallback: cached',
//     extra: `
//       fallbacks:
//         cached: { type: cache, max_stale: 5m }
//     `,
//   }),

const SCENARIOS = [
  {
    name: 'direct',
    description: 'no proxy: autocannon straight to the upstream (the baseline)',
    kind: 'baseline',
    async start(ctx) {
      return { port: ctx.upstreamPort, stop: async () => {} };
    },
  },
  breakwaterScenario({
    name: 'breakwater-plain',
    description: 'breakwater, one listener/route/upstream, default policies, access log off',
  }),
  breakwaterScenario({
    name: 'breakwater-policies',
    description: 'every resilience policy on (retry, breaker, limiter, bulkhead), none triggering',
    upstream: `
      retry: { max_attempts: 3 }   # attempts, the first included
      circuit_breaker: { failure_threshold: 1000000, failure_rate_threshold: 99%, slow_call_duration: 10s, slow_call_rate_threshold: 99% }
      rate_limiter: { max_requests_per_second: 10000000, burst_limit: 10000000 }
      bulkhead: { max_concurrent: 100000 }
    `,
  }),
  breakwaterScenario({
    name: 'breakwater-cache-tee',
    description: 'a cache fallback on the upstream: every 200 is teed into the response cache',
    upstream: 'fallback: cached',
    extra: `
      fallbacks:
        cached: { type: cache, max_stale: 5m }
    `,
  }),
  breakwaterScenario({
    name: 'breakwater-h2c-listener',
    description: 'as breakwater-plain on a listener with protocol: h2c (HTTP/1.1 load: the preface sniffer)',
    listener: 'protocol: h2c',
  }),
  // HTTP/2 (h2load, when installed: Debian's nghttp2-client). Not comparable with the autocannon
  // rows, so the first row drives the plain route with h2load over HTTP/1.1 as their reference.
  {
    ...breakwaterScenario({
      name: 'h2load-http1-plain',
      description:
        'h2load over HTTP/1.1, 50 connections, to breakwater-plain (reference for the HTTP/2 rows)',
    }),
    kind: 'h2load',
    h2load: ['-p', 'http/1.1', '-c', String(settings.connections)],
    available: h2loadAvailable,
  },
  {
    ...breakwaterScenario({
      name: 'h2load-h2c',
      description: 'h2load over HTTP/2 (h2c), 50 connections, 1 stream each, to a protocol: h2c listener',
      listener: 'protocol: h2c',
    }),
    kind: 'h2load',
    h2load: ['-c', String(settings.connections), '-m', '1'],
    available: h2loadAvailable,
  },
  {
    ...breakwaterScenario({
      name: 'h2load-h2c-multiplexed',
      description: 'h2load over HTTP/2 (h2c), 5 connections, 10 streams each, to a protocol: h2c listener',
      listener: 'protocol: h2c',
    }),
    kind: 'h2load',
    h2load: ['-c', '5', '-m', '10'],
    available: h2loadAvailable,
  },
  // A rate limit shared through Redis against the same limit kept in the process, both set high
  // enough never to trigger: the cost per request of one EVALSHA round trip.
  breakwaterScenario({
    name: 'breakwater-limit-local',
    description: 'rate_limiter scope local (the in-process bucket), never triggering',
    upstream: 'rate_limiter: { max_requests_per_second: 10000000, burst_limit: 10000000 }',
  }),
  redisBreakwaterScenario({
    name: 'breakwater-limit-global',
    description: 'rate_limiter scope global (GCRA in Redis, one EVALSHA per request), never triggering',
    upstream: 'rate_limiter: { max_requests_per_second: 10000000, burst_limit: 10000000, scope: global }',
    // A command_timeout far above the round trip, so a busy machine measures the Redis path and
    // not the local fallback (the decisions by source are printed after the run).
    extra: (url) => `
      stores:
        redis: { url: "${url}", command_timeout: 250ms }
    `,
  }),
  breakwaterScenario({
    name: 'breakwater-plain-accesslog',
    description: 'as breakwater-plain with logging.access_log: true (stdout to /dev/null)',
    accessLog: true,
  }),
  nodePeerScenario({
    name: 'fastify-http-proxy',
    description: 'bare fastify + @fastify/http-proxy, no logger',
    script: 'peer-fastify-http-proxy.mjs',
  }),
  nodePeerScenario({
    name: 'undici-forwarder',
    description: 'node:http server forwarding with an undici Pool (pool.stream), nothing else',
    script: 'peer-undici.mjs',
  }),
  nginxScenario,
];

// ---------------------------------------------------------------------------------------------
// Load.

let currentCannon;

/**
 * Response times of one autocannon run, in ms with sub-ms precision. autocannon's own latency
 * histogram holds whole milliseconds, which flattens a sub-millisecond p50 to 0 or 1.
 */
class LatencyRecorder {
  constructor() {
    this.values = new Float64Array(1 << 16);
    this.count = 0;
  }
  record(ms) {
    if (this.count === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.count++] = ms;
  }
  /** Nearest-rank percentile (q in 0..100) of the recorded values. */
  percentiles(...qs) {
    const sorted = this.values.slice(0, this.count).sort();
    return qs.map((q) =>
      this.count ? sorted[Math.min(this.count - 1, Math.max(0, Math.ceil((q / 100) * this.count) - 1))] : NaN,
    );
  }
}

/** One autocannon run against 127.0.0.1:port; resolves {result, latency: LatencyRecorder}. */
function cannon(port, duration) {
  const latency = new LatencyRecorder();
  return new Promise((resolve, reject) => {
    currentCannon = autocannon(
      {
        url: `http://${HOST}:${port}/`,
        connections: settings.connections,
        pipelining: 1,
        duration,
        timeout: 10,
      },
      (err, result) => {
        currentCannon = undefined;
        if (err) reject(err);
        else resolve({ result, latency });
      },
    );
    currentCannon.on('response', (_client, _status, _bytes, responseTimeMs) =>
      latency.record(responseTimeMs),
    );
  });
}

function summarize({ result, latency }) {
  const [p50, p90, p99, p999] = latency.percentiles(50, 90, 99, 99.9);
  return {
    reqPerSec: result.requests.average,
    p50,
    p90,
    p99,
    p999,
    errors: result.errors,
    timeouts: result.timeouts,
    non2xx: result.non2xx,
    totalRequests: result.requests.total,
    throughputBytesPerSec: result.throughput.average,
    autocannonLatencyMs: {
      mean: result.latency.average,
      p50: result.latency.p50,
      p99: result.latency.p99,
      max: result.latency.max,
    },
  };
}

/**
 * One h2load run (nghttp2's HTTP/2 load generator; `-p http/1.1` for HTTP/1.1) against
 * 127.0.0.1:port, warm-up included; percentiles from its per-request log.
 */
async function h2load(port, args) {
  const dir = makeTempDir('h2load');
  const log = path.join(dir, 'requests.log');
  const argv = [
    ...args,
    '-t',
    '1',
    '-D',
    String(settings.duration),
    `--warm-up-time=${settings.warmup}`,
    `--log-file=${log}`,
    `http://${HOST}:${port}/`,
  ];
  const out = await new Promise((resolve, reject) => {
    const child = spawn(which('h2load'), argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (d) => {
      text += d;
    });
    child.stderr.on('data', (d) => {
      text += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), (settings.duration + settings.warmup + 20) * 1000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(text);
      else reject(new Error(`h2load exited ${code}: ${text.slice(-500)}`));
    });
  });
  for (const line of out.split('\n'))
    if (/^(finished in|requests:|status codes:)/.test(line)) console.log(`  h2load: ${line.trim()}`);
  const num = (re) => Number((re.exec(out)?.[1] ?? 'NaN').replace(/,/g, ''));
  const latency = new LatencyRecorder();
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const f = line.split('\t');
    if (f.length >= 3) latency.record(Number(f[2]) / 1000); // µs -> ms
  }
  const [p50, p90, p99, p999] = latency.percentiles(50, 90, 99, 99.9);
  const total = num(/requests: (\d+) total/);
  return {
    reqPerSec: num(/finished in [\d.]+m?s, ([\d.]+) req\/s/),
    p50,
    p90,
    p99,
    p999,
    errors: num(/(\d+) errored/) + num(/(\d+) failed/),
    timeouts: num(/(\d+) timeout/),
    // (h2load's 2xx count can trail its total by a few responses at the end of the window.)
    non2xx: num(/(\d+) 3xx/) + num(/(\d+) 4xx/) + num(/(\d+) 5xx/),
    totalRequests: total,
  };
}

/** User + system CPU time of a process in ms, from /proc (undefined elsewhere or without a pid). */
function cpuMs(pid) {
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

/** How the global limiter decided during a run (from the admin /metrics): source -> count. */
async function storeDecisions(adminPort) {
  const text = await new Promise((resolve, reject) => {
    http
      .get({ host: HOST, port: adminPort, path: '/metrics', agent: false, timeout: 5000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => {
          body += c;
        });
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
  const out = {};
  for (const m of text.matchAll(
    /^breakwater_rate_limit_decisions_total\{[^}]*source="([a-z_]+)"[^}]*\} (\d+)/gm,
  ))
    out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  return out;
}

async function runScenario(scenario, ctx) {
  const started = await scenario.start(ctx);
  if (scenario.h2load) {
    try {
      console.log(
        `  h2load ${scenario.h2load.join(' ')}: warm-up ${settings.warmup}s, measure ${settings.duration}s`,
      );
      return await h2load(started.port, scenario.h2load);
    } finally {
      await started.stop();
    }
  }
  try {
    const check = await probe(started.port, 5000);
    if (check.status !== 200 || check.bytes !== UPSTREAM_BODY_BYTES) {
      console.log(
        `  ! first request answered ${check.status} with ${check.bytes} bytes ` +
          `(the upstream sends 200 with ${UPSTREAM_BODY_BYTES})`,
      );
    }
    console.log(`  warm-up ${settings.warmup}s on 127.0.0.1:${started.port}`);
    await cannon(started.port, settings.warmup);
    console.log(`  measure ${settings.duration}s, ${settings.connections} connections`);
    const cpuBefore = [cpuMs(started.pid), cpuMs(started.storePid)];
    const measured = await cannon(started.port, settings.duration);
    const cpuAfter = [cpuMs(started.pid), cpuMs(started.storePid)];
    const summary = summarize(measured);
    const perRequest = (i) =>
      cpuBefore[i] === undefined || cpuAfter[i] === undefined || !summary.totalRequests
        ? undefined
        : ((cpuAfter[i] - cpuBefore[i]) * 1000) / summary.totalRequests;
    const cpu = { cpuUsPerRequest: perRequest(0), storeCpuUsPerRequest: perRequest(1) };
    if (started.adminPort !== undefined && started.storePid !== undefined)
      cpu.storeDecisions = await storeDecisions(started.adminPort);
    return { firstResponse: check, ...summary, ...cpu };
  } finally {
    await started.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Report.

const fmt = (n, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '—';
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : '—');

function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
  };
}

function withRatios(rows) {
  const direct = rows.find((r) => r.kind === 'baseline' && !r.error);
  const peers = rows.filter((r) => r.kind === 'peer' && !r.error);
  return rows.map((r) => {
    if (r.error) return r;
    const ratios = { direct: direct ? r.reqPerSec / direct.reqPerSec : null };
    if (r.kind === 'breakwater') for (const p of peers) ratios[p.name] = r.reqPerSec / p.reqPerSec;
    return { ...r, ratios };
  });
}

/** The first lines of an error, on one line and safe inside a Markdown table cell. */
function briefError(message) {
  const text = message
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(0, 3)
    .join(' ')
    .replace(/\|/g, '\\|');
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

function markdownTable(rows) {
  const direct = rows.find((r) => r.kind === 'baseline' && !r.error);
  const peers = rows.filter((r) => r.kind === 'peer' && !r.error);
  const head = [
    'scenario',
    'req/s',
    'p50 ms',
    'p99 ms',
    'errors / non-2xx',
    'proxy CPU µs/req',
    'vs direct',
    ...peers.map((p) => `vs ${p.name}`),
  ];
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
  ];
  for (const r of rows) {
    if (r.error) {
      lines.push(`| ${r.name} | failed: ${briefError(r.error)} |${' |'.repeat(head.length - 2)}`);
      continue;
    }
    const cells = [
      r.name,
      fmt(r.reqPerSec),
      fmt(r.p50, 2),
      fmt(r.p99, 2),
      `${r.errors + r.timeouts} / ${r.non2xx}`,
      r.cpuUsPerRequest === undefined
        ? '—'
        : fmt(r.cpuUsPerRequest, 1) +
          (r.storeCpuUsPerRequest === undefined ? '' : ` (+${fmt(r.storeCpuUsPerRequest, 1)} Redis)`),
      direct ? ratio(r.reqPerSec, direct.reqPerSec) : '—',
      ...peers.map((p) => (r.kind === 'breakwater' ? ratio(r.reqPerSec, p.reqPerSec) : '—')),
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Main.

const USAGE = `Usage: node test/bench/run.mjs [--only a,b,...] [--list] | attack [--only modes]
Scenarios: ${SCENARIOS.map((s) => s.name).join(', ')}
Env: BENCH_DURATION (s, default 8), BENCH_CONNECTIONS (default 50), BENCH_WARMUP (s, default 2),
     BENCH_PORT_BASE (default 18000)`;

/** `attack` as the first argument: test/bench/attack.mjs in a child (its own output, table and exit code). */
function runAttackSection(args) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(BENCH_DIR, 'attack.mjs'), ...args], {
      cwd: ROOT,
      stdio: 'inherit',
      env: process.env,
    });
    const handle = { name: 'attack', child, exited: false, exitInfo: '', stderrTail: '' };
    children.add(handle);
    child.on('exit', (code, signal) => {
      handle.exited = true;
      children.delete(handle);
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}

async function main() {
  if (process.argv[2] === 'attack') return runAttackSection(process.argv.slice(3));
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      list: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.list) {
    for (const s of SCENARIOS) console.log(`${s.name.padEnd(28)} ${s.description}`);
    return 0;
  }
  let selected = SCENARIOS;
  if (values.only) {
    const wanted = values.only
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const unknown = wanted.filter((w) => !SCENARIOS.some((s) => s.name === w));
    if (unknown.length) {
      console.error(`unknown scenario(s): ${unknown.join(', ')}\n${USAGE}`);
      return 2;
    }
    selected = SCENARIOS.filter((s) => wanted.includes(s.name));
  }
  if (selected.some((s) => s.kind === 'breakwater') && !existsSync(CLI)) {
    console.error(
      `${path.relative(ROOT, CLI)} is missing: run \`npm run build\` (\`npm run bench\` builds first)`,
    );
    return 1;
  }

  // Bound the whole run: per scenario warm-up + measurement + start/stop slack, plus the upstream.
  const budgetMs = (selected.length * (settings.warmup + settings.duration + 25) + 30) * 1000;
  const watchdog = setTimeout(() => {
    console.error(`bench: exceeded its ${Math.round(budgetMs / 1000)} s budget; stopping`);
    shutdown(1);
  }, budgetMs);
  watchdog.unref();

  const m = machine();
  console.log(`Machine: ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${m.platform}`);
  console.log(
    `Settings: ${settings.connections} connections, warm-up ${settings.warmup}s, measure ${settings.duration}s per scenario`,
  );

  const upstreamPort = await allocPort();
  const upstream = await startNodeChild('upstream', path.join(BENCH_DIR, 'upstream.mjs'), upstreamPort, [
    '--port',
    String(upstreamPort),
  ]);
  const ctx = { upstreamPort, upstreamUrl: `http://${HOST}:${upstreamPort}`, allocPort };
  console.log(`Upstream on ${ctx.upstreamUrl}`);

  const rows = [];
  const skipped = [];
  try {
    for (const scenario of selected) {
      const available = scenario.available ? await scenario.available() : true;
      if (available !== true) {
        console.log(`\n# ${scenario.name}: skipped, ${available}`);
        skipped.push({ name: scenario.name, reason: available });
        continue;
      }
      console.log(`\n# ${scenario.name}: ${scenario.description}`);
      const base = { name: scenario.name, kind: scenario.kind, description: scenario.description };
      try {
        const measured = await runScenario(scenario, ctx);
        rows.push({ ...base, ...measured });
        console.log(
          `  ${fmt(measured.reqPerSec)} req/s, p50 ${fmt(measured.p50, 2)} ms, p99 ${fmt(measured.p99, 2)} ms, ` +
            `errors ${measured.errors}, timeouts ${measured.timeouts}, non-2xx ${measured.non2xx}`,
        );
        if (measured.cpuUsPerRequest !== undefined)
          console.log(
            `  CPU per request: ${fmt(measured.cpuUsPerRequest, 1)} µs in breakwater` +
              (measured.storeCpuUsPerRequest === undefined
                ? ''
                : `, ${fmt(measured.storeCpuUsPerRequest, 1)} µs in redis-server`) +
              (measured.storeDecisions
                ? `; limiter decisions by source ${JSON.stringify(measured.storeDecisions)}`
                : ''),
          );
      } catch (err) {
        console.log(`  failed: ${err.message}`);
        rows.push({ ...base, error: String(err.message) });
      }
    }
  } finally {
    await upstream.stop();
  }

  const results = withRatios(rows);
  console.log(`\n## breakwater bench\n`);
  console.log(`Machine: ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${m.platform}  `);
  console.log(
    `Load: autocannon, ${settings.connections} connections, ${settings.duration}s measured after ${settings.warmup}s warm-up, 64-byte JSON responses\n`,
  );
  console.log(markdownTable(results));
  for (const s of skipped) console.log(`\n_${s.name} skipped: ${s.reason}._`);
  const bwErrors = results.filter(
    (r) => r.kind === 'breakwater' && !r.error && r.errors + r.timeouts + r.non2xx > 0,
  );
  for (const r of bwErrors) {
    console.log(
      `\n**${r.name}: ${r.errors} errors, ${r.timeouts} timeouts, ${r.non2xx} non-2xx responses.**`,
    );
  }

  mkdirSync(RESULTS_DIR, { recursive: true });
  const out = path.join(RESULTS_DIR, 'latest.json');
  const json = { date: new Date().toISOString(), machine: m, settings, results, skipped };
  writeFileSync(out, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nResults written to ${path.relative(process.cwd(), out) || out}`);
  return results.some((r) => r.error) ? 1 : 0;
}

let shuttingDown = false;
async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  currentCannon?.stop();
  await stopAllChildren();
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    console.error(`\nbench: ${signal}, stopping children`);
    shutdown(130);
  });
}

main().then(
  (code) => shutdown(code),
  (err) => {
    console.error(`bench: ${err.stack ?? err}`);
    shutdown(1);
  },
);
