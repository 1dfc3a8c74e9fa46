/**
 * docs/configuration.md and the code agree on every default the reference states. For each row
 * of a reference table (`| key | default | meaning |`, or the fallbacks' `| key | types | default |
 * meaning |`) whose default is a value (`5s`, `[200]`, `true`), a minimal config is
 * resolved twice: once without the key, once with the key written as the documented default. The
 * two resolved models must be the same; a difference means the code applies another default than
 * the docs state (whether it comes from a zod `.default()` or from the DEFAULTS table). Defaults
 * that are words (required, none, the upstream's, `max(15s, timeout)`) are not values and are not
 * checked this way.
 *
 * The schema's descriptions (shown by editors from config/breakwater.schema.json) state defaults
 * too, as "Default: X": they are held to the code the same way.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { resolveConfig } from '../../src/config/resolve.js';
import { configSchema } from '../../src/config/schema.js';
import { blocksBelow, formatPattern, type Pattern, ROOT } from '../../src/config/schema-index.js';

const DOC = readFileSync(join(import.meta.dirname, '../../docs/configuration.md'), 'utf8');

type Obj = Record<string, unknown>;
type Path = readonly (string | number)[];

/** The minimal config every check starts from. */
function base(): Obj {
  return {
    listeners: [{ name: 'l', port: 15_000, routes: [{ upstream: 'u' }] }],
    upstreams: { u: { endpoints: ['http://127.0.0.1:1'] } },
  };
}

/**
 * Where the keys of a section's table are written, and what else must be there for them to be
 * read (a block that is present, a required key). `applies` is the fallbacks table's "types".
 */
const SECTIONS: Record<string, (cfg: Obj, applies: string, key: string) => Path> = {
  listeners: () => ['listeners', 0],
  routes: () => ['listeners', 0, 'routes', 0],
  admin: () => ['admin'],
  upstreams: () => ['upstreams', 'u'],
  timeouts: () => ['upstreams', 'u'],
  tls: (cfg) => {
    set(cfg, ['upstreams', 'u', 'endpoints'], ['https://127.0.0.1:1']);
    set(cfg, ['upstreams', 'u', 'tls'], {});
    return ['upstreams', 'u', 'tls'];
  },
  health_check: (cfg) => block(cfg, ['upstreams', 'u', 'health_check']),
  outlier_detection: (cfg) => block(cfg, ['upstreams', 'u', 'outlier_detection']),
  logging: () => ['logging'],
  shutdown: () => ['shutdown'],
  buffering: () => ['buffering'],
  cache: () => ['cache'],
  retry: (cfg) => block(cfg, ['upstreams', 'u', 'retry']),
  circuit_breaker: (cfg) => block(cfg, ['upstreams', 'u', 'circuit_breaker']),
  rate_limiter: (cfg) => {
    set(cfg, ['upstreams', 'u', 'rate_limiter'], { max_requests_per_second: 10 });
    return ['upstreams', 'u', 'rate_limiter'];
  },
  bulkhead: (cfg) => block(cfg, ['upstreams', 'u', 'bulkhead']),
  fallbacks: (cfg, applies) => {
    const type = applies === 'all' ? 'static_response' : applies;
    set(cfg, ['fallbacks', 'f'], type === 'upstream' ? { type, upstream: 'u' } : { type });
    set(cfg, ['upstreams', 'u', 'fallback'], 'f');
    return ['fallbacks', 'f'];
  },
  degradation: (cfg) => {
    set(cfg, ['fallbacks', 'f'], { type: 'static_response' });
    set(cfg, ['degradation'], {
      services: [{ name: 'u', fallback: 'f', conditions: [{ type: 'error_rate', threshold: 0.5 }] }],
    });
    return ['degradation'];
  },
  idempotency: (cfg) => block(cfg, ['listeners', 0, 'routes', 0, 'idempotency']),
  deferred: (cfg) => block(cfg, ['listeners', 0, 'routes', 0, 'deferred']),
  // lease is read with backend: redis only (refused with embedded), which needs stores.redis.
  deferred_store: (cfg, _applies, key) => onRedis(cfg, 'deferred_store', key),
  saga_store: (cfg, _applies, key) => onRedis(cfg, 'saga_store', key),
  data_dir: () => [],
  sagas: (cfg) => {
    set(cfg, ['sagas', 's'], {
      trigger: { listener: 'l', path: '/checkout' },
      steps: [
        {
          name: 'a',
          call: { upstream: 'u', path: '/a' },
          compensate: { upstream: 'u', path: '/a/undo' },
          status: { upstream: 'u', path: '/a/status' },
        },
      ],
    });
    return ['sagas', 's'];
  },
  stores: (cfg) => {
    set(cfg, ['stores', 'redis'], { url: 'redis://127.0.0.1:6379' });
    return ['stores'];
  },
};

/** Defaults the reference states in words or as an expression of other keys: not one value. */
const NOT_A_VALUE = new Set([
  'name <listener>-<index>',
  'request_timeout max(15s, timeout)',
  'burst_limit max_requests_per_second',
  'data_dir $BREAKWATER_DATA_DIR',
]);

/** A store block on `backend: redis` (unless the key checked is the backend itself). */
function onRedis(cfg: Obj, section: string, key: string): Path {
  set(cfg, ['stores', 'redis'], { url: 'redis://127.0.0.1:6379' });
  if (key === 'lease') set(cfg, [section, 'backend'], 'redis');
  return [section];
}

function block(cfg: Obj, path: Path): Path {
  set(cfg, path, {});
  return path;
}

function set(cfg: Obj, path: Path, value: unknown): void {
  let o: Record<string | number, unknown> = cfg;
  for (const [i, k] of path.entries()) {
    if (i === path.length - 1) {
      o[k] = value;
      return;
    }
    o[k] ??= typeof path[i + 1] === 'number' ? [] : {};
    o = o[k] as Record<string | number, unknown>;
  }
}

/** `limits.max_header_bytes` -> ['limits', 'max_header_bytes']; `steps[].compensate.x` -> ['steps', 0, ...]. */
function keyPath(key: string): Path {
  return key.split('.').flatMap((part) => (part.endsWith('[]') ? [part.slice(0, -2), 0] : [part]));
}

/** The resolved model as plain data: Sets sorted, Buffers as text, functions (compiled templates, trust checks) by name. */
function plain(v: unknown): unknown {
  if (v instanceof Set) return [...v].map(plain).sort();
  if (Buffer.isBuffer(v)) return v.toString('latin1');
  if (typeof v === 'function') return '[function]';
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    const out: Obj = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

/** The paths where two plain values differ. */
function differences(a: unknown, b: unknown, at = ''): string[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences((a as Obj)[k], (b as Obj)[k], at ? `${at}.${k}` : k));
  }
  return [`${at}: ${JSON.stringify(a)} without the key, ${JSON.stringify(b)} with it`];
}

async function resolved(cfg: Obj): Promise<unknown> {
  const parsed = configSchema.safeParse(cfg);
  if (!parsed.success)
    throw new Error(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  const { config } = await resolveConfig(parsed.data, '/etc/breakwater/breakwater.yaml');
  return plain(config);
}

interface Row {
  readonly section: string;
  readonly key: string;
  readonly applies: string;
  /** The default column as written. */
  readonly cell: string;
  readonly line: number;
}

/** Every reference-table row of `doc`, with the heading it is under. */
function rows(doc: string): Row[] {
  const out: Row[] = [];
  let section = '';
  let columns: string[] | undefined;
  for (const [i, line] of doc.split('\n').entries()) {
    const heading = /^#{2,4} (.+)$/.exec(line);
    if (heading) {
      section = (heading[1] as string).trim().toLowerCase();
      columns = undefined;
      continue;
    }
    if (!line.startsWith('|')) {
      columns = undefined;
      continue;
    }
    const cells = line
      .slice(1, line.endsWith('|') ? -1 : undefined)
      .split(/(?<!\\)\|/)
      .map((c) => c.trim());
    if (columns === undefined) {
      columns = cells;
      continue;
    }
    if (cells.every((c) => /^-+$/.test(c))) continue;
    const keyAt = columns.indexOf('key');
    const defaultAt = columns.indexOf('default');
    if (keyAt < 0 || defaultAt < 0) continue;
    // One key, or several stated together (`a` / `b`, `a.x`, `y`: y is a sibling of a.x), each
    // with the value at the same place of the default cell (`1` / `2`, `1`, `2`).
    const keyCell = cells[keyAt] ?? '';
    if (!/^`[a-z_.[\]]+`( *[/,] *`[a-z_.[\]]+`)*$/.test(keyCell)) continue;
    const keys = [...keyCell.matchAll(/`([^`]+)`/g)].map((m) => m[1] as string);
    const cell = cells[defaultAt] ?? '';
    const values =
      keys.length === 1
        ? [cell]
        : /^`[^`]+`( *[/,] *`[^`]+`)+/.test(cell)
          ? [...cell.matchAll(/`([^`]+)`/g)].slice(0, keys.length).map((m) => `\`${m[1]}\``)
          : keys.map(() => cell);
    const parent = keys[0]?.includes('.')
      ? (keys[0] as string).slice(0, (keys[0] as string).lastIndexOf('.') + 1)
      : '';
    const applies = cells[columns.indexOf('types')] ?? '';
    for (const [j, k] of keys.entries())
      out.push({
        section,
        key: j > 0 && !k.includes('.') ? parent + k : k,
        applies,
        cell: values[j] ?? '',
        line: i + 1,
      });
  }
  return out;
}

/** The value a default cell states, or undefined when it states none (required, none, the upstream's). */
function statedValue(row: Row): { value: unknown } | undefined {
  const m = /^`([^`]+)`/.exec(row.cell);
  if (!m) return undefined;
  if (NOT_A_VALUE.has(`${row.key} ${m[1]}`)) return undefined;
  const text = m[1] as string;
  const value: unknown = parseYaml(text);
  // `breakwater:` is a string, not a mapping: only a flow collection is read as one.
  return { value: value && typeof value === 'object' && !/^[[{]/.test(text) ? text : value };
}

/** What is wrong with the stated defaults of `doc`: one line per disagreement. */
async function disagreements(doc: string): Promise<{ checked: number; wrong: string[] }> {
  const wrong: string[] = [];
  let checked = 0;
  for (const row of rows(doc)) {
    const stated = statedValue(row);
    if (!stated) continue;
    const where = SECTIONS[row.section];
    if (!where) {
      wrong.push(
        `line ${row.line}: section "${row.section}" has defaults but the test does not know where its keys go`,
      );
      continue;
    }
    const without = base();
    const at = where(without, row.applies, row.key);
    const withKey = base();
    where(withKey, row.applies, row.key);
    set(withKey, [...at, ...keyPath(row.key)], stated.value);
    checked++;
    try {
      const diff = differences(await resolved(without), await resolved(withKey));
      if (diff.length)
        wrong.push(
          `line ${row.line}: ${row.key} documented as ${row.cell}; the code differs at ${diff.join(', ')}`,
        );
    } catch (err) {
      wrong.push(
        `line ${row.line}: ${row.key} documented as ${row.cell} is not a valid value: ${(err as Error).message}`,
      );
    }
  }
  return { checked, wrong };
}

/**
 * What a place of the schema needs beside the key for the key to be read (a required key, the
 * type of a fallback); every other block on the way is written empty.
 */
function needs(at: string, key: string): Obj | undefined {
  switch (at) {
    case 'upstreams.<name>.rate_limiter':
    case 'resilience.rate_limiter':
      return { max_requests_per_second: 10 };
    case 'fallbacks.<name>':
    case 'upstreams.<name>.fallback':
      return key === 'max_stale'
        ? { type: 'cache' }
        : key === 'status'
          ? { type: 'static_response' }
          : undefined;
    case 'upstreams.<name>.endpoints[]':
      return { url: 'http://127.0.0.1:1' };
    case 'stores.redis':
      return { url: 'redis://127.0.0.1:6379' };
    case 'sagas.<name>':
      return {
        trigger: { listener: 'l', path: '/checkout' },
        steps: [{ name: 'a', call: { upstream: 'u', path: '/a' } }],
      };
    case 'sagas.<name>.steps[]':
      return { name: 'a', call: { upstream: 'u', path: '/a' } };
    case 'sagas.<name>.steps[].call':
    case 'sagas.<name>.steps[].compensate':
    case 'sagas.<name>.steps[].status':
      return { upstream: 'u', path: '/a' };
    case 'degradation.services[]':
      return { name: 'u', fallback: 'f', conditions: [] };
    case 'degradation.services[].conditions[]':
      return { type: 'latency', threshold: 500 };
    default:
      return undefined;
  }
}

/** A minimal config with the blocks of `pattern` present (each with what it needs); the key's path. */
function placed(pattern: Pattern, key: string): { cfg: Obj; path: Path } {
  const cfg = base();
  const path: (string | number)[] = [];
  let node: Record<string | number, unknown> = cfg;
  for (const [i, seg] of pattern.entries()) {
    const step =
      typeof seg === 'string'
        ? seg
        : seg.any === 'index'
          ? 0
          : (({ upstreams: 'u', fallbacks: 'f', sagas: 's' } as Record<string, string>)[
              String(path.at(-1))
            ] ?? 'x');
    path.push(step);
    const nextSeg = pattern[i + 1];
    const at = formatPattern(pattern.slice(0, i + 1));
    if (node[step] === undefined || typeof node[step] !== 'object')
      node[step] = typeof nextSeg === 'object' && nextSeg.any === 'index' ? [] : { ...needs(at, key) };
    else if (!Array.isArray(node[step])) Object.assign(node[step] as Obj, needs(at, key));
    node = node[step] as Record<string | number, unknown>;
  }
  return { cfg, path };
}

/** The description of a key's schema (on it or on a wrapper inside it). */
function descriptionOf(schema: z.ZodType): string | undefined {
  let s: z.ZodType | undefined = schema;
  for (let i = 0; s && i < 10; i++) {
    if (s.description) return s.description;
    s = (s as { unwrap?: () => z.ZodType }).unwrap?.();
  }
  return undefined;
}

/** Defaults stated in words: not a value to write. */
const WORDS = new Set(['none', 'off', 'everything']);

/** Every "Default: X" of the schema whose X is a value, with the place it is written. */
function schemaStatements(): { pattern: Pattern; key: string; text: string }[] {
  const out: { pattern: Pattern; key: string; text: string }[] = [];
  for (const [block, pattern] of blocksBelow(ROOT)) {
    const at = formatPattern(pattern);
    // An inline fallback's `then` is the same schema as the fallback: checked once.
    if (at.includes('.then')) continue;
    for (const [key, node] of block.keys) {
      if (node.kind !== 'leaf') continue;
      const m = /Default: (.+?)\.?$/.exec(descriptionOf(node.schema) ?? '');
      if (!m) continue;
      const text = (m[1] as string).split(/ \(|, /)[0] as string;
      if (/ |^[$<]/.test(text) || WORDS.has(text) || NOT_A_VALUE.has(`${key} ${text}`)) continue;
      out.push({ pattern, key, text });
    }
  }
  return out;
}

describe('docs/configuration.md and the code', () => {
  it('state the same default for every key whose default the reference gives as a value', async () => {
    const { checked, wrong } = await disagreements(DOC);
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(100);
  });

  it('the check finds a documented default the code does not apply', async () => {
    const doc = [
      '### retry',
      '',
      '| key | default | meaning |',
      '| --- | --- | --- |',
      '| `max_attempts` | `4` | |',
      '| `jitter` | `full` | |',
      '',
      '## cache',
      '',
      '| key | default | meaning |',
      '| --- | --- | --- |',
      '| `max_bytes` | `32MiB` | |',
    ].join('\n');
    const { checked, wrong } = await disagreements(doc);
    expect(checked).toBe(3);
    expect(wrong).toHaveLength(2);
    expect(wrong[0]).toMatch(/max_attempts documented as `4`.*retry\.maxAttempts/);
    expect(wrong[1]).toMatch(/max_bytes documented as `32MiB`.*cache\.maxBytes/);
  });

  it('the schema states the same defaults as the code ("Default: X" in its descriptions)', async () => {
    const wrong: string[] = [];
    const statements = schemaStatements();
    for (const { pattern, key, text } of statements) {
      const where = `${formatPattern(pattern)}.${key}`;
      const without = placed(pattern, key);
      const withKey = placed(pattern, key);
      set(withKey.cfg, [...withKey.path, key], parseYaml(text.replace(/^"(.*)"$/, "'$1'")));
      try {
        const diff = differences(await resolved(without.cfg), await resolved(withKey.cfg));
        if (diff.length) wrong.push(`${where}: "Default: ${text}"; the code differs at ${diff.join(', ')}`);
      } catch (err) {
        wrong.push(`${where}: "Default: ${text}" is not a valid value: ${(err as Error).message}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(statements.length).toBeGreaterThan(150);
  });
});
