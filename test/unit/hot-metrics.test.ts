/**
 * The cached metric children of the hot path (src/observability/hot-metrics.ts): the same exported
 * figures as prom-client's own children, counted locally and merged when read.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { hotCounter, hotGauge, hotHistogram } from '../../src/observability/hot-metrics.js';

const BUCKETS = [0.001, 0.01, 0.1, 1];

describe('hot metric children', () => {
  it('a hot histogram exports exactly what prom-client exports for the same observations', async () => {
    const registry = new Registry();
    const plain = new Histogram({
      name: 'plain',
      help: 'h',
      labelNames: ['route'],
      buckets: BUCKETS,
      registers: [registry],
    });
    const hot = hotHistogram(
      new Histogram({
        name: 'hot',
        help: 'h',
        labelNames: ['route'],
        buckets: BUCKETS,
        registers: [registry],
      }),
      ['route'],
      BUCKETS,
    );
    const values = [0.0005, 0.001, 0.002, 0.05, 0.5, 2, 30, 0.01];
    for (const v of values) {
      plain.labels('a').observe(v);
      hot.labels('a').observe(v);
    }
    const strip = (text: string, name: string) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(name))
        .map((l) => l.slice(name.length));
    const text = await registry.metrics();
    expect(strip(text, 'hot')).toEqual(strip(text, 'plain'));
    // Observations after a scrape are added to what was merged before.
    hot.labels('a').observe(0.5);
    plain.labels('a').observe(0.5);
    const again = await registry.metrics();
    expect(strip(again, 'hot')).toEqual(strip(again, 'plain'));
    expect(again).toContain('hot_count{route="a"} 9');
  });

  it('a hot counter and gauge count locally and show the totals when read', async () => {
    const registry = new Registry();
    const c = hotCounter(
      new Counter({ name: 'c', help: 'c', labelNames: ['l', 'm'], registers: [registry] }),
      ['l', 'm'],
    );
    const g = hotGauge(new Gauge({ name: 'g', help: 'g', labelNames: ['l'], registers: [registry] }), ['l']);
    const child = c.labels('x', 'GET');
    expect(c.labels('x', 'GET')).toBe(child);
    for (let i = 0; i < 5; i++) child.inc();
    c.labels('y', 'GET').inc(2);
    g.labels('x').inc();
    g.labels('x').inc();
    g.labels('x').dec();
    const text = await registry.metrics();
    expect(text).toContain('c{l="x",m="GET"} 5');
    expect(text).toContain('c{l="y",m="GET"} 2');
    expect(text).toContain('g{l="x"} 1');
    child.inc();
    expect(await registry.metrics()).toContain('c{l="x",m="GET"} 6');
  });

  it('remove() drops the series and its child; a later count starts a new series from zero', async () => {
    const registry = new Registry();
    const c = hotCounter(new Counter({ name: 'c', help: 'c', labelNames: ['u'], registers: [registry] }), [
      'u',
    ]);
    c.labels('gone').inc(3);
    await registry.metrics();
    c.remove({ u: 'gone' });
    expect(await registry.metrics()).not.toContain('c{u="gone"}');
    c.labels('gone').inc();
    expect(await registry.metrics()).toContain('c{u="gone"} 1');
  });
});
