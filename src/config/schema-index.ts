/**
 * What the zod schema says about keys, read from the schema itself (no hand-kept list): the keys
 * of each block, where in the file each key exists, and the allowed range of a number. load.ts
 * uses it to word errors: "goes under a listener", "did you mean", "from 1 to 10".
 *
 * A place in the file is a pattern: `listeners[].routes[]`, `upstreams.<name>.retry`.
 */
import { z } from 'zod';
import { configSchema } from './schema.js';

export interface ObjectNode {
  readonly kind: 'object';
  readonly keys: Map<string, SchemaNode>;
}
export type SchemaNode =
  | ObjectNode
  | { readonly kind: 'record'; readonly value: SchemaNode }
  | { readonly kind: 'array'; readonly element: SchemaNode }
  | { readonly kind: 'union'; readonly options: readonly SchemaNode[]; readonly discriminator?: string }
  | { readonly kind: 'leaf'; readonly schema: z.ZodType };

/** One step of a pattern: a key, any name of a record (`<name>`), any entry of a list (`[]`). */
export type PatternSeg = string | { readonly any: 'name' | 'index' };
export type Pattern = readonly PatternSeg[];

const NAME: PatternSeg = { any: 'name' };
const INDEX: PatternSeg = { any: 'index' };

export function formatPattern(p: Pattern): string {
  let out = '';
  for (const s of p) {
    if (typeof s === 'string') out += out ? `.${s}` : s;
    else if (s.any === 'index') out += '[]';
    else out += out ? '.<name>' : '<name>';
  }
  return out;
}

/** The wrappers that do not change what a value looks like in the file. */
function unwrap(s: z.ZodType): z.ZodType {
  for (;;) {
    if (
      s instanceof z.ZodOptional ||
      s instanceof z.ZodDefault ||
      s instanceof z.ZodPrefault ||
      s instanceof z.ZodNullable ||
      s instanceof z.ZodReadonly ||
      s instanceof z.ZodCatch ||
      s instanceof z.ZodNonOptional
    ) {
      s = s.unwrap() as z.ZodType;
    } else if (s instanceof z.ZodPipe) {
      // What the file holds is the pipe's input (a transform's output is the model's business).
      s = (s.in instanceof z.ZodTransform ? s.out : s.in) as z.ZodType;
    } else if (s instanceof z.ZodLazy) {
      s = s.unwrap() as z.ZodType;
    } else {
      return s;
    }
  }
}

const built = new Map<z.ZodType, SchemaNode>();

export function nodeOf(schema: z.ZodType): SchemaNode {
  const s = unwrap(schema);
  const known = built.get(s);
  if (known) return known;
  if (s instanceof z.ZodObject) {
    const node: ObjectNode = { kind: 'object', keys: new Map() };
    built.set(s, node); // before the keys: a recursive schema (inline fallbacks) meets itself again
    for (const [k, v] of Object.entries(s.shape)) node.keys.set(k, nodeOf(v as z.ZodType));
    return node;
  }
  // A leaf keeps the schema as written (with its transform), so it parses as the file is read.
  let node: SchemaNode;
  if (s instanceof z.ZodArray) node = { kind: 'array', element: nodeOf(s.element as z.ZodType) };
  else if (s instanceof z.ZodRecord) node = { kind: 'record', value: nodeOf(s.valueType as z.ZodType) };
  else if (s instanceof z.ZodUnion) {
    const options = (s.options as readonly z.ZodType[]).map(nodeOf);
    const discriminator = s instanceof z.ZodDiscriminatedUnion ? s._zod.def.discriminator : undefined;
    if (options.every((o) => o.kind === 'leaf')) return { kind: 'leaf', schema };
    node =
      discriminator === undefined ? { kind: 'union', options } : { kind: 'union', options, discriminator };
  } else return { kind: 'leaf', schema };
  built.set(s, node);
  return node;
}

export const ROOT = nodeOf(configSchema) as ObjectNode;

/** The option of a union that `value` is (by its discriminator), or the first that fits its shape. */
export function optionFor(
  node: Extract<SchemaNode, { kind: 'union' }>,
  value: unknown,
): SchemaNode | undefined {
  if (node.discriminator !== undefined && value && typeof value === 'object') {
    const tag = (value as Record<string, unknown>)[node.discriminator];
    for (const o of node.options) {
      const t = o.kind === 'object' ? o.keys.get(node.discriminator) : undefined;
      if (t?.kind === 'leaf' && t.schema instanceof z.ZodLiteral && t.schema.values.has(tag as never))
        return o;
    }
    return undefined;
  }
  const want = Array.isArray(value) ? 'array' : value && typeof value === 'object' ? 'object' : 'leaf';
  return (
    node.options.find((o) => o.kind === want || (want === 'object' && o.kind === 'record')) ??
    node.options.find((o) => o.kind !== 'leaf')
  );
}

export interface Located {
  readonly node: SchemaNode;
  readonly pattern: Pattern;
}

/** The schema node at a path of the file, unions resolved against the file's values. */
export function locate(path: readonly (string | number)[], raw: unknown): Located | undefined {
  let node: SchemaNode = ROOT;
  let value: unknown = raw;
  const pattern: PatternSeg[] = [];
  for (const seg of path) {
    if (node.kind === 'union') {
      const o = optionFor(node, value);
      if (!o) return undefined;
      node = o;
    }
    const next = value && typeof value === 'object' ? (value as Record<string, unknown>)[seg] : undefined;
    if (node.kind === 'object' && typeof seg === 'string') {
      const child = node.keys.get(seg);
      if (!child) return undefined;
      node = child;
      pattern.push(seg);
    } else if (node.kind === 'record' && typeof seg === 'string') {
      node = node.value;
      pattern.push(NAME);
    } else if (node.kind === 'array' && typeof seg === 'number') {
      node = node.element;
      pattern.push(INDEX);
    } else return undefined;
    value = next;
  }
  if (node.kind === 'union') {
    const o = optionFor(node, value);
    if (o) node = o;
  }
  return { node, pattern };
}

type Ancestors = ReadonlySet<SchemaNode>;

/**
 * The objects `node` stands for (itself, or those in the record, list or union it is), each with
 * its pattern and the nodes above it. A node already above is not entered again (an inline
 * fallback's `then` is a fallback: the recursion stops there); a block shared by two places
 * (`retry` of an upstream and of resilience) is found at both.
 */
function objectsOf(node: SchemaNode, p: Pattern, above: Ancestors): [ObjectNode, Pattern, Ancestors][] {
  if (above.has(node)) return [];
  const here = new Set(above).add(node);
  switch (node.kind) {
    case 'object':
      return [[node, p, here]];
    case 'record':
      return objectsOf(node.value, [...p, NAME], here);
    case 'array':
      return objectsOf(node.element, [...p, INDEX], here);
    case 'union':
      return node.options.flatMap((o) => objectsOf(o, p, here));
    default:
      return [];
  }
}

/**
 * The object blocks below `node` (itself included), breadth first by nesting of keys, each with
 * its pattern relative to `node`.
 */
export function blocksBelow(node: SchemaNode, maxDepth = Number.POSITIVE_INFINITY): [ObjectNode, Pattern][] {
  const out: [ObjectNode, Pattern][] = [];
  let level = objectsOf(node, [], new Set());
  for (let depth = 0; level.length && depth <= maxDepth; depth++) {
    const next: [ObjectNode, Pattern, Ancestors][] = [];
    for (const [block, p, above] of level) {
      out.push([block, p]);
      for (const [k, child] of block.keys) next.push(...objectsOf(child, [...p, k], above));
    }
    level = next;
  }
  return out;
}

/** Every key of the schema, and the blocks (patterns) it stands in, shortest first. */
export const KEY_HOMES: ReadonlyMap<string, readonly Pattern[]> = (() => {
  const homes = new Map<string, Pattern[]>();
  for (const [block, pattern] of blocksBelow(ROOT)) {
    const at = formatPattern(pattern);
    for (const k of block.keys.keys()) {
      const list = homes.get(k) ?? [];
      // The options of a union (the three kinds of fallback) are one place.
      if (!list.some((p) => formatPattern(p) === at)) list.push(pattern);
      homes.set(k, list);
    }
  }
  return homes;
})();

/** Every key the file may hold anywhere (derived from the schema). */
export const KNOWN_KEYS: readonly string[] = [...KEY_HOMES.keys()];

export interface NumberRange {
  readonly int: boolean;
  readonly min: number | undefined;
  readonly minInclusive: boolean;
  readonly max: number | undefined;
  readonly maxInclusive: boolean;
}

/** The number a leaf holds and its bounds, when it holds one. */
export function numberRange(schema: z.ZodType): NumberRange | undefined {
  const s = unwrap(schema);
  if (s instanceof z.ZodUnion) {
    for (const o of s.options as readonly z.ZodType[]) {
      const r = numberRange(o);
      if (r) return r;
    }
    return undefined;
  }
  if (!(s instanceof z.ZodNumber)) return undefined;
  let range: NumberRange = {
    int: false,
    min: undefined,
    minInclusive: true,
    max: undefined,
    maxInclusive: true,
  };
  for (const c of s._zod.def.checks ?? []) {
    const d = c._zod.def as { check: string; value?: number; inclusive?: boolean; format?: string };
    if (d.check === 'number_format' && (d.format === 'safeint' || d.format === 'int32')) {
      range = { ...range, int: true };
    } else if (d.check === 'greater_than' && d.value !== undefined) {
      range = { ...range, min: d.value, minInclusive: d.inclusive ?? true };
    } else if (d.check === 'less_than' && d.value !== undefined) {
      range = { ...range, max: d.value, maxInclusive: d.inclusive ?? true };
    }
  }
  return range;
}

/** `a whole number from 1 to 10`, `a number greater than 0 and less than 1`, `a number`. */
export function describeRange(r: NumberRange): string {
  if (r.int) {
    const lo = r.min === undefined ? undefined : r.minInclusive ? r.min : Math.floor(r.min) + 1;
    const hi = r.max === undefined ? undefined : r.maxInclusive ? r.max : Math.ceil(r.max) - 1;
    if (lo !== undefined && hi !== undefined) return `a whole number from ${lo} to ${hi}`;
    if (lo !== undefined) return `a whole number of at least ${lo}`;
    if (hi !== undefined) return `a whole number of at most ${hi}`;
    return 'a whole number';
  }
  const lo = r.min === undefined ? undefined : r.minInclusive ? `at least ${r.min}` : `greater than ${r.min}`;
  const hi = r.max === undefined ? undefined : r.maxInclusive ? `at most ${r.max}` : `less than ${r.max}`;
  if (lo && hi)
    return r.minInclusive && r.maxInclusive
      ? `a number from ${r.min} to ${r.max}`
      : `a number ${lo} and ${hi}`;
  const one = lo ?? hi;
  if (one === undefined) return 'a number';
  return one.startsWith('at ') ? `a number of ${one}` : `a number ${one}`;
}
