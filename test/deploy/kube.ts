/**
 * Offline validation of Kubernetes manifests, as strict as the API server with
 * `kubectl apply --validate=strict`:
 *
 * - kubernetes-models' validators (JSON Schema from the Kubernetes OpenAPI document, compiled by
 *   ajv; @kubernetes-models/prometheus-operator for the PodMonitor CRD) check types, enums, formats
 *   and required fields. They let unknown fields through, as the OpenAPI schemas do not close
 *   their objects.
 * - So unknown fields are found by walking each object against the models' TypeScript
 *   declarations, which are generated from the same OpenAPI document: a key that is neither a
 *   property nor allowed by an index signature (labels, annotations, resources) is reported with
 *   its path.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { ROOT } from './dockerfile.js';

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface Manifest {
  /** Where it came from: a file, or `kustomize <dir>`. */
  readonly source: string;
  readonly object: KubeObject;
}

function isKubeObject(x: unknown): x is KubeObject {
  if (typeof x !== 'object' || x === null) return false;
  const o = x as Record<string, unknown>;
  const meta = o.metadata as Record<string, unknown> | undefined;
  return typeof o.apiVersion === 'string' && typeof o.kind === 'string' && typeof meta?.name === 'string';
}

export function parseManifests(text: string, source: string): Manifest[] {
  const out: Manifest[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`${source}: ${doc.errors[0]?.message}`);
    const object: unknown = doc.toJS();
    if (object === null) continue;
    if (!isKubeObject(object))
      throw new Error(`${source}: a document without apiVersion, kind and metadata.name`);
    out.push({ source, object });
  }
  return out;
}

export function loadManifests(file: string): Manifest[] {
  return parseManifests(readFileSync(join(ROOT, file), 'utf8'), file);
}

/** The one object of `kind` in a manifest file, typed by the caller. */
export function loadObject<T>(file: string, kind: string): T {
  const found = loadManifests(file).find((m) => m.object.kind === kind);
  if (!found) throw new Error(`${file} has no ${kind}`);
  return found.object as unknown as T;
}

/** `kubectl kustomize <dir>`: what `kubectl apply -k <dir>` would send. */
export function kustomize(dir: string): Manifest[] {
  const text = execFileSync('kubectl', ['kustomize', join(ROOT, dir)], { encoding: 'utf8' });
  return parseManifests(text, `kustomize ${dir}`);
}

/** CRD groups and the package holding their models. */
const CRD_PACKAGES: Record<string, string> = {
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator',
};

function modelModule(apiVersion: string, kind: string): string {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (!group) return `kubernetes-models/${version}/${kind}`;
  const pkg = CRD_PACKAGES[group] ?? 'kubernetes-models';
  return `${pkg}/${group}/${version}/${kind}`;
}

interface ModelClass {
  new (data: unknown): { validate(): void };
}

function isModelClass(x: unknown): x is ModelClass {
  return (
    typeof x === 'function' &&
    typeof (x as { prototype?: { validate?: unknown } }).prototype?.validate === 'function'
  );
}

/** Type errors, missing required fields and bad enum values, by kubernetes-models' validators. */
async function schemaProblems(m: Manifest): Promise<string[]> {
  const { apiVersion, kind, metadata } = m.object;
  const where = `${m.source}: ${kind}/${metadata.name}`;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(modelModule(apiVersion, kind))) as Record<string, unknown>;
  } catch {
    return [`${where}: no schema for ${apiVersion} ${kind}`];
  }
  const Model = mod[kind];
  if (!isModelClass(Model)) return [`${where}: no model class for ${apiVersion} ${kind}`];
  try {
    new Model(m.object).validate();
    return [];
  } catch (err) {
    return [`${where}: ${(err as Error).message}`];
  }
}

/** Keys of `value` (recursively) that the declared type of the object does not have. */
function unknownKeys(
  checker: ts.TypeChecker,
  value: unknown,
  type: ts.Type,
  path: string,
  out: string[],
): void {
  if (value === null || typeof value !== 'object') return;
  const t = checker.getNonNullableType(type);
  const members = t.isUnion() ? t.types : [t];
  if (Array.isArray(value)) {
    const array = members.find((x) => checker.isArrayType(x));
    if (!array) return; // not an array in the schema: the validator reports that
    const element = checker.getTypeArguments(array as ts.TypeReference)[0];
    if (!element) return;
    value.forEach((v, i) => {
      unknownKeys(checker, v, element, `${path}[${i}]`, out);
    });
    return;
  }
  const objects = members.filter((x) => (x.flags & ts.TypeFlags.Object) !== 0 && !checker.isArrayType(x));
  if (objects.length === 0) return;
  for (const [key, v] of Object.entries(value)) {
    let declared: ts.Type | undefined;
    for (const o of objects) {
      const prop = checker.getPropertyOfType(o, key);
      declared = prop
        ? checker.getTypeOfSymbol(prop)
        : checker.getIndexInfoOfType(o, ts.IndexKind.String)?.type;
      if (declared) break;
    }
    if (!declared) out.push(`${path}.${key}`);
    else unknownKeys(checker, v, declared, `${path}.${key}`, out);
  }
}

/** One TypeScript program over the models' declarations, for every kind in `manifests`. */
function unknownFieldProblems(manifests: readonly Manifest[]): string[] {
  const kinds = [...new Set(manifests.map((m) => `${m.object.apiVersion} ${m.object.kind}`))];
  const file = join(ROOT, 'test/deploy/__kube_types__.ts');
  const text = kinds
    .map((k, i) => {
      const [apiVersion = '', kind = ''] = k.split(' ');
      return `import type { I${kind} as T${i} } from '${modelModule(apiVersion, kind)}';\nexport type K${i} = T${i};`;
    })
    .join('\n');
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (name, languageVersion, ...rest) =>
    name === file
      ? ts.createSourceFile(name, text, languageVersion)
      : getSourceFile(name, languageVersion, ...rest);
  host.fileExists = (name) => name === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  const source = program.getSourceFile(file);
  if (!source) throw new Error('type program has no source');
  const errors = ts.getPreEmitDiagnostics(program, source);
  if (errors.length) {
    throw new Error(errors.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')).join('\n'));
  }
  const checker = program.getTypeChecker();
  const types = new Map<string, ts.Type>();
  for (const statement of source.statements) {
    if (!ts.isTypeAliasDeclaration(statement)) continue;
    const index = Number(statement.name.text.slice(1));
    types.set(kinds[index] ?? '', checker.getTypeAtLocation(statement.name));
  }
  const problems: string[] = [];
  for (const m of manifests) {
    const type = types.get(`${m.object.apiVersion} ${m.object.kind}`);
    if (!type) continue;
    const unknown: string[] = [];
    unknownKeys(checker, m.object, type, '', unknown);
    for (const key of unknown) {
      problems.push(`${m.source}: ${m.object.kind}/${m.object.metadata.name}: unknown field ${key.slice(1)}`);
    }
  }
  return problems;
}

/** Every problem of every manifest: schema violations and unknown fields. Empty when all are valid. */
export async function validateManifests(manifests: readonly Manifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const m of manifests) problems.push(...(await schemaProblems(m)));
  problems.push(...unknownFieldProblems(manifests));
  return problems;
}

/** Whether a program is on PATH. */
export function hasProgram(name: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Whether a test that needs `program` must be skipped: it is missing, and CI did not ask for every
 * tool with BREAKWATER_REQUIRE_TOOLS=1 (then the test runs, and fails for want of it).
 */
export function skipWithout(program: string): boolean {
  if (hasProgram(program)) return false;
  if (process.env.BREAKWATER_REQUIRE_TOOLS === '1') return false;
  console.warn(`skipping the tests that need ${program}: it is not installed`);
  return true;
}
