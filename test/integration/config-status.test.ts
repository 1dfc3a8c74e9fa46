/**
 * `GET /config/status` follows the file: a failed reload is shown until the file is valid again,
 * also when it is fixed by restoring exactly the running version (nothing changed against the
 * running config, so nothing needs applying, but the status must not stay failed).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBreakwater } from '../kit/breakwater.js';
import { startUpstream } from '../kit/upstream.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

interface Status {
  hash: string;
  last_reload: { ok: boolean; trigger: string; problems: unknown[] } | null;
}

/** Polls /config/status until `done` holds, for at most `withinMs`; the last status read. */
async function statusUntil(admin: string, done: (s: Status) => boolean, withinMs = 5000): Promise<Status> {
  const end = performance.now() + withinMs;
  for (;;) {
    const s = (await (await request(`${admin}/config/status`)).body.json()) as Status;
    if (done(s) || performance.now() > end) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('/config/status', () => {
  it('clears a failed reload when the file is restored to the running version', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    cleanup.push(() => up.close());
    const yaml = `
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"] }
`;
    const file = join(mkdtempSync(join(tmpdir(), 'bw-status-')), 'breakwater.yaml');
    writeFileSync(file, yaml);
    const bw = await startBreakwater(yaml, { file });
    cleanup.push(() => bw.stop());
    bw.bw.watchConfig(50);
    const hash = bw.bw.configHash;

    writeFileSync(file, yaml.replace('upstream: app', 'upstream: nowhere'));
    const failed = await statusUntil(bw.adminUrl, (s) => s.last_reload?.ok === false);
    expect(failed).toMatchObject({ hash, last_reload: { ok: false, trigger: 'file change' } });
    expect(failed.last_reload?.problems).toHaveLength(1);

    writeFileSync(file, yaml);
    const fixed = await statusUntil(bw.adminUrl, (s) => s.last_reload?.ok === true);
    expect(fixed).toMatchObject({ hash, last_reload: { ok: true, trigger: 'file change', problems: [] } });
    // Still serving the same config.
    expect(bw.bw.configHash).toBe(hash);
    expect(await (await request(`${bw.url()}/x`)).body.text()).toBe('ok');
  });
});
