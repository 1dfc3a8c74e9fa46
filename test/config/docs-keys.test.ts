/**
 * docs/configuration.md and the schema agree on the keys: every key the schema accepts (read from
 * the schema itself, src/config/schema-index.ts) is named in the reference, as a key (`key`), a
 * dotted path (`block.key`) or inside a flow mapping (`{ key: ... }`).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KNOWN_KEYS } from '../../src/config/schema-index.js';

const DOC = readFileSync(join(import.meta.dirname, '../../docs/configuration.md'), 'utf8');

function documented(key: string): boolean {
  const k = key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`[\`.{ ,]${k}[\`:} ,]`).test(DOC);
}

describe('docs/configuration.md and the schema', () => {
  it('name the same keys', () => {
    expect(KNOWN_KEYS.length).toBeGreaterThan(100);
    expect(KNOWN_KEYS.filter((k) => !documented(k))).toEqual([]);
  });

  it('the check finds a key the docs do not name', () => {
    expect(documented('max_requests_per_second')).toBe(true);
    expect(documented('no_such_key_anywhere')).toBe(false);
  });
});
