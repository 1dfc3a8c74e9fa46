/**
 * The test kit's outside-program check: found on PATH -> run; missing -> skip with a one-line
 * reason; missing under BREAKWATER_REQUIRE_TOOLS=1 -> the run fails.
 */
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { findOnPath, requireTool } from '../kit/tools.js';

function binDir(programs: Record<string, number>): string {
  const dir = mkdtempSync(join(tmpdir(), 'bw-tools-'));
  for (const [name, mode] of Object.entries(programs)) {
    writeFileSync(join(dir, name), '#!/bin/sh\n');
    chmodSync(join(dir, name), mode);
  }
  return dir;
}

describe('requireTool', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('finds an executable on PATH, in PATH order, and ignores files that are not executable', () => {
    const first = binDir({ fake: 0o644 });
    const second = binDir({ fake: 0o755 });
    const third = binDir({ fake: 0o755 });
    expect(findOnPath('fake', [first, second, third].join(':'))).toBe(join(second, 'fake'));
    expect(findOnPath('fake', first)).toBeUndefined();
    const tool = requireTool('fake', 'fake-pkg', { env: { PATH: `${first}:${second}` } });
    expect(tool).toEqual({ name: 'fake', path: join(second, 'fake'), available: true, reason: '' });
  });

  it('skips with one line naming the package when the program is missing', () => {
    const writes: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      writes.push(String(chunk));
      return true;
    });
    const empty = binDir({});
    const tool = requireTool('redis-server', 'redis-server', { env: { PATH: empty } });
    expect(tool).toMatchObject({ available: false, path: undefined });
    requireTool('redis-server', 'redis-server', { env: { PATH: empty } });
    expect(writes).toEqual(['skipped: redis-server not installed; apt-get install redis-server\n']);
  });

  it('honours an explicit path (CHROMIUM_PATH) instead of PATH', () => {
    const dir = binDir({ 'my-chromium': 0o755 });
    expect(
      requireTool('chromium', 'chromium', { override: join(dir, 'my-chromium'), env: { PATH: '' } }).path,
    ).toBe(join(dir, 'my-chromium'));
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect(
      requireTool('chromium', 'chromium', { override: join(dir, 'absent'), env: { PATH: dir } }).reason,
    ).toBe(`chromium not installed at ${join(dir, 'absent')}; apt-get install chromium`);
  });

  it('fails instead of skipping under BREAKWATER_REQUIRE_TOOLS=1', () => {
    const env = { PATH: binDir({}), BREAKWATER_REQUIRE_TOOLS: '1' };
    expect(() => requireTool('promtool', 'prometheus', { env })).toThrow(
      'BREAKWATER_REQUIRE_TOOLS=1 but promtool not installed; apt-get install prometheus',
    );
  });
});
