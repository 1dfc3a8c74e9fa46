import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import * as undici from 'undici';
import { describe, expect, it } from 'vitest';
import { buildConnector, Pool } from '../../src/upstream/undici-parts.js';

const SRC = resolve(import.meta.dirname, '../../src');
/** An import or export of values from undici's index (`import type` is erased, so it is allowed). */
const VALUE_IMPORT = /(?:^|\n)\s*(?:import|export)\s+(?!type\s)[^;]*?from\s+'undici'/;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('undici-parts (undici loaded by its parts)', () => {
  it("no module of src/ loads undici's index at run time (type-only imports are erased)", () => {
    const offenders = sources(SRC).filter((f) => VALUE_IMPORT.test(readFileSync(f, 'utf8')));
    expect(offenders).toEqual([]);
    // The check itself tells a value import from a type-only one.
    expect(VALUE_IMPORT.test("import { Pool } from 'undici';")).toBe(true);
    expect(VALUE_IMPORT.test("import { type Dispatcher, Pool } from 'undici';")).toBe(true);
    expect(VALUE_IMPORT.test("import type { Dispatcher } from 'undici';")).toBe(false);
  });

  it('loads the very Pool and buildConnector that the undici index exports', () => {
    // Same module instances: an undici upgrade that moves a file fails here, not in production.
    expect(Pool).toBe(undici.Pool);
    expect(buildConnector).toBe(undici.buildConnector);
  });

  it('its request is the one the index puts on every Dispatcher', () => {
    const require = createRequire(import.meta.url);
    const impl = require('undici/lib/api/api-request.js');
    expect(impl).toBe(undici.Dispatcher.prototype.request);
  });
});
