/**
 * Outside programs that some tests drive (promtool, prometheus, chromium, openssl, redis-server,
 * slowhttptest, h2load). `npm test` needs Node.js only: a test whose program is missing is skipped
 * with one line saying what to install, and never fails with a spawn ENOENT. Under
 * BREAKWATER_REQUIRE_TOOLS=1 (set by .ci/run) a missing program fails the run instead, so CI can
 * never skip them silently.
 *
 *   const promtool = requireTool('promtool', 'prometheus');
 *   it.skipIf(!promtool.available)('passes promtool check metrics', ...)   // spawn promtool.path
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, isAbsolute, join } from 'node:path';

export interface Tool {
  /** The program as looked up (`promtool`). */
  readonly name: string;
  /** Absolute path of the executable, when found. */
  readonly path: string | undefined;
  readonly available: boolean;
  /** The one-line reason printed when it is missing. */
  readonly reason: string;
}

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The first executable `name` on PATH (or `name` itself when it is a path), as `which` finds it. */
export function findOnPath(name: string, path = process.env.PATH ?? ''): string | undefined {
  if (isAbsolute(name)) return executable(name) ? name : undefined;
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const file = join(dir, name);
    if (executable(file)) return file;
  }
  return undefined;
}

/** True when missing programs must fail the run (CI), not skip. */
export function toolsRequired(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.BREAKWATER_REQUIRE_TOOLS === '1';
}

const announced = new Set<string>();

/**
 * Looks `name` up on PATH (or at `options.override`, e.g. $CHROMIUM_PATH). Missing: prints
 * `skipped: NAME not installed; apt-get install PACKAGE` once and returns `available: false`, or,
 * under BREAKWATER_REQUIRE_TOOLS=1, throws, which fails the test file that asked.
 */
export function requireTool(
  name: string,
  aptPackage: string,
  options: { override?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): Tool {
  const env = options.env ?? process.env;
  const path = options.override ? findOnPath(options.override, env.PATH) : findOnPath(name, env.PATH);
  const where = options.override ? ` at ${options.override}` : '';
  const reason = `${name} not installed${where}; apt-get install ${aptPackage}`;
  if (path !== undefined) return { name, path, available: true, reason: '' };
  if (toolsRequired(env))
    throw new Error(`BREAKWATER_REQUIRE_TOOLS=1 but ${reason} (the tests that need it cannot run)`);
  if (!announced.has(name)) {
    announced.add(name);
    process.stderr.write(`skipped: ${reason}\n`);
  }
  return { name, path: undefined, available: false, reason };
}
