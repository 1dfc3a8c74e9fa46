/**
 * The HTML report: one self-contained file (inline CSS and SVG, no script, no outside asset) with
 * the figures' tables and four charts over time: request rate by outcome, latency percentiles,
 * breaker state per upstream, and the deferred queue's depth. Phases are shaded bands on every chart.
 */
import type { Figures } from './figures.js';

const W = 960;
const PAD_L = 150;
const PAD_R = 16;
const PAD_T = 22;
const PAD_B = 26;

const COLORS = {
  upstream: '#3b82f6',
  fallback: '#22c55e',
  shed: '#f59e0b',
  errors: '#ef4444',
  p50: '#6366f1',
  p99: '#db2777',
  closed: '#22c55e',
  half_open: '#f59e0b',
  open: '#ef4444',
  queue: '#0ea5e9',
} as const;

function esc(text: string | number): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const fmt = (x: number) => (Math.abs(x) >= 100 ? x.toFixed(0) : Number(x.toFixed(1)).toString());

interface Frame {
  readonly x: (t: number) => number;
  readonly y: (v: number) => number;
  readonly h: number;
  readonly parts: string[];
}

/** An SVG frame: phase bands, axes with ticks; `yMax` null for a chart without a value axis. */
function frame(f: Figures, h: number, yMax: number | null, yUnit: string): Frame {
  const total = f.duration_s;
  const plotW = W - PAD_L - PAD_R;
  const plotH = h - PAD_T - PAD_B;
  const x = (t: number) => PAD_L + (Math.max(0, Math.min(total, t)) / total) * plotW;
  const y = (v: number) => PAD_T + plotH - (yMax ? (Math.min(v, yMax) / yMax) * plotH : 0);
  const parts: string[] = [];
  f.series.phase_starts_s.forEach((start, i) => {
    const end = f.series.phase_starts_s[i + 1] ?? total;
    parts.push(
      `<rect class="band" x="${x(start).toFixed(1)}" y="${PAD_T}" width="${(x(end) - x(start)).toFixed(1)}" height="${plotH}" fill="${i % 2 ? '#f3f4f6' : '#ffffff'}"/>`,
      `<text class="phase" x="${(x(start) + 3).toFixed(1)}" y="${PAD_T - 6}" font-size="10" fill="#6b7280">${esc(f.phases[i]?.name ?? '')}</text>`,
    );
  });
  parts.push(
    `<line x1="${PAD_L}" y1="${PAD_T + plotH}" x2="${W - PAD_R}" y2="${PAD_T + plotH}" stroke="#9ca3af"/>`,
  );
  const step = total > 40 ? 10 : 5;
  for (let t = 0; t <= total; t += step)
    parts.push(
      `<text x="${x(t).toFixed(1)}" y="${h - 8}" font-size="10" text-anchor="middle" fill="#6b7280">${t} s</text>`,
    );
  if (yMax)
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      parts.push(
        `<line x1="${PAD_L}" y1="${y(v).toFixed(1)}" x2="${W - PAD_R}" y2="${y(v).toFixed(1)}" stroke="#e5e7eb"/>`,
        `<text x="${PAD_L - 6}" y="${(y(v) + 3).toFixed(1)}" font-size="10" text-anchor="end" fill="#6b7280">${fmt(v)}${yUnit}</text>`,
      );
    }
  return { x, y, h, parts };
}

function svg(name: string, title: string, fr: Frame, body: string[]): string {
  return `<svg data-chart="${name}" role="img" aria-label="${esc(title)}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${fr.h}" width="${W}" height="${fr.h}">${fr.parts.join('')}${body.join('')}</svg>`;
}

function legend(items: readonly [string, string][]): string {
  return `<p class="legend">${items.map(([color, label]) => `<span><i style="background:${color}"></i>${esc(label)}</span>`).join('')}</p>`;
}

function rateChart(f: Figures): string {
  const max = Math.max(10, ...f.series.seconds.map((s) => s.sent));
  const fr = frame(f, 240, Math.ceil(max / 50) * 50, '/s');
  const body: string[] = [];
  const barW = Math.max(1, fr.x(1) - fr.x(0) - 1);
  for (const s of f.series.seconds) {
    if (s.t >= f.duration_s) continue;
    let base = 0;
    for (const [value, color] of [
      [s.upstream_2xx, COLORS.upstream],
      [s.fallback_2xx, COLORS.fallback],
      [s.shed_429, COLORS.shed],
      [s.errors, COLORS.errors],
    ] as const) {
      if (value <= 0) continue;
      const top = fr.y(base + value);
      body.push(
        `<rect class="bar" x="${fr.x(s.t).toFixed(1)}" y="${top.toFixed(1)}" width="${barW.toFixed(1)}" height="${(fr.y(base) - top).toFixed(1)}" fill="${color}"/>`,
      );
      base += value;
    }
  }
  return (
    svg('rate', 'Requests per second by outcome', fr, body) +
    legend([
      [COLORS.upstream, '2xx from the upstream'],
      [COLORS.fallback, '2xx from a fallback'],
      [COLORS.shed, '429 shed'],
      [COLORS.errors, 'errors and other refusals'],
    ])
  );
}

function latencyChart(f: Figures): string {
  const max = Math.max(250, ...f.series.seconds.map((s) => s.p99_ms ?? 0));
  const fr = frame(f, 220, Math.ceil(max / 50) * 50, ' ms');
  const line = (key: 'p50_ms' | 'p99_ms', color: string) => {
    const pts = f.series.seconds
      .filter((s) => s[key] !== null && s.t < f.duration_s)
      .map((s) => `${fr.x(s.t + 0.5).toFixed(1)},${fr.y(s[key] ?? 0).toFixed(1)}`);
    return `<polyline class="series" data-series="${key}" fill="none" stroke="${color}" stroke-width="2" points="${pts.join(' ')}"/>`;
  };
  const target = fr.y(200);
  return (
    svg('latency', 'Latency percentiles of answered requests per second', fr, [
      `<line x1="${PAD_L}" y1="${target.toFixed(1)}" x2="${W - PAD_R}" y2="${target.toFixed(1)}" stroke="#111827" stroke-dasharray="4 4"/>`,
      `<text x="${W - PAD_R - 4}" y="${(target - 4).toFixed(1)}" font-size="10" text-anchor="end">P99 target 200 ms</text>`,
      line('p50_ms', COLORS.p50),
      line('p99_ms', COLORS.p99),
    ]) +
    legend([
      [COLORS.p50, 'p50'],
      [COLORS.p99, 'p99'],
    ])
  );
}

function breakerChart(f: Figures): string {
  const names = Object.keys(f.series.breakers);
  const rowH = 18;
  const h = PAD_T + PAD_B + names.length * rowH;
  const fr = frame(f, h, null, '');
  const body: string[] = [];
  names.forEach((name, row) => {
    const steps = f.series.breakers[name] ?? [];
    const y = PAD_T + row * rowH + 2;
    body.push(
      `<text x="${PAD_L - 6}" y="${y + 11}" font-size="10" text-anchor="end" fill="#374151">${esc(name)}</text>`,
    );
    steps.forEach(([t, state], i) => {
      const end = steps[i + 1]?.[0] ?? f.duration_s;
      const color =
        state === 'closed' || state === 'forced_closed'
          ? COLORS.closed
          : state === 'half_open'
            ? COLORS.half_open
            : COLORS.open;
      body.push(
        `<rect class="state" data-state="${esc(state)}" x="${fr.x(t).toFixed(1)}" y="${y}" width="${Math.max(1, fr.x(end) - fr.x(t)).toFixed(1)}" height="${rowH - 4}" fill="${color}"><title>${esc(`${name}: ${state} from ${t} s`)}</title></rect>`,
      );
    });
  });
  return (
    svg('breakers', 'Circuit breaker state per upstream', fr, body) +
    legend([
      [COLORS.closed, 'closed'],
      [COLORS.half_open, 'half-open'],
      [COLORS.open, 'open'],
    ])
  );
}

function queueChart(f: Figures): string {
  const q = f.series.queue_depth;
  const max = Math.max(10, ...(q ?? []).map(([, d]) => d));
  const fr = frame(f, 160, Math.ceil(max / 10) * 10, '');
  const body: string[] = [];
  if (q === null)
    body.push(
      `<text x="${W / 2}" y="80" font-size="13" text-anchor="middle" fill="#6b7280">no queue depth was sampled</text>`,
    );
  else
    body.push(
      `<polyline class="series" data-series="queue" fill="none" stroke="${COLORS.queue}" stroke-width="2" points="${q.map(([t, d]) => `${fr.x(t).toFixed(1)},${fr.y(d).toFixed(1)}`).join(' ')}"/>`,
    );
  return svg('queue', 'Deferred queue depth', fr, body);
}

function phaseTable(f: Figures): string {
  const head = [
    'phase',
    'what happens',
    'req/s',
    'sent',
    '2xx',
    'by fallback',
    '202',
    '429',
    '409',
    'errors',
    'p50 ms',
    'p99 ms',
  ];
  const rows = [...f.phases, { name: 'all', story: '', rate: '', ...f.totals }].map(
    (p) =>
      `<tr><td>${esc(p.name)}</td><td class="story">${esc(p.story)}</td><td>${esc(p.rate)}</td><td>${p.sent}</td><td>${p.ok_2xx}</td><td>${p.by_fallback}</td><td>${p.accepted_202}</td><td>${p.shed_429}</td><td>${p.conflict_409}</td><td>${p.errors}</td><td>${p.p50_ms ?? 'n/a'}</td><td>${p.p99_ms ?? 'n/a'}</td></tr>`,
  );
  return `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

export function htmlReport(f: Figures): string {
  const targets = f.targets
    .map(
      (t) =>
        `<tr class="${t.ok ? 'ok' : 'fail'}"><td>${t.ok ? 'ok' : 'FAILED'}</td><td>${esc(t.name)}</td><td>${esc(t.value)}</td><td>${esc(t.bound)}</td></tr>`,
    )
    .join('');
  const recoveries = f.breakers.recoveries
    .map(
      (r) =>
        `<li>${esc(r.upstream)}${f.replicas > 1 ? ` (replica ${r.replica})` : ''}: closed ${r.closed_after_ms === null ? 'never' : `${r.closed_after_ms} ms`} after ${r.fault_ended_s === null ? 'it last opened (no fault scripted for it: the machine was overloaded)' : 'its fault ended'} (bound ${r.bound_ms} ms)</li>`,
    )
    .join('');
  const excluded = f.availability.excluded
    ? `<p class="note">Not counted: ${f.availability.excluded.count} ${esc(f.availability.excluded.why)}.</p>`
    : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>breakwater promotion day: ${f.ok ? 'targets held' : 'target missed'}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;color:#111827;margin:24px auto;max-width:1000px;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 6px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;background:${f.ok ? '#16a34a' : '#dc2626'}}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border-bottom:1px solid #e5e7eb;padding:3px 8px;text-align:right}
th:first-child,td:first-child,td.story,th:nth-child(2),table.targets td:nth-child(2),table.targets td:nth-child(4),table.targets th{text-align:left}tr.fail td{color:#dc2626;font-weight:600}
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.note{color:#6b7280;font-size:12px}svg{display:block;max-width:100%;height:auto}
</style></head><body>
<h1>breakwater promotion day <span class="verdict">${f.ok ? 'every target held' : 'a target was missed'}</span></h1>
<p>${esc(f.profile)} profile, ${f.replicas} breakwater process${f.replicas > 1 ? 'es' : ''}, ${f.duration_s} s, started ${esc(f.started_at)}; config <code>config/examples/promo-day.yaml</code>.
Availability of user actions <b>${(f.availability.ratio * 100).toFixed(3)} %</b>, P99 <b>${f.totals.p99_ms ?? 'n/a'} ms</b>, duplicate charges <b>${f.payment.duplicate_charges}</b>.</p>
<h2>Targets</h2><table class="targets"><thead><tr><th></th><th>figure</th><th>measured</th><th>target</th></tr></thead><tbody>${targets}</tbody></table>
<h2>Requests per second</h2>${rateChart(f)}
<h2>Latency</h2>${latencyChart(f)}
<h2>Circuit breakers</h2>${breakerChart(f)}<ul>${recoveries || '<li>no breaker was open when its fault ended</li>'}</ul>
<h2>Deferred queue depth</h2>${queueChart(f)}
<h2>Phases</h2>${phaseTable(f)}${excluded}
<h2>Payments and orders</h2>
<p>${f.payment.checkouts} checkouts (${f.payment.checkouts_ok} completed) in ${f.payment.requests} requests, double clicks and retries with the same Idempotency-Key included: ${f.payment.charges} charges for ${f.payment.keys_charged} keys, <b>${f.payment.duplicate_charges} duplicate charges</b>.
Orders: ${f.orders.writes} writes, ${f.orders.created} created, ${f.orders.refused} refused.
Deferred order writes: ${f.deferred ? `${f.deferred.accepted} accepted with 202, ${f.deferred.delivered} delivered, <b>${f.deferred.lost} lost, ${f.deferred.duplicated} doubled</b>` : 'n/a'}.
Checkout sagas: ${f.sagas ? `${f.sagas.completed} completed, ${f.sagas.compensated} compensated, <b>${f.sagas.stuck} not fully compensated</b>` : 'n/a'}.</p>
<p class="note">Shed by the rate limiters: ${f.proxy.rate_limited} requests. Fallbacks by trigger: ${esc(
    Object.entries(f.proxy.fallbacks)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none',
  )}.</p>
</body></html>
`;
}
