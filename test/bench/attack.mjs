/**
 * breakwater under slow-HTTP attacks: Debian's slowhttptest in its four modes (slowloris -H, slow
 * body -B, slow read -X, range -R; slow body once more with a body too large to be buffered), each
 * against a fresh breakwater on 127.0.0.1, while a probe sends normal requests at a fixed rate and
 * measures what a normal client gets.
 *
 *   npm run bench -- attack                      build, then run every mode
 *   node test/bench/attack.mjs                   the same without the build (dist/ must be built)
 *   node test/bench/attack.mjs --only slow-read,range
 *
 * Environment: ATTACK_DURATION (s per mode, default 45), ATTACK_CONNECTIONS (slowhttptest's
 * connections, default 200), ATTACK_RATE (its new connections per second, default 100),
 * ATTACK_PROBE_RATE (probe requests per second, default 20), ATTACK_BIG_BYTES (the response slow
 * readers ask for, default 4 MiB), BENCH_PORT_BASE (default 18000).
 *
 * Skips (exit 0, one line saying why) when slowhttptest is not installed (Debian: apt-get install
 * slowhttptest). The upstream (test/bench/upstream.mjs with --big-bytes), breakwater (dist/cli.js)
 * and slowhttptest run as child processes, all on 127.0.0.1, each stopped by its PID at the end,
 * on error, on SIGINT/SIGTERM and by a watchdog. Results: a Markdown table on stdout and
 * test/bench/results/attack-latest.json.
 */
import { spawn } from 'node:child_process';
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

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const HOST = '127.0.0.1';
const PORT_MAX = 18999;
/**
 * A probe request that has no answer after this long counts as failed: longer than breakwater's
 * default attempt timeout (5 s), so that its own 504s show as such.
 */
const PROBE_TIMEOUT_MS = 10_000;

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0)
    throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

const settings = {
  duration: envInt('ATTACK_DURATION', 45),
  connections: envInt('ATTACK_CONNECTIONS', 200),
  rate: envInt('ATTACK_RATE', 100),
  probeRate: envInt('ATTACK_PROBE_RATE', 20),
  bigBytes: envInt('ATTACK_BIG_BYTES', 4 * 1024 * 1024),
  portBase: envInt('BENCH_PORT_BASE', 18000),
};

/**
 * The modes. `args` are slowhttptest's mode-specific options; the common ones (-c, -r, -l,
 * -p, -u) are added by runMode(). Each holds its connections as an attacker would: headers or body
 * one small piece every 10 s, reading a 4 MiB response 32 bytes a second through a tiny TCP
 * window, or a Range header of hundreds of overlapping ranges.
 */
const MODES = [
  {
    name: 'slowloris',
    description: 'slow headers (-H): a header line every 10 s, never the end of the head',
    args: ['-H', '-i', '10', '-x', '24'],
    path: '/',
  },
  {
    name: 'slow-body',
    description: 'slow body (-B): POST with Content-Length 8192, 10 bytes every 10 s',
    args: ['-B', '-i', '10', '-s', '8192', '-x', '10'],
    path: '/',
  },
  {
    name: 'slow-read',
    description: 'slow read (-X): GET of a 4 MiB response read 32 bytes a second, TCP window 1-64 bytes',
    args: ['-X', '-w', '1', '-y', '64', '-n', '1', '-z', '32', '-k', '1'],
    path: '/big',
  },
  {
    name: 'slow-upload',
    description:
      'slow body (-B) over body_buffer_bytes: POST with Content-Length 1,000,000 (streamed upstream), 10 bytes every 10 s',
    args: ['-B', '-i', '10', '-s', '1000000', '-x', '10'],
    path: '/',
  },
  {
    name: 'range',
    description: 'range (-R): Range headers of many overlapping ranges (Apache killer)',
    args: ['-R', '-a', '10', '-b', '3000'],
    path: '/',
  },
];

// ---------------------------------------------------------------------------------------------
// Child processes, each stopped by its PID.

const children = new Set();
const tempDirs = [];

function startChild(name, command, args, stdout = 'ignore') {
  const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', stdout, 'pipe'], env: process.env });
  const handle = { name, child, exited: false, exitInfo: '', stderrTail: '', stdoutText: '' };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    handle.stderrTail = (handle.stderrTail + chunk).slice(-4096);
  });
  if (stdout === 'pipe') {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      // slowhttptest prints a status block a second: 200 KB holds a minute of them.
      handle.stdoutText = (handle.stdoutText + chunk).slice(-200_000);
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

function signalPid(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

async function stopChild(handle, graceMs = 3000) {
  if (handle.exited || handle.child.pid === undefined) return;
  signalPid(handle.child.pid, 'SIGTERM');
  const timer = new Promise((resolve) => setTimeout(resolve, graceMs, 'timeout'));
  if ((await Promise.race([handle.done, timer])) === 'timeout' && !handle.exited) {
    signalPid(handle.child.pid, 'SIGKILL');
    await Promise.race([handle.done, new Promise((resolve) => setTimeout(resolve, 1000))]);
  }
}

process.on('exit', () => {
  for (const h of children) if (h.child.pid !== undefined) signalPid(h.child.pid, 'SIGKILL');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

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

function isPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

let nextPort = settings.portBase;
async function allocPort() {
  while (nextPort <= PORT_MAX) {
    const port = nextPort++;
    if (await isPortFree(port)) return port;
  }
  throw new Error(`no free port left in ${settings.portBase}..${PORT_MAX}`);
}

/** Polls until 127.0.0.1:port answers HTTP; fails early when the child serving it exits. */
async function waitForHttp(port, handle, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (handle.exited) throw new Error(`${handle.name} exited (${handle.exitInfo}):\n${handle.stderrTail}`);
    const ok = await new Promise((resolve) => {
      const req = http.get({ host: HOST, port, path: '/', agent: false, timeout: 1000 }, (res) => {
        res.resume();
        res.on('end', () => resolve(true));
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`127.0.0.1:${port} did not answer within ${timeoutMs} ms\n${handle.stderrTail}`);
}

/** Peak resident memory (VmHWM) of a child, in MiB, from /proc (Linux). */
function peakRssMiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

async function startBreakwater(upstreamUrl) {
  const port = await allocPort();
  const adminPort = await allocPort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'breakwater-attack-'));
  tempDirs.push(dir);
  // Defaults everywhere (limits, timeouts, pool): what a user who changed nothing gets.
  const yaml = `# generated by test/bench/attack.mjs
listeners:
  - name: bench
    host: ${HOST}
    port: ${port}
    routes:
      - name: all
        upstream: backend
admin:
  host: ${HOST}
  port: ${adminPort}
upstreams:
  backend:
    endpoints:
      - ${upstreamUrl}
logging:
  level: warn
  access_log: false
`;
  const file = path.join(dir, 'breakwater.yaml');
  writeFileSync(file, yaml);
  const handle = startChild('breakwater', process.execPath, [CLI, '--config', file]);
  await waitForHttp(port, handle);
  return { port, handle };
}

// ---------------------------------------------------------------------------------------------
// The probe: normal requests at a fixed rate, whatever becomes of the earlier ones.

/**
 * Sends GET / every 1000/rate ms on keep-alive connections (at most 64), for `ms`. Each request is
 * counted as 2xx, another status, or failed (error, or no answer within 10 s). Latency is taken
 * over every request, a failed one at the time it failed, so that refusals and hangs show in it.
 */
async function probe(port, ms, rate) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const latencies = [];
  const counts = { sent: 0, ok: 0, other: 0, failed: 0 };
  const statuses = {};
  const pending = [];
  const one = () =>
    new Promise((resolve) => {
      const start = performance.now();
      counts.sent++;
      let settled = false;
      const settle = (kind, status) => {
        if (settled) return;
        settled = true;
        latencies.push(performance.now() - start);
        counts[kind]++;
        if (status !== undefined) statuses[status] = (statuses[status] ?? 0) + 1;
        resolve();
      };
      const req = http.get({ host: HOST, port, path: '/', agent }, (res) => {
        res.resume();
        res.on('end', () =>
          settle(res.statusCode >= 200 && res.statusCode < 300 ? 'ok' : 'other', res.statusCode),
        );
        res.on('error', () => settle('failed'));
      });
      // From the moment it is sent, the wait for a free socket included (http's `timeout` option
      // starts only once a socket is assigned).
      const timer = setTimeout(() => {
        settle('failed');
        req.destroy();
      }, PROBE_TIMEOUT_MS);
      req.on('close', () => clearTimeout(timer));
      req.on('error', () => settle('failed'));
    });
  const interval = 1000 / rate;
  const start = performance.now();
  for (let i = 0; performance.now() - start < ms; i++) {
    pending.push(one());
    const next = start + (i + 1) * interval;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, next - performance.now())));
  }
  await Promise.all(pending);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const pct = (q) =>
    latencies.length
      ? latencies[Math.min(latencies.length - 1, Math.ceil(q * latencies.length) - 1)]
      : Number.NaN;
  return { ...counts, statuses, p50: pct(0.5), p99: pct(0.99) };
}

// ---------------------------------------------------------------------------------------------
// slowhttptest.

/**
 * slowhttptest's status reports (one every few seconds): the most connections it held, and how
 * many of its reports said its own probe found the service unavailable.
 */
function parseSlowhttptest(text) {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI colour codes
  const plain = text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
  let maxConnected = 0;
  let unavailable = 0;
  let seconds = 0;
  for (const m of plain.matchAll(/connected:\s+(\d+)/g)) maxConnected = Math.max(maxConnected, Number(m[1]));
  for (const m of plain.matchAll(/service available:\s+(YES|NO)/g)) {
    seconds++;
    if (m[1] === 'NO') unavailable++;
  }
  const exit = /Exit status:\s*(.+)/.exec(plain)?.[1]?.trim();
  return { maxConnected, unavailable, seconds, exit };
}

async function runMode(mode, upstreamUrl) {
  const bw = await startBreakwater(upstreamUrl);
  try {
    const url = `http://${HOST}:${bw.port}${mode.path}`;
    const args = [
      ...mode.args,
      '-c',
      String(settings.connections),
      '-r',
      String(settings.rate),
      '-l',
      String(settings.duration),
      '-p',
      '3',
      '-u',
      url,
    ];
    console.log(`  slowhttptest ${args.join(' ')}`);
    const attacker = startChild(`slowhttptest ${mode.name}`, which('slowhttptest'), args, 'pipe');
    // The attack ramps up (connections at -r a second), then the probe measures until 3 s before its end.
    const ramp = Math.min(5, Math.ceil(settings.connections / settings.rate) + 2);
    await new Promise((resolve) => setTimeout(resolve, ramp * 1000));
    const window = Math.max(5, settings.duration - ramp - 3);
    const measured = await probe(bw.port, window * 1000, settings.probeRate);
    // slowhttptest stops at its -l; the watchdog below is for one that does not.
    await Promise.race([attacker.done, new Promise((resolve) => setTimeout(resolve, 20_000))]);
    await stopChild(attacker);
    const attack = parseSlowhttptest(attacker.stdoutText);
    return { ...measured, attack, probeSeconds: window, peakRssMiB: peakRssMiB(bw.handle.child.pid) };
  } finally {
    await stopChild(bw.handle, 5000);
  }
}

// ---------------------------------------------------------------------------------------------
// Report.

const fmt = (n, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '—';

function markdownTable(rows) {
  const head = [
    'mode',
    'attack connections held (max)',
    'probe requests',
    '2xx %',
    'p50 ms',
    'p99 ms',
    'other status / failed',
    "slowhttptest's probe: unavailable / reports",
    'breakwater peak RSS MiB',
  ];
  const lines = [`| ${head.join(' | ')} |`, `| --- |${' ---: |'.repeat(head.length - 1)}`];
  for (const r of rows) {
    if (r.error) {
      lines.push(
        `| ${r.name} | failed: ${r.error.split('\n')[0].replace(/\|/g, '\\|')} |${' |'.repeat(head.length - 2)}`,
      );
      continue;
    }
    const other = Object.entries(r.statuses)
      .filter(([s]) => !s.startsWith('2'))
      .map(([s, n]) => `${n}×${s}`)
      .join(' ');
    lines.push(
      `| ${[
        r.name,
        r.attack ? fmt(r.attack.maxConnected) : '—',
        fmt(r.sent),
        fmt((100 * r.ok) / r.sent, 1),
        fmt(r.p50, 1),
        fmt(r.p99, 1),
        `${other || '0'} / ${r.failed}`,
        r.attack ? `${r.attack.unavailable} / ${r.attack.seconds}` : '—',
        fmt(r.peakRssMiB),
      ].join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Main.

const USAGE = `Usage: node test/bench/attack.mjs [--only ${MODES.map((m) => m.name).join(',')}]
Env: ATTACK_DURATION (s per mode, default 45), ATTACK_CONNECTIONS (default 200), ATTACK_RATE
     (default 100/s), ATTACK_PROBE_RATE (default 20/s), ATTACK_BIG_BYTES (default 4194304),
     BENCH_PORT_BASE (default 18000)`;

async function main(argv) {
  const { values } = parseArgs({
    args: argv,
    options: { only: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!which('slowhttptest')) {
    console.log('attack bench skipped: slowhttptest is not installed (Debian: apt-get install slowhttptest)');
    return 0;
  }
  if (!existsSync(CLI)) {
    console.error(
      `${path.relative(ROOT, CLI)} is missing: run \`npm run build\` (\`npm run bench -- attack\` builds first)`,
    );
    return 1;
  }
  let modes = MODES;
  if (values.only) {
    const wanted = values.only.split(',').map((s) => s.trim());
    const unknown = wanted.filter((w) => !MODES.some((m) => m.name === w));
    if (unknown.length) {
      console.error(`unknown mode(s): ${unknown.join(', ')}\n${USAGE}`);
      return 2;
    }
    modes = MODES.filter((m) => wanted.includes(m.name));
  }
  // Bound the whole run: per mode its duration plus start/stop slack, plus the baseline.
  const budgetMs = ((modes.length + 1) * (settings.duration + 40) + 30) * 1000;
  const watchdog = setTimeout(() => {
    console.error(`attack bench: exceeded its ${Math.round(budgetMs / 1000)} s budget; stopping`);
    shutdown(1);
  }, budgetMs);
  watchdog.unref();

  const cpus = os.cpus();
  const machine = {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    // Other work on the machine competes with breakwater, the upstream, the probe and slowhttptest.
    loadAverage: os.loadavg().map((l) => Number(l.toFixed(2))),
  };
  console.log(
    `Machine: ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ${machine.platform}, ` +
      `load average ${machine.loadAverage.join(' ')}`,
  );
  console.log(
    `Settings: ${settings.duration}s per mode, ${settings.connections} attack connections at ${settings.rate}/s, ` +
      `probe ${settings.probeRate} req/s, slow-read response ${settings.bigBytes} bytes`,
  );
  const upstreamPort = await allocPort();
  const upstream = startChild('upstream', process.execPath, [
    path.join(BENCH_DIR, 'upstream.mjs'),
    '--port',
    String(upstreamPort),
    '--big-bytes',
    String(settings.bigBytes),
  ]);
  const upstreamUrl = `http://${HOST}:${upstreamPort}`;
  const rows = [];
  try {
    await waitForHttp(upstreamPort, upstream);
    // Baseline: the same probe with no attack.
    console.log('\n# baseline: the probe alone');
    {
      const bw = await startBreakwater(upstreamUrl);
      try {
        const window = Math.min(10, settings.duration);
        const measured = await probe(bw.port, window * 1000, settings.probeRate);
        rows.push({
          name: 'none (baseline)',
          ...measured,
          probeSeconds: window,
          peakRssMiB: peakRssMiB(bw.handle.child.pid),
        });
      } finally {
        await stopChild(bw.handle, 5000);
      }
    }
    for (const mode of modes) {
      console.log(`\n# ${mode.name}: ${mode.description}`);
      try {
        const r = await runMode(mode, upstreamUrl);
        rows.push({ name: mode.name, ...r });
        console.log(
          `  held ${r.attack.maxConnected} connections; probe: ${r.sent} sent, ${fmt((100 * r.ok) / r.sent, 1)}% 2xx, ` +
            `p50 ${fmt(r.p50, 1)} ms, p99 ${fmt(r.p99, 1)} ms, failed ${r.failed}; slowhttptest: ${r.attack.exit ?? '?'}`,
        );
      } catch (err) {
        console.log(`  failed: ${err.message}`);
        rows.push({ name: mode.name, error: String(err.message) });
      }
    }
  } finally {
    await stopChild(upstream);
  }
  console.log('\n## breakwater under slowhttptest\n');
  console.log(
    `Machine: ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ` +
      `load average at the start ${machine.loadAverage.join(' ')}  `,
  );
  console.log(
    `Each mode ${settings.duration}s, ${settings.connections} attack connections; probe GET / at ${settings.probeRate} req/s ` +
      `(a failure counts in the latency at the time it failed; no answer in ${PROBE_TIMEOUT_MS / 1000}s is a failure)\n`,
  );
  console.log(markdownTable(rows));
  mkdirSync(RESULTS_DIR, { recursive: true });
  const out = path.join(RESULTS_DIR, 'attack-latest.json');
  writeFileSync(
    out,
    `${JSON.stringify({ date: new Date().toISOString(), machine, settings, rows }, null, 2)}\n`,
  );
  console.log(`\nResults written to ${path.relative(process.cwd(), out) || out}`);
  return rows.some((r) => r.error) ? 1 : 0;
}

let shuttingDown = false;
async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  await Promise.all([...children].map((h) => stopChild(h, 2000)));
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    console.error(`\nattack bench: ${signal}, stopping children`);
    shutdown(130);
  });
}

main(process.argv.slice(2)).then(
  (code) => shutdown(code),
  (err) => {
    console.error(`attack bench: ${err.stack ?? err}`);
    shutdown(1);
  },
);
