/**
 * Cheap children for the metrics touched on every request. prom-client's `labels(...)` child
 * validates and hashes its labels again on every `inc()`/`observe()`; these children are made
 * once per label set (and kept), and count in plain numbers that are added to the metric when it is
 * read (a scrape, `get()`): a request costs an addition, and a scrape the merge. Only counters,
 * up/down gauges and histograms with bounded label sets (names from the config) use them.
 */
import type { Counter, Gauge, Histogram } from 'prom-client';

export interface CounterChild {
  inc(value?: number): void;
}
export interface GaugeChild {
  inc(value?: number): void;
  dec(value?: number): void;
}
export interface HistogramChild {
  observe(value: number): void;
}

type Labels = Record<string, string>;

function labelsOf(names: readonly string[], values: readonly (string | number)[]): Labels {
  if (names.length !== values.length)
    throw new Error(`expected ${names.length} label values (${names.join(', ')}), got ${values.length}`);
  const out: Labels = {};
  for (let i = 0; i < names.length; i++) out[names[i] as string] = String(values[i]);
  return out;
}

/**
 * `remove()` of the metric also forgets the children of the series removed (their counts were
 * merged by the read that found the series), so a removed upstream's children are not kept.
 */
function forgetOnRemove(
  metric: object,
  labelNames: readonly string[],
  children: Map<string, { labels: Labels }>,
): void {
  const remove = (metric as { remove: (...args: unknown[]) => void }).remove.bind(metric);
  Object.assign(metric, {
    remove(...args: unknown[]) {
      const first = args[0];
      const wanted: Labels =
        typeof first === 'object' && first !== null
          ? (first as Labels)
          : labelsOf(labelNames, args as (string | number)[]);
      for (const [key, c] of children)
        if (Object.entries(wanted).every(([k, v]) => c.labels[k] === String(v))) children.delete(key);
      remove(...args);
    },
  });
}

/** Runs `flush` before each read of `metric` (prom-client calls `collect` in `get()`). */
function beforeRead(metric: object, flush: () => void): void {
  const own = (metric as { collect?: () => unknown }).collect;
  Object.assign(metric, {
    collect() {
      flush();
      return own?.call(metric);
    },
  });
}

/**
 * `counter.labels(...)` returns a cached child that counts locally; the counts are added to the
 * counter when it is read.
 */
export type HotCounter<T extends string> = Omit<Counter<T>, 'labels'> & {
  labels(...values: (string | number)[]): CounterChild;
};
export type HotGauge<T extends string> = Omit<Gauge<T>, 'labels'> & {
  labels(...values: (string | number)[]): GaugeChild;
};
export type HotHistogram<T extends string> = Omit<Histogram<T>, 'labels'> & {
  labels(...values: (string | number)[]): HistogramChild;
};

export function hotCounter<T extends string>(counter: Counter<T>, labelNames: readonly T[]): HotCounter<T> {
  const children = new Map<string, { labels: Labels; n: number; inc(v?: number): void }>();
  beforeRead(counter, () => {
    for (const c of children.values()) {
      if (c.n === 0) continue;
      const n = c.n;
      c.n = 0;
      counter.inc(c.labels as Partial<Record<T, string>>, n);
    }
  });
  const labels = (...values: (string | number)[]): CounterChild => {
    const key = values.join('\u0000');
    let c = children.get(key);
    if (!c) {
      const child = {
        labels: labelsOf(labelNames, values),
        n: 0,
        inc(v = 1) {
          child.n += v;
        },
      };
      c = child;
      children.set(key, c);
    }
    return c;
  };
  Object.assign(counter, { labels });
  forgetOnRemove(counter, labelNames, children);
  return counter;
}

/** As hotCounter, for a gauge moved by inc/dec (set() still goes to prom-client at once). */
export function hotGauge<T extends string>(gauge: Gauge<T>, labelNames: readonly T[]): HotGauge<T> {
  const children = new Map<string, { labels: Labels; n: number } & GaugeChild>();
  beforeRead(gauge, () => {
    for (const c of children.values()) {
      if (c.n === 0) continue;
      const n = c.n;
      c.n = 0;
      gauge.inc(c.labels as Partial<Record<T, string>>, n);
    }
  });
  const labels = (...values: (string | number)[]): GaugeChild => {
    const key = values.join('\u0000');
    let c = children.get(key);
    if (!c) {
      const child = {
        labels: labelsOf(labelNames, values),
        n: 0,
        inc(v = 1) {
          child.n += v;
        },
        dec(v = 1) {
          child.n -= v;
        },
      };
      c = child;
      children.set(key, c);
    }
    return c;
  };
  Object.assign(gauge, { labels });
  forgetOnRemove(gauge, labelNames, children);
  return gauge;
}

interface HistogramSeries {
  labels: Labels;
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

/**
 * As hotCounter, for a histogram: a child keeps its own bucket counts, sum and count, added to the
 * histogram's series when it is read. (prom-client has no call that adds counts to a bucket, so the
 * series is reached through the histogram's map of series, made by its public `zero()`.)
 */
export function hotHistogram<T extends string>(
  histogram: Histogram<T>,
  labelNames: readonly T[],
  buckets: readonly number[],
): HotHistogram<T> {
  interface Child extends HistogramChild {
    labels: Labels;
    counts: Float64Array;
    sum: number;
    count: number;
  }
  const children = new Map<string, Child>();
  const seriesMap = () => (histogram as unknown as { hashMap: Record<string, HistogramSeries> }).hashMap;
  const sameLabels = (a: Labels, b: Labels) => labelNames.every((n) => a[n] === b[n]);
  const seriesOf = (labels: Labels): HistogramSeries => {
    for (const s of Object.values(seriesMap())) if (sameLabels(s.labels, labels)) return s;
    histogram.zero(labels as Partial<Record<T, string>>);
    for (const s of Object.values(seriesMap())) if (sameLabels(s.labels, labels)) return s;
    throw new Error(`histogram ${JSON.stringify(labels)}: no series after zero()`);
  };
  beforeRead(histogram, () => {
    for (const c of children.values()) {
      if (c.count === 0) continue;
      const s = seriesOf(c.labels);
      s.sum += c.sum;
      s.count += c.count;
      for (let i = 0; i < buckets.length; i++) {
        const b = buckets[i] as number;
        s.bucketValues[b] = (s.bucketValues[b] ?? 0) + (c.counts[i] as number);
      }
      c.counts.fill(0);
      c.sum = 0;
      c.count = 0;
    }
  });
  const labels = (...values: (string | number)[]): HistogramChild => {
    const key = values.join('\u0000');
    let c = children.get(key);
    if (!c) {
      const child: Child = {
        labels: labelsOf(labelNames, values),
        counts: new Float64Array(buckets.length),
        sum: 0,
        count: 0,
        observe(v: number) {
          if (!Number.isFinite(v)) return;
          child.sum += v;
          child.count++;
          // Counts per upper bound (not cumulative), as prom-client keeps them; above the last: none.
          for (let i = 0; i < buckets.length; i++) {
            if (v <= (buckets[i] as number)) {
              child.counts[i] = (child.counts[i] as number) + 1;
              break;
            }
          }
        },
      };
      c = child;
      children.set(key, c);
    }
    return c;
  };
  Object.assign(histogram, { labels });
  forgetOnRemove(histogram, labelNames, children);
  return histogram;
}
