/**
 * Open-loop load: GET / on 127.0.0.1:port at a fixed rate, whatever becomes of the requests before.
 * Request i is due at start + i/rate; its latency is taken from that scheduled time, not from when
 * it was actually sent, so a proxy that stalls is charged for the requests queued behind the stall
 * (coordinated omission corrected, as wrk2 does). Keep-alive connections from an undici Pool; a
 * request that finds every connection busy waits in the pool's queue, and that wait counts too.
 *
 *   node test/bench/open-loop.mjs --port 18001 --rate 2000 --duration 8 [--warmup 2] [--connections 50]
 *       [--cpu-pid PID] [--sample-pid PID --sample-every 5]
 *
 * The warm-up runs in this same process, at the same rate, before the measurement: a fresh Node
 * process spends its first ~100 ms compiling undici's request path, and with latency taken from the
 * scheduled time that stall of the *generator* would be charged to the first ~90 requests, enough
 * to make the p99 of an 8 s run ~90 ms whatever the proxy does (seen with no proxy at all).
 *
 * Prints one JSON object on stdout: sent, ok, non2xx, errors, timeouts, p50/p90/p99/p999 and max
 * (ms), the rate achieved, with --cpu-pid the user+system CPU time (ms) that process used from the
 * start of the measurement to its last answer (`cpuMs`, over `wallMs`), and with --sample-pid
 * that process's RSS in MiB every --sample-every seconds. Bounded: stops sending after the
 * duration and gives the requests still out 10 s.
 */
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { cpuMs, rssMiB } from './lib/processes.mjs';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    rate: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string', default: '0' },
    connections: { type: 'string', default: '50' },
    'cpu-pid': { type: 'string' },
    'sample-pid': { type: 'string' },
    'sample-every': { type: 'string', default: '5' },
  },
});
const port = Number(values.port);
const rate = Number(values.rate);
const duration = Number(values.duration);
const warmup = Number(values.warmup);
const connections = Number(values.connections);
if (!(port > 0 && rate > 0 && duration > 0 && warmup >= 0 && connections > 0)) {
  process.stderr.write(
    'open-loop: --port, --rate, --duration (and --warmup, --connections) must be positive\n',
  );
  process.exit(2);
}
const samplePid = values['sample-pid'] ? Number(values['sample-pid']) : undefined;
const cpuPid = values['cpu-pid'] ? Number(values['cpu-pid']) : undefined;
const sampleEveryMs = Number(values['sample-every']) * 1000;
const DRAIN_MS = 10_000;
const TIMEOUT_MS = 10_000;

const pool = new Pool(`http://127.0.0.1:${port}`, {
  connections,
  pipelining: 1,
  headersTimeout: TIMEOUT_MS,
  bodyTimeout: TIMEOUT_MS,
});

let latencies = new Float64Array(1 << 16);
let count = 0;
function record(ms) {
  if (count === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[count++] = ms;
}

const totals = { sent: 0, ok: 0, non2xx: 0, errors: 0, timeouts: 0 };
let outstanding = 0;
let measuring = false;

function send(scheduled) {
  const counted = measuring;
  outstanding++;
  if (counted) totals.sent++;
  pool
    .request({ path: '/', method: 'GET' })
    .then(async ({ statusCode, body }) => {
      for await (const _chunk of body) {
        // drained
      }
      return statusCode;
    })
    .then(
      (status) => {
        outstanding--;
        if (!counted) return;
        record(performance.now() - scheduled);
        if (status >= 200 && status < 300) totals.ok++;
        else totals.non2xx++;
      },
      (err) => {
        outstanding--;
        if (!counted) return;
        record(performance.now() - scheduled);
        if (/timeout/i.test(String(err?.code ?? err?.message))) totals.timeouts++;
        else totals.errors++;
      },
    );
}

/** Sends every request due by now in [from, from + seconds), in 1 ms ticks. */
function phase(seconds) {
  return new Promise((resolve) => {
    const start = performance.now();
    const total = Math.round(rate * seconds);
    const interval = 1000 / rate;
    let i = 0;
    const tick = () => {
      const now = performance.now();
      const due = Math.min(total, Math.floor((now - start) / interval) + 1);
      for (; i < due; i++) send(start + i * interval);
      if (i >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
}

const samples = [];
await phase(warmup);
// Let the warm-up's last answers come back before the measurement starts.
for (let i = 0; i < 200 && outstanding > 0; i++) await new Promise((r) => setTimeout(r, 5));
measuring = true;
const cpuStart = cpuMs(cpuPid);
const t0 = performance.now();
const sampler =
  samplePid === undefined
    ? undefined
    : setInterval(() => {
        samples.push({ s: Math.round((performance.now() - t0) / 1000), rssMiB: rssMiB(samplePid) });
      }, sampleEveryMs);
if (samplePid !== undefined) samples.push({ s: 0, rssMiB: rssMiB(samplePid) });
await phase(duration);
const sendEnd = performance.now();
const drainDeadline = Date.now() + DRAIN_MS;
while (outstanding > 0 && Date.now() < drainDeadline) await new Promise((r) => setTimeout(r, 1));
const cpuEnd = cpuMs(cpuPid);
const wallMs = performance.now() - t0;
if (sampler) {
  clearInterval(sampler);
  samples.push({ s: Math.round((performance.now() - t0) / 1000), rssMiB: rssMiB(samplePid) });
}
totals.timeouts += Math.max(0, totals.sent - totals.ok - totals.non2xx - totals.errors - totals.timeouts);

const sorted = latencies.slice(0, count).sort();
const pct = (q) =>
  count ? sorted[Math.min(count - 1, Math.max(0, Math.ceil((q / 100) * count) - 1))] : Number.NaN;
process.stdout.write(
  `${JSON.stringify({
    rate,
    achievedRate: totals.sent / ((sendEnd - t0) / 1000),
    ...totals,
    totalRequests: totals.ok + totals.non2xx,
    p50: pct(50),
    p90: pct(90),
    p99: pct(99),
    p999: pct(99.9),
    max: count ? sorted[count - 1] : Number.NaN,
    cpuMs: cpuStart === undefined || cpuEnd === undefined ? undefined : cpuEnd - cpuStart,
    wallMs,
    samples,
  })}\n`,
);
pool.destroy().finally(() => process.exit(0));
