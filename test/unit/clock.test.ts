/**
 * One clock: time and randomness come from src/clock.ts (injected as a `Clock` and a `random`),
 * so every timer and duration can be stepped by a test. This test reads the sources and fails on a
 * direct use of the process's time or randomness anywhere else, except the documented exceptions
 * below (the same list as src/clock.ts's header).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { sleep } from '../../src/clock.js';
import { ManualClock } from '../kit/clock.js';

const SRC = join(import.meta.dirname, '../../src');

/** Global timers, the process's clocks and randomness (a method such as `socket.setTimeout(` is not one). */
const DIRECT =
  /(?<![.\w])(setTimeout|clearTimeout|setInterval|clearInterval)\(|Date\.now\(|performance\.now\(|Math\.random\(/;

/** File -> why it may read real time itself. */
const EXCEPTIONS: Record<string, string> = {
  'clock.ts': 'the clock module itself',
  'admin/status-page.ts': "the status page's script runs in the browser",
  'lifecycle/shutdown.ts':
    'the shutdown delay and drain timer run on real time: a stepped test clock must never stall a shutdown',
  'lifecycle/reload.ts':
    "a retired listener's drain timer and a retired Redis client's close run on real time, as shutdown's",
  'lifecycle/watch.ts': "the config file watcher's debounce waits for the file system, in real time",
  'observability/logger.ts':
    "a log line's time is the wall clock that other systems' logs are read against, never a test's clock",
  'attempt/relay.ts':
    "send_timeout is an idle timer refreshed on every write (Node's timer.refresh(), a field write on the hot path), like a socket's idle timeout",
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('one clock', () => {
  it('no source reads real time or randomness outside src/clock.ts and the documented exceptions', () => {
    const found: string[] = [];
    for (const file of sources(SRC)) {
      const rel = relative(SRC, file).split('\\').join('/');
      if (rel in EXCEPTIONS) continue;
      readFileSync(file, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          const code = line.trim();
          if (code.startsWith('*') || code.startsWith('//') || code.startsWith('/*')) return;
          if (DIRECT.test(code)) found.push(`${rel}:${i + 1}: ${code}`);
        });
    }
    expect(found).toEqual([]);
  });

  it('every documented exception is a file that exists', () => {
    const files = new Set(sources(SRC).map((f) => relative(SRC, f).split('\\').join('/')));
    for (const f of Object.keys(EXCEPTIONS)) expect(files.has(f), f).toBe(true);
  });

  it('sleep waits for the injected clock, not real time', async () => {
    const clock = new ManualClock();
    let done = false;
    const p = sleep(clock, 1000).then(() => {
      done = true;
    });
    clock.advance(999);
    await Promise.resolve();
    expect(done).toBe(false);
    clock.advance(1);
    await p;
    expect(done).toBe(true);
  });
});
