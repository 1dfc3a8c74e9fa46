/**
 * YAML file -> validated, fully-defaulted, frozen model.
 *
 * Every problem in a file is reported at once, each with file, line, column, the key path and what
 * was expected, so an operator fixes a file in one pass.
 */
import { readFile } from 'node:fs/promises';
import { type Document, isMap, isPair, isScalar, LineCounter, type Node, parseDocument } from 'yaml';
import type { z } from 'zod';
import { checkedConfigSchema } from './cross-check.js';
import { substituteEnv } from './env.js';
import { formatPath, issueMessage, misindented, unknownKeyMessage } from './explain.js';
import { type ResolvedConfig, resolveConfig } from './resolve.js';

export interface ConfigProblem {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** Dotted key path, e.g. `listeners[0].routes[1].upstream`. */
  readonly key: string;
  readonly message: string;
}

export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[]) {
    super(
      `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems
        .map(formatProblem)
        .join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function formatProblem(p: ConfigProblem): string {
  return `  ${p.file}:${p.line}:${p.column} ${p.key ? `${p.key}: ` : ''}${p.message}`;
}

export { formatPath };

export interface LoadOptions {
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export interface LoadedConfig {
  readonly config: ResolvedConfig;
  /** The text that was loaded, for hashing and `GET /config`. */
  readonly source: string;
}

/** Reads, substitutes, parses and validates a config file. Throws ConfigError. */
export async function loadConfigFile(file: string, options: LoadOptions = {}): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new ConfigError([{ file, line: 0, column: 0, key: '', message: `cannot read config: ${why}` }]);
  }
  const config = await parseConfigText(text, file, options);
  return { config, source: text };
}

/** Parses and validates config text; `file` names it in errors and anchors relative paths. */
export async function parseConfigText(
  text: string,
  file: string,
  options: LoadOptions = {},
): Promise<ResolvedConfig> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true, strict: true });
  const problems: ConfigProblem[] = [];
  const at = (offset: number | undefined, key: string, message: string) => {
    const pos = offset === undefined ? { line: 1, col: 1 } : lineCounter.linePos(offset);
    problems.push({ file, line: pos.line, column: pos.col, key, message });
  };

  for (const e of doc.errors) at(e.pos[0], '', `YAML syntax: ${e.message.split('\n')[0]}`);
  if (problems.length) throw new ConfigError(problems);

  const envProblems = substituteEnv(doc, options.env ?? process.env);
  for (const p of envProblems) at(p.range?.[0], formatPath(p.path), p.message);
  // A value left empty by a missing variable is reported once, as the missing variable.
  const envKeys = new Set(envProblems.map((p) => formatPath(p.path)));

  const raw: unknown = doc.toJS({ maxAliasCount: 100 }) ?? {};
  const result = checkedConfigSchema.safeParse(raw, { reportInput: true });
  if (!result.success) {
    const said = new Set<string>();
    for (const issue of result.error.issues) {
      for (const located of locateIssue(doc, issue, raw, text)) {
        // A mis-indented entry raises several issues; it is said once.
        const id = `${located.key}\0${located.message}`;
        if (envKeys.has(located.key) || said.has(id)) continue;
        said.add(id);
        at(located.offset, located.key, located.message);
      }
    }
  }
  if (problems.length || !result.success) throw new ConfigError(sortProblems(problems));

  const resolved = await resolveConfig(result.data, file);
  if (resolved.problems.length) {
    for (const p of resolved.problems) at(nodeAt(doc, p.path)?.range?.[0], formatPath(p.path), p.message);
    throw new ConfigError(sortProblems(problems));
  }
  return resolved.config;
}

function sortProblems(problems: ConfigProblem[]): ConfigProblem[] {
  return problems.sort((a, b) => a.line - b.line || a.column - b.column);
}

interface Located {
  offset: number | undefined;
  key: string;
  message: string;
}

/**
 * Finds where in the file a schema issue belongs (the value, the offending key, or the nearest
 * parent) and words it (explain.ts). `text` is the file, for the value's own spelling.
 */
function locateIssue(doc: Document, issue: z.core.$ZodIssue, raw: unknown, text: string): Located[] {
  const path = issue.path as (string | number)[];
  const wrongLevel = misindented(issue, raw);
  if (wrongLevel) {
    const entry = doc.getIn(wrongLevel.path.slice(0, -1), true);
    const pair = isMap(entry)
      ? entry.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === wrongLevel.path.at(-1))
      : undefined;
    const keyNode = pair && isScalar(pair.key) ? pair.key : undefined;
    return [
      {
        offset: keyNode?.range?.[0] ?? nodeAt(doc, wrongLevel.path)?.range?.[0],
        key: formatPath(wrongLevel.path),
        message: wrongLevel.message,
      },
    ];
  }
  if (issue.code === 'unrecognized_keys') {
    const parent = nodeAt(doc, path);
    return issue.keys.map((k) => {
      const pair = isMap(parent)
        ? parent.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === k)
        : undefined;
      const keyNode = pair && isScalar(pair.key) ? pair.key : undefined;
      return {
        offset: keyNode?.range?.[0] ?? parent?.range?.[0],
        key: formatPath([...path, k]),
        message: unknownKeyMessage(k, path, raw),
      };
    });
  }
  let node = nodeAt(doc, path);
  const range = node?.range;
  const source = range ? text.slice(range[0], range[1]) : undefined;
  let message = issueMessage(issue, raw, source);
  if (!node) {
    // A required key is missing: point at the map that should hold it.
    for (let i = path.length - 1; i >= 0 && !node; i--) node = nodeAt(doc, path.slice(0, i));
    if (issue.code === 'invalid_type' && issue.input === undefined) message = 'is required';
  }
  return [{ offset: node?.range?.[0], key: formatPath(path), message }];
}

function nodeAt(doc: Document, path: readonly (string | number)[]): Node | undefined {
  if (path.length === 0) return (doc.contents as Node | null) ?? undefined;
  const n: unknown = doc.getIn(path, true);
  return n && typeof n === 'object' && 'range' in n ? (n as Node) : undefined;
}
