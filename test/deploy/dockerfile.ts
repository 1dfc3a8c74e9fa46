/**
 * The repository's Dockerfile read as data (with dockerfile-ast, the parser of the Docker language
 * server), for the tests that check the image offline: stages, what each COPY takes, and how the
 * final stage starts breakwater.
 */
import { readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { DockerfileParser, type Instruction } from 'dockerfile-ast';

export const ROOT = join(import.meta.dirname, '../..');
export const DOCKERFILE_TEXT = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

export interface Copy {
  /** The stage it copies from (`--from=`), or undefined for the build context. */
  readonly from: string | undefined;
  readonly sources: readonly string[];
  /** Absolute destination in the image. */
  readonly dest: string;
  /** The destination is a directory the sources go into (it ends in `/`, or there are several). */
  readonly intoDir: boolean;
  readonly line: number;
}

export interface Stage {
  readonly name: string | undefined;
  /** The base image with build arguments substituted. */
  readonly image: string;
  readonly instructions: readonly Instruction[];
  readonly copies: readonly Copy[];
  readonly env: Readonly<Record<string, string>>;
  readonly user: string | undefined;
  readonly workdir: string;
  /** ENTRYPOINT and CMD in exec form, or undefined when absent or in shell form. */
  readonly entrypoint: readonly string[] | undefined;
  readonly cmd: readonly string[] | undefined;
}

function args(i: Instruction): string[] {
  return i.getArguments().map((a) => a.getValue());
}

function flag(i: Instruction, name: string): string | undefined {
  const flags = 'getFlags' in i && typeof i.getFlags === 'function' ? i.getFlags() : [];
  for (const f of flags as { getName(): string; getValue(): string | null }[]) {
    if (f.getName() === name) return f.getValue() ?? undefined;
  }
  return undefined;
}

/** The exec-form array of an ENTRYPOINT or CMD, or undefined for the shell form. */
function execForm(i: Instruction): string[] | undefined {
  const raw = i.getRawArgumentsContent()?.trim() ?? '';
  if (!raw.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(raw);
  return Array.isArray(parsed) && parsed.every((x) => typeof x === 'string') ? parsed : undefined;
}

export function parseDockerfile(text = DOCKERFILE_TEXT): Stage[] {
  const doc = DockerfileParser.parse(text);
  const buildArgs = new Map<string, string>();
  for (const a of doc.getInitialARGs()) {
    const p = a.getProperty();
    if (p) buildArgs.set(p.getName(), p.getValue() ?? '');
  }
  const expand = (s: string) => s.replace(/\$\{?(\w+)\}?/g, (_m, name: string) => buildArgs.get(name) ?? '');

  const stages: Stage[] = [];
  let current: {
    name: string | undefined;
    image: string;
    instructions: Instruction[];
    copies: Copy[];
    env: Record<string, string>;
    user: string | undefined;
    workdir: string;
    entrypoint: string[] | undefined;
    cmd: string[] | undefined;
  } | null = null;
  for (const i of doc.getInstructions()) {
    const keyword = i.getKeyword();
    if (keyword === 'FROM') {
      const [image = '', as, name] = args(i);
      current = {
        name: as?.toUpperCase() === 'AS' ? name : undefined,
        image: expand(image),
        instructions: [],
        copies: [],
        env: {},
        user: undefined,
        workdir: '/',
        entrypoint: undefined,
        cmd: undefined,
      };
      stages.push(current);
      continue;
    }
    if (!current) continue;
    current.instructions.push(i);
    const a = args(i);
    switch (keyword) {
      case 'WORKDIR':
        current.workdir = posix.resolve(current.workdir, a[0] ?? '.');
        break;
      case 'ENV':
        for (const p of (
          i as unknown as { getProperties(): { getName(): string; getValue(): string | null }[] }
        ).getProperties())
          current.env[p.getName()] = p.getValue() ?? '';
        break;
      case 'USER':
        current.user = a[0];
        break;
      case 'ENTRYPOINT':
        current.entrypoint = execForm(i);
        break;
      case 'CMD':
        current.cmd = execForm(i);
        break;
      case 'COPY':
      case 'ADD': {
        const dest = a.at(-1) ?? '.';
        const sources = a.slice(0, -1);
        current.copies.push({
          from: flag(i, 'from'),
          sources,
          dest: posix.resolve(current.workdir, dest),
          intoDir: dest.endsWith('/') || dest === '.' || sources.length > 1,
          line: i.getRange().start.line + 1,
        });
        break;
      }
    }
  }
  return stages;
}

/** The final stage: what the image runs. */
export function finalStage(stages = parseDockerfile()): Stage {
  const last = stages.at(-1);
  if (!last) throw new Error('Dockerfile has no FROM');
  return last;
}

/**
 * How the container starts breakwater, mapped onto this checkout: the argv of ENTRYPOINT + CMD
 * with `node` as this Node.js and image paths copied from another stage as the repository's paths
 * (`/app/dist/cli.js` -> `<repo>/dist/cli.js`), and the image's environment.
 */
export function containerCommand(configFile: string): {
  argv: string[];
  env: Record<string, string>;
} {
  const stage = finalStage();
  const [program, ...rest] = [...(stage.entrypoint ?? []), ...(stage.cmd ?? [])];
  if (program !== 'node') throw new Error(`the entrypoint runs ${program}, not node`);
  const argv = rest.map((arg) => {
    const path = posix.resolve(stage.workdir, arg);
    return arg.endsWith('.js') ? repoPathOf(stage, path) : arg;
  });
  return { argv, env: { ...stage.env, BREAKWATER_CONFIG: configFile } };
}

/**
 * The repository path an image path of the final stage comes from: COPY from the build context,
 * or from the build stage's working directory (the same layout as the repository after
 * `npm ci && npm run build`).
 */
export function repoPathOf(stage: Stage, imagePath: string, stages = parseDockerfile()): string {
  for (const c of [...stage.copies].reverse()) {
    for (const source of c.sources) {
      const into = c.intoDir ? posix.join(c.dest, posix.basename(source)) : c.dest;
      if (imagePath !== into && !imagePath.startsWith(`${into}/`)) continue;
      const rest = imagePath.slice(into.length);
      if (c.from === undefined) return join(ROOT, source + rest);
      const from = stages.find((s) => s.name === c.from);
      if (!from) throw new Error(`COPY --from=${c.from}: no such stage`);
      const rel = posix.relative(from.workdir, source + rest);
      if (rel.startsWith('..')) throw new Error(`${source} is outside the ${c.from} stage's WORKDIR`);
      return join(ROOT, rel);
    }
  }
  throw new Error(`${imagePath} is not copied into the image`);
}
