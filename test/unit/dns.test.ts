/**
 * Endpoint host names are re-resolved: one endpoint per address, kept across refreshes while the
 * address stays, and the last good set kept when resolution fails. The resolver is injected (as a
 * clock is): these addresses are never contacted.
 */
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { Upstream } from '../../src/upstream/upstream.js';

async function upstreamOf(url: string) {
  const cfg = await parseConfigText(
    `listeners: [{ name: m, port: 1, routes: [{ upstream: svc }] }]\nupstreams:\n  svc: { endpoints: ["${url}"], dns_refresh: 1h }\n`,
    't.yaml',
    { env: {} },
  );
  return cfg.upstreams.svc as NonNullable<(typeof cfg.upstreams)[string]>;
}

describe('DNS re-resolution', () => {
  it('expands a name to one endpoint per address and keeps the last good set on failure', async () => {
    const model = await upstreamOf('http://orders.shop.svc.cluster.local:8080');
    const answers: (string[] | Error)[] = [
      ['127.0.0.2', '127.0.0.3'],
      new Error('SERVFAIL'),
      ['127.0.0.3', '127.0.0.4'],
      [],
    ];
    const changes: string[][] = [];
    const failures: string[] = [];
    const up = new Upstream(model);
    up.startHealthChecks(
      {
        healthChanged: () => undefined,
        ejected: () => undefined,
        endpointsChanged: (urls) => changes.push([...urls]),
        resolveFailed: (url) => failures.push(url),
      },
      async () => {
        const a = answers.shift() ?? [];
        if (a instanceof Error) throw a;
        return a;
      },
    );
    try {
      await up.refreshDns();
      expect(up.endpoints.map((e) => e.model.url)).toEqual([
        'http://127.0.0.2:8080',
        'http://127.0.0.3:8080',
      ]);
      expect(up.endpoints.every((e) => e.model.source === 'http://orders.shop.svc.cluster.local:8080')).toBe(
        true,
      );
      expect(up.hostFor(up.endpoints[0] as never, undefined)).toBe('orders.shop.svc.cluster.local:8080');
      const kept = up.endpoints[1];
      await up.refreshDns(); // SERVFAIL: nothing changes
      expect(up.endpoints.map((e) => e.model.url)).toEqual([
        'http://127.0.0.2:8080',
        'http://127.0.0.3:8080',
      ]);
      expect(failures).toEqual(['http://orders.shop.svc.cluster.local:8080']);
      await up.refreshDns(); // .2 left, .4 came: .3 keeps its endpoint (pool, health)
      expect(up.endpoints.map((e) => e.model.url)).toEqual([
        'http://127.0.0.3:8080',
        'http://127.0.0.4:8080',
      ]);
      expect(up.endpoints[0]).toBe(kept);
      await up.refreshDns(); // an empty answer keeps the last good set too
      expect(up.endpoints).toHaveLength(2);
      expect(changes).toHaveLength(2);
    } finally {
      await up.destroy();
    }
  });

  it('a refresh asked for while one is under way joins it: one new endpoint, kept by both', async () => {
    const model = await upstreamOf('http://orders.shop.svc.cluster.local:8080');
    let asked = 0;
    const answered: (() => void)[] = [];
    const changes: string[][] = [];
    const up = new Upstream(model);
    // The answer comes only when the test says so, so the two refreshes overlap.
    up.startHealthChecks(
      {
        healthChanged: () => undefined,
        ejected: () => undefined,
        endpointsChanged: (urls) => changes.push([...urls]),
      },
      () => {
        asked++;
        return new Promise<string[]>((resolve) => answered.push(() => resolve(['127.0.0.2'])));
      },
    );
    try {
      // (startHealthChecks also schedules a background refresh at once: it joins the same one.)
      const first = up.refreshDns();
      const second = up.refreshDns();
      expect(second).toBe(first);
      await new Promise((r) => setTimeout(r, 20));
      for (const answer of answered.splice(0)) answer();
      await Promise.all([first, second]);
      const endpoint = up.endpoints[0];
      expect(up.endpoints.map((e) => e.model.url)).toEqual(['http://127.0.0.2:8080']);
      expect(asked).toBe(1);
      expect(changes).toHaveLength(1);
      // A later refresh with the same answer keeps that endpoint (its pool and connections).
      const third = up.refreshDns();
      for (const answer of answered.splice(0)) answer();
      await third;
      expect(up.endpoints[0]).toBe(endpoint);
      expect(changes).toHaveLength(1);
    } finally {
      await up.destroy();
    }
  });

  it('leaves IP-literal endpoints alone', async () => {
    const model = await upstreamOf('http://127.0.0.9:8080');
    const up = new Upstream(model);
    up.startHealthChecks({ healthChanged: () => undefined, ejected: () => undefined }, async () => {
      throw new Error('must not be asked');
    });
    await up.refreshDns();
    expect(up.endpoints.map((e) => e.model.url)).toEqual(['http://127.0.0.9:8080']);
    await up.destroy();
  });
});
