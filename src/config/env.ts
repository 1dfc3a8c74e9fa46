/**
 * `${VAR}` and `${VAR:-default}` substitution in YAML scalar values.
 *
 * Substitution runs on the parsed document's scalars (not on the raw text), so every line and
 * column a later error names still points at the user's file. A plain (unquoted) scalar that
 * contained a reference is re-read as YAML after substitution, so `port: ${PORT}` becomes a number;
 * a quoted scalar stays a string. `$${` writes a literal `${`.
 */
import { type Document, isMap, isScalar, isSeq, parse as parseYaml, type Scalar } from 'yaml';

const REF_RE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

export interface EnvProblem {
  readonly path: readonly (string | number)[];
  readonly message: string;
  readonly range: readonly [number, number] | undefined;
}

export function substituteString(
  input: string,
  env: Readonly<Record<string, string | undefined>>,
  onMissing: (name: string) => void,
): string {
  if (!input.includes('${')) return input;
  return input.replace(REF_RE, (whole, name: string | undefined, fallback: string | undefined) => {
    if (whole === '$${') return '${';
    const value = name === undefined ? undefined : env[name];
    if (value !== undefined && value !== '') return value;
    if (fallback !== undefined) return fallback;
    if (value === '') return '';
    onMissing(name ?? '');
    return '';
  });
}

export function substituteEnv(
  doc: Document,
  env: Readonly<Record<string, string | undefined>>,
): EnvProblem[] {
  const problems: EnvProblem[] = [];
  const walk = (node: unknown, path: (string | number)[]): void => {
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
        walk(pair.value, [...path, key]);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => {
        walk(item, [...path, i]);
      });
    } else if (isScalar(node)) {
      substituteScalar(node, path, env, problems);
    }
  };
  walk(doc.contents, []);
  return problems;
}

function substituteScalar(
  node: Scalar,
  path: (string | number)[],
  env: Readonly<Record<string, string | undefined>>,
  problems: EnvProblem[],
): void {
  if (typeof node.value !== 'string' || !node.value.includes('${')) return;
  const original = node.value;
  const replaced = substituteString(original, env, (name) => {
    problems.push({
      path,
      message: `environment variable ${name} is not set (write \${${name}:-default} to give a default)`,
      range: node.range ? [node.range[0], node.range[1]] : undefined,
    });
  });
  if (replaced === original) return;
  node.value = node.type === 'PLAIN' ? safeParseScalar(replaced) : replaced;
}

function safeParseScalar(text: string): unknown {
  try {
    const v: unknown = parseYaml(text);
    return v === null || typeof v === 'object' ? text : v;
  } catch {
    return text;
  }
}
