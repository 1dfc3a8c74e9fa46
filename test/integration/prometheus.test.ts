/**
 * A real Prometheus server (Debian's package) scrapes breakwater on loopback; the request counter
 * is queryable, and every PromQL expression of the shipped Grafana dashboard evaluates without error.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { freePort, waitFor } from '../kit/process.js';
import { requireTool } from '../kit/tools.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const prometheus = requireTool('prometheus', 'prometheus');

interface PromResult {
  status: string;
  error?: string;
  data: { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] };
}

describe.skipIf(!prometheus.available)('Prometheus scrapes breakwater', () => {
  let up: TestUpstream;
  let bw: Running;
  let prom: ChildProcess;
  let promUrl: string;

  beforeAll(async () => {
    up = await startUpstream((req, res) => {
      res.statusCode = req.url === '/fail' ? 503 : 200;
      res.end();
    });
    bw = await startBreakwater(`
listeners: [{ name: main, port: 0, routes: [{ name: api, upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], circuit_breaker: { failure_threshold: 50 }, retry: { initial_wait: 1ms } }
`);
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    const dir = mkdtempSync(join(tmpdir(), 'bw-prom-'));
    const admin = new URL(bw.adminUrl).host;
    writeFileSync(
      join(dir, 'prometheus.yml'),
      `global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: breakwater\n    static_configs: [{ targets: ["${admin}"] }]\n`,
    );
    prom = spawn(
      prometheus.path ?? 'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: 'ignore' },
    );
    // A program that cannot start (permissions, a broken install) fails here, not as an unhandled error.
    const failed = new Promise<never>((_, reject) => prom.once('error', reject));
    failed.catch(() => undefined);
    await Promise.race([waitFor(`${promUrl}/-/ready`, 200, 20_000), failed]);
  }, 40_000);

  afterAll(async () => {
    if (prom?.pid !== undefined && prom.exitCode === null) prom.kill('SIGTERM');
    await bw?.stop();
    await up?.close();
  });

  async function query(expr: string): Promise<PromResult> {
    const res = await request(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    return (await res.body.json()) as PromResult;
  }

  it('a query returns the request counter', async () => {
    for (let i = 0; i < 20; i++) await (await request(`${bw.url()}/${i % 4 ? 'ok' : 'fail'}`)).body.dump();
    const deadline = Date.now() + 20_000;
    let result: PromResult | undefined;
    while (Date.now() < deadline) {
      result = await query('sum by (code) (breakwater_requests_total{route="api"})');
      if (result.data.result.length >= 2) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const byCode = Object.fromEntries(
      result?.data.result.map((r) => [r.metric.code, Number(r.value[1])]) ?? [],
    );
    expect(byCode).toEqual({ '200': 15, '503': 5 });
  }, 30_000);

  it('every expression of the Grafana dashboard evaluates', async () => {
    const dashboard = JSON.parse(
      readFileSync(join(import.meta.dirname, '../../k8s/grafana-dashboard.json'), 'utf8'),
    ) as {
      panels: { title: string; targets: { expr: string }[] }[];
    };
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr })));
    expect(exprs.length).toBeGreaterThanOrEqual(10);
    for (const { panel, expr } of exprs) {
      const concrete = expr.replaceAll('$upstream', '.*').replaceAll('$__rate_interval', '1m');
      const r = await query(concrete);
      expect({ panel, status: r.status, error: r.error }).toEqual({
        panel,
        status: 'success',
        error: undefined,
      });
    }
    // The panels that matter most return data (rates need two scrapes of a series).
    let rates: PromResult | undefined;
    for (let i = 0; i < 40; i++) {
      rates = await query('sum by (upstream) (rate(breakwater_requests_total[1m]))');
      if (rates.data.result.length) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(rates?.data.result.map((r) => r.metric.upstream)).toEqual(['app']);
    expect(
      (await query('max by (upstream, state) (breakwater_circuit_breaker_state) == 1')).data.result[0]?.metric
        .state,
    ).toBe('closed');
  }, 30_000);
});
