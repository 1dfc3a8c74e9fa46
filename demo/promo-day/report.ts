/**
 * The terminal side of the demo: the live view (redrawn in place on a TTY, one plain line a
 * second otherwise) and the closing text report.
 */
import type { Figures } from './figures.js';
import type { LiveSnapshot } from './run.js';

const BREAKER_MARK: Record<string, string> = {
  closed: 'closed',
  open: 'OPEN',
  half_open: 'half-open',
  forced_open: 'FORCED-OPEN',
  forced_closed: 'forced-closed',
  none: '-',
};

function pct(x: number | null): string {
  return x === null ? '  n/a' : `${(x * 100).toFixed(1).padStart(5)}%`;
}

/** The live view's lines for one snapshot. */
export function liveLines(s: LiveSnapshot, color: boolean): string[] {
  const p = s.phases[s.phase];
  const red = (t: string) => (color ? `\x1b[31m${t}\x1b[0m` : t);
  const bold = (t: string) => (color ? `\x1b[1m${t}\x1b[0m` : t);
  const breakers = Object.entries(s.breakers)
    .map(([name, state]) => {
      const mark = BREAKER_MARK[state] ?? state;
      return `${name} ${state === 'closed' ? mark : red(mark)}`;
    })
    .join(' | ');
  return [
    bold(
      `promo-day  ${s.t_s.toFixed(1).padStart(5)} s / ${s.total_s} s   phase ${s.phase + 1}/${s.phases.length} ${p?.name ?? ''}`,
    ),
    `  ${p?.story ?? ''}`,
    `  sent ${String(s.rate).padStart(4)} req/s (script ${p?.rate ?? 0})   2xx ${pct(s.ok_ratio)}   fallbacks ${String(s.fallbacks_per_s).padStart(3)}/s   shed by limit ${String(s.shed_per_s).padStart(3)}/s   errors ${String(s.errors_per_s).padStart(3)}/s   p99 ${s.p99_ms === null ? 'n/a' : `${s.p99_ms.toFixed(0)} ms`}`,
    `  breakers: ${breakers}`,
    `  degraded: ${s.degraded.length ? red(s.degraded.join(', ')) : 'none'}   deferred queue: ${s.deferred_depth === null ? 'n/a' : s.deferred_depth}   in flight: ${s.in_flight}`,
  ];
}

/** A live view writing to `out`: in place on a TTY, otherwise a plain line per second. */
export function liveView(out: NodeJS.WriteStream): (s: LiveSnapshot) => void {
  let drawn = 0;
  let lastPlain = -1;
  return (s) => {
    if (out.isTTY) {
      const lines = liveLines(s, true);
      if (drawn > 0) out.write(`\x1b[${drawn}A`);
      out.write(`${lines.map((l) => `\x1b[2K${l}`).join('\n')}\n`);
      drawn = lines.length;
      return;
    }
    const second = Math.floor(s.t_s);
    if (second === lastPlain) return;
    lastPlain = second;
    const p = s.phases[s.phase];
    const open = Object.entries(s.breakers)
      .filter(([, st]) => st !== 'closed')
      .map(([n, st]) => `${n}=${st}`);
    out.write(
      `t=${s.t_s.toFixed(0)}s phase=${p?.name} rate=${s.rate}/s 2xx=${pct(s.ok_ratio).trim()} fallbacks=${s.fallbacks_per_s}/s shed=${s.shed_per_s}/s errors=${s.errors_per_s}/s p99=${s.p99_ms === null ? 'n/a' : s.p99_ms.toFixed(0)}ms breakers_not_closed=[${open.join(',')}] degraded=[${s.degraded.join(',')}] deferred_queue=${s.deferred_depth ?? 'n/a'}\n`,
    );
  };
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length))) ?? [];
  return rows
    .map((r) =>
      r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  '),
    )
    .join('\n');
}

const ms = (x: number | null) => (x === null ? 'n/a' : x.toFixed(1));

/** The closing report as text. */
export function textReport(f: Figures): string {
  const out: string[] = [];
  out.push(
    `promo-day report (${f.profile} profile, ${f.replicas} breakwater process${f.replicas > 1 ? 'es' : ''}, ${f.duration_s} s)`,
  );
  out.push('');
  const rows: string[][] = [
    ['phase', 'sent', '2xx', 'by fallback', '202', '429', '409', 'errors', 'p50 ms', 'p99 ms'],
  ];
  for (const p of [...f.phases, { name: 'all', ...f.totals }])
    rows.push([
      p.name,
      String(p.sent),
      String(p.ok_2xx),
      String(p.by_fallback),
      String(p.accepted_202),
      String(p.shed_429),
      String(p.conflict_409),
      String(p.errors),
      ms(p.p50_ms),
      ms(p.p99_ms),
    ]);
  out.push(table(rows));
  out.push('');
  out.push(
    `availability of user actions: ${(f.availability.ratio * 100).toFixed(3)} % (${f.availability.ok} of ${f.availability.actions}; a checkout counts once, after the client's retries)`,
  );
  const failed = Object.entries(f.availability.failed);
  if (failed.length) out.push(`  failed: ${failed.map(([k, n]) => `${k} x${n}`).join(', ')}`);
  if (f.availability.excluded)
    out.push(`  not counted: ${f.availability.excluded.count} ${f.availability.excluded.why}`);
  out.push(
    `shed by the rate limiters: ${f.proxy.rate_limited} requests (answered from cache instead: ${f.proxy.fallbacks.rate_limited ?? 0}); fallbacks by trigger: ${
      Object.entries(f.proxy.fallbacks)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    }`,
  );
  out.push('');
  out.push('breaker transitions:');
  for (const t of f.breakers.transitions)
    out.push(
      `  ${t.t_s.toFixed(2).padStart(7)} s  ${f.replicas > 1 ? `replica ${t.replica}  ` : ''}${t.upstream}: ${t.from} -> ${t.to} (${t.reason})`,
    );
  if (f.breakers.transitions.length === 0) out.push('  none');
  out.push('time to recover (fault over -> breaker closed):');
  for (const r of f.breakers.recoveries)
    out.push(
      `  ${r.upstream}${f.replicas > 1 ? ` (replica ${r.replica})` : ''}: ${r.closed_after_ms === null ? 'not closed' : `${r.closed_after_ms} ms`}${r.fault_ended_s === null ? ' after it last opened (no fault scripted: overload)' : ''} (bound ${r.bound_ms} ms)`,
    );
  if (f.breakers.recoveries.length === 0) out.push('  no breaker was open when its fault ended');
  if (f.degradation.length)
    out.push(
      `degradation: ${f.degradation.map((d) => `${d.t_s.toFixed(1)} s ${d.upstream} -> ${d.to}`).join('; ')}`,
    );
  out.push('');
  out.push(
    `payment: ${f.payment.checkouts} checkouts (${f.payment.checkouts_ok} completed) in ${f.payment.requests} requests (double clicks and retries with the same key); ${f.payment.charges} charges for ${f.payment.keys_charged} keys; duplicate charges: ${f.payment.duplicate_charges}`,
  );
  out.push(`orders: ${f.orders.writes} writes, ${f.orders.created} created, ${f.orders.refused} refused`);
  out.push(
    f.deferred
      ? `deferred: ${f.deferred.accepted} accepted (202), ${f.deferred.delivered} delivered, ${f.deferred.lost} lost, ${f.deferred.duplicated} doubled`
      : 'deferred: n/a (not measured)',
  );
  out.push(
    f.sagas
      ? `sagas: ${f.sagas.completed} completed, ${f.sagas.compensated} compensated, ${f.sagas.stuck} not fully compensated`
      : 'sagas: n/a (not measured)',
  );
  out.push(
    `machine: ${f.machine.cpus} CPUs, load ${f.machine.load_1m_at_start} at start, ${f.machine.load_1m_at_end} at end; event-loop delay p99 of the shop and shoppers ${f.machine.client_loop_delay_p99_ms} ms`,
  );
  if (f.skipped_by_client)
    out.push(`client: ${f.skipped_by_client} requests not started (1000 already in flight)`);
  out.push('');
  out.push('targets:');
  for (const t of f.targets) out.push(`  ${t.ok ? 'ok  ' : 'FAIL'}  ${t.name}: ${t.value} (${t.bound})`);
  return out.join('\n');
}

/** The first failing target, as one line naming the figure (null when all hold). */
export function failure(f: Figures): string | null {
  const t = f.targets.find((x) => !x.ok);
  return t ? `target missed: ${t.name} = ${t.value}, wanted ${t.bound}` : null;
}
