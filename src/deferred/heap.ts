/**
 * A binary min-heap by `at`: the deliverer's schedule of lane heads per upstream, so that finding
 * what is due costs O(log n) per item taken, not a scan of every lane.
 */
export interface Due {
  readonly id: string;
  readonly lane: string;
  readonly at: number;
}

export class DueHeap {
  private readonly a: Due[] = [];

  get size(): number {
    return this.a.length;
  }

  peek(): Due | undefined {
    return this.a[0];
  }

  push(d: Due): void {
    const a = this.a;
    a.push(d);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if ((a[p] as Due).at <= d.at) break;
      a[i] = a[p] as Due;
      i = p;
    }
    a[i] = d;
  }

  pop(): Due | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const r = l + 1;
      const c = r < a.length && (a[r] as Due).at < (a[l] as Due).at ? r : l;
      if ((a[c] as Due).at >= last.at) break;
      a[i] = a[c] as Due;
      i = c;
    }
    a[i] = last;
    return top;
  }
}
