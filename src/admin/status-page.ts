/**
 * `GET /` on the admin listener: a self-contained status page (no external assets) for the
 * operator who opens it during an incident. It reads `/state` every 2 s and shows, per upstream:
 * request rate, error rate, p50/p99 latency, the breaker state with its recent transitions, limiter
 * and bulkhead use, fallbacks served, degradation, endpoints, the deferred-delivery queue; and the
 * health of a shared store (Redis) in the header.
 */
import type { FastifyInstance } from 'fastify';

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>breakwater status</title>
<style>
  :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; }
  * { box-sizing: border-box; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
  header { display: flex; gap: 16px; align-items: baseline; padding: 12px 20px; background: #24292f; color: #fff; }
  header h1 { font-size: 18px; margin: 0; }
  header .meta { color: #d0d7de; font-size: 12px; }
  header .stale { color: #ffb4a8; font-weight: 600; }
  main { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 16px; padding: 20px; }
  .card { background: #fff; border: 1px solid var(--line); border-left: 6px solid var(--ok); border-radius: 6px; padding: 12px 14px; }
  .card.open, .card.forced_open { border-left-color: var(--bad); }
  .card.half_open, .card.degraded { border-left-color: var(--warn); }
  .card h2 { font-size: 16px; margin: 0 0 8px; display: flex; justify-content: space-between; align-items: center; }
  .badge { font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px; color: #fff; background: var(--ok); text-transform: uppercase; }
  .badge.open, .badge.forced_open { background: var(--bad); }
  .badge.half_open, .badge.degraded { background: var(--warn); }
  .badge.none { background: var(--muted); }
  .figures { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px; margin-bottom: 8px; }
  .fig { background: #f6f8fa; border-radius: 4px; padding: 4px 6px; }
  .fig b { display: block; font-size: 16px; }
  .fig span { color: var(--muted); font-size: 11px; }
  .fig.bad b { color: var(--bad); }
  table { width: 100%; border-collapse: collapse; font-size: 12px; }
  td { padding: 2px 4px; border-top: 1px solid #eaeef2; vertical-align: top; }
  td:first-child { color: var(--muted); width: 35%; }
  ul { margin: 4px 0 0; padding-left: 16px; font-size: 12px; color: var(--muted); }
</style>
</head>
<body>
<header><h1>breakwater</h1><span class="meta" id="meta">loading…</span></header>
<main id="upstreams"></main>
<script>
(() => {
  let prev = null;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const fmt = (n, d = 0) => (n === null || n === undefined || Number.isNaN(n) ? '–' : Number(n).toFixed(d));
  function card(name, u, rate, dq) {
    const b = u.breaker;
    const state = b ? b.state : 'none';
    const degraded = u.degradation && u.degradation.degraded;
    const cls = degraded && state === 'closed' ? 'degraded' : state;
    const rows = [];
    const g = u.rate_limiter && u.rate_limiter.global;
    if (g) rows.push(['rate limiter', 'global ' + u.rate_limiter.rate_per_second + '/s (burst ' + u.rate_limiter.burst + '), ' + (g.remaining === null ? '–' : g.remaining) + ' left; ' + (g.store.up ? 'Redis up' : 'Redis DOWN: ' + (g.fallback === 'local' ? 'local share ' + fmt(g.local_share_per_second, 1) + '/s' : g.fallback))]);
    else if (u.rate_limiter) rows.push(['rate limiter', fmt(u.rate_limiter.tokens, 0) + ' / ' + u.rate_limiter.burst + ' tokens, ' + u.rate_limiter.queued + ' queued (' + u.rate_limiter.mode + ')']);
    if (u.bulkhead) rows.push(['bulkhead', u.bulkhead.in_flight + ' / ' + u.bulkhead.max_concurrent + ' in flight, ' + u.bulkhead.queued + ' queued']);
    if (b) rows.push(['breaker', state + (b.forced ? ' (by the operator: no probes)' : '') + (b.retry_after_ms ? ', probe in ' + fmt(b.retry_after_ms / 1000, 1) + ' s' : '') + (state === 'closed' ? ', ' + b.consecutive_failures + ' consecutive failures' : '')]);
    if (u.degradation) rows.push(['degradation', degraded ? 'DEGRADED' + (u.degradation.last ? ' (' + u.degradation.last.condition + ')' : '') : 'normal']);
    if (dq !== undefined) rows.push(['deferred queue', dq ? dq.pending + ' pending, ' + dq.delivering + ' delivering, oldest ' + fmt(dq.oldest_pending_age_ms / 1000, 0) + ' s' : 'empty']);
    rows.push(['fallback', u.fallback ? u.fallback + ', ' + u.traffic.fallbacks + ' served' : 'none']);
    for (const e of u.endpoints) rows.push(['endpoint', e.url + ' (' + e.health + (e.ejected_for_ms ? ', ejected ' + fmt(e.ejected_for_ms / 1000, 0) + ' s' : '') + ', ' + e.in_flight + ' in flight)']);
    const transitions = b && b.recent_transitions.length
      ? '<ul>' + b.recent_transitions.slice(-5).reverse().map((t) => '<li>' + esc(t.from) + ' → ' + esc(t.to) + ': ' + esc(t.reason) + ', ' + fmt(t.ago_ms / 1000, 0) + ' s ago</li>').join('') + '</ul>'
      : '';
    return '<section class="card ' + esc(cls) + '" data-upstream="' + esc(name) + '">' +
      '<h2>' + esc(name) + '<span class="badge ' + esc(cls) + '" data-breaker-state="' + esc(state) + '">' + esc(degraded ? 'degraded' : state === 'none' ? 'no breaker' : state.replace('_', ' ')) + '</span></h2>' +
      '<div class="figures">' +
      '<div class="fig"><b>' + fmt(rate.rps, 1) + '</b><span>req/s</span></div>' +
      '<div class="fig' + (rate.errorRate > 0.05 ? ' bad' : '') + '"><b>' + fmt(rate.errorRate * 100, 1) + '%</b><span>5xx</span></div>' +
      '<div class="fig"><b>' + fmt(u.traffic.p50_ms, 1) + '</b><span>p50 ms</span></div>' +
      '<div class="fig"><b>' + fmt(u.traffic.p99_ms, 1) + '</b><span>p99 ms</span></div>' +
      '</div><table>' + rows.map((r) => '<tr><td>' + esc(r[0]) + '</td><td>' + esc(r[1]) + '</td></tr>').join('') + '</table>' + transitions + '</section>';
  }
  async function refresh() {
    const meta = document.getElementById('meta');
    try {
      const res = await fetch('state', { cache: 'no-store' });
      const s = await res.json();
      const now = performance.now();
      const html = Object.entries(s.upstreams).map(([name, u]) => {
        const p = prev && prev.s.upstreams[name];
        const dt = prev ? (now - prev.at) / 1000 : 0;
        const dReq = p ? u.traffic.requests - p.traffic.requests : 0;
        const dErr = p ? u.traffic.errors - p.traffic.errors : 0;
        const dq = s.deferred ? s.deferred.upstreams[name] || null : undefined;
        return card(name, u, { rps: dt > 0 ? dReq / dt : null, errorRate: dReq > 0 ? dErr / dReq : 0 }, dq);
      }).join('');
      document.getElementById('upstreams').innerHTML = html;
      const cache = s.cache ? ' · cache ' + fmt(s.cache.bytes / 1024, 0) + ' KiB in ' + s.cache.entries + ' entries' : '';
      const r = s.stores && s.stores.redis;
      const store = r ? ' · redis ' + r.address + ' ' + (r.up ? 'up' : 'DOWN (' + r.connection + ', breaker ' + r.breaker + (r.last_error ? ', ' + r.last_error : '') + ')') : '';
      meta.textContent = s.phase + ' · config ' + s.config_hash + cache + store + ' · updated ' + new Date().toLocaleTimeString();
      meta.className = r && !r.up ? 'meta stale' : 'meta';
      prev = { s, at: now };
    } catch (err) {
      meta.textContent = 'cannot reach /state: ' + err;
      meta.className = 'meta stale';
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
</script>
</body>
</html>
`;

export function statusPage() {
  return async (app: FastifyInstance) => {
    app.get('/', async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      reply.header(
        'content-security-policy',
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
      );
      reply.type('text/html; charset=utf-8');
      return PAGE;
    });
  };
}
