/**
 * The Dockerfile and docker-compose.yml, checked offline (no Docker engine here): the Dockerfile is
 * linted by dockerfile-utils (the Docker language server's checks) and by the rules below, its COPY
 * sources exist in the build context or the build output, its entrypoint file exists after
 * `npm run build` and starts breakwater; docker-compose.yml passes `docker-compose config`, agrees
 * with the config it mounts, and its Prometheus config passes `promtool check config`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative } from 'node:path';
import { validate as lintDockerfile } from 'dockerfile-utils';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { parseConfigText } from '../../src/config/load.js';
import { containerCommand, DOCKERFILE_TEXT, finalStage, parseDockerfile, ROOT } from './dockerfile.js';
import { skipWithout } from './kube.js';

const stages = parseDockerfile();
const runtime = finalStage(stages);
const noCompose = skipWithout('docker-compose');
const noPromtool = skipWithout('promtool');

/** A .dockerignore as Docker reads it: the last pattern that matches a path, or one of its parents, decides. */
function dockerignore(text: string): (path: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const exception = l.startsWith('!');
      const pattern = posix.normalize((exception ? l.slice(1) : l).replace(/^\/+|\/+$/g, ''));
      const source = pattern
        .split('')
        .map((c, i, a) => {
          if (c === '*' && a[i + 1] === '*') return '';
          if (c === '*' && a[i - 1] === '*') return '.*';
          if (c === '*') return '[^/]*';
          if (c === '?') return '[^/]';
          return c.replace(/[.+^${}()|\\]/g, '\\$&');
        })
        .join('');
      return { exception, re: new RegExp(`^${source}$`) };
    });
  return (path: string) => {
    const parts = path.split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let included = true;
    for (const rule of rules) {
      if (candidates.some((c) => rule.re.test(c))) included = rule.exception;
    }
    return included;
  };
}

function filesUnder(path: string): string[] {
  if (!statSync(join(ROOT, path)).isDirectory()) return [path];
  return readdirSync(join(ROOT, path)).flatMap((name) => filesUnder(posix.join(path, name)));
}

function defaultConfig() {
  const file = 'config/breakwater.yaml';
  return parseConfigText(readFileSync(join(ROOT, file), 'utf8'), file, { env: {} });
}

describe('Dockerfile', () => {
  it("passes the Docker language server's checks (dockerfile-utils), warnings included", () => {
    const problems = lintDockerfile(DOCKERFILE_TEXT).map(
      (d) => `line ${d.range.start.line + 1}: ${d.message}`,
    );
    expect(problems).toEqual([]);
  });

  it('the linter does report a broken Dockerfile', () => {
    const problems = lintDockerfile('FROM node:24-trixie-slim\nexpose abc\nCOPY --frm=x a b\n');
    expect(problems.map((d) => d.message)).toEqual(
      expect.arrayContaining(['Invalid containerPort: abc', 'Unknown flag: frm']),
    );
  });

  it('builds in named stages on one pinned, even-numbered (LTS) Node.js slim image that package.json allows', () => {
    const images = new Set(stages.map((s) => s.image));
    expect(images.size).toBe(1);
    const [image = ''] = images;
    const m = /^node:(\d+)-[a-z]+-slim$/.exec(image);
    expect(m, image).not.toBeNull();
    const major = Number(m?.[1]);
    expect(major % 2).toBe(0);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
    expect(major).toBeGreaterThanOrEqual(Number(/\d+/.exec(pkg.engines.node)?.[0]));
    expect(stages.slice(0, -1).every((s) => s.name)).toBe(true);
    expect(stages.length).toBeGreaterThanOrEqual(3);
  });

  it('the runtime stage runs node directly (exec form) as a numeric non-root user, with no package manager', () => {
    expect(runtime.user).toMatch(/^\d+:\d+$/);
    expect(Number(runtime.user?.split(':')[0])).toBeGreaterThan(0);
    expect(runtime.entrypoint?.[0]).toBe('node');
    expect(runtime.entrypoint?.[1]).toMatch(/^\/.*\.js$/);
    expect(runtime.cmd ?? []).toEqual([]);
    const runs = runtime.instructions
      .filter((i) => i.getKeyword() === 'RUN')
      .map((i) => i.getArgumentsContent() ?? '');
    const removed = runs.join(' ');
    for (const path of [
      '/usr/local/lib/node_modules',
      '/usr/local/bin/npm',
      '/usr/local/bin/npx',
      '/usr/local/bin/corepack',
    ]) {
      expect(removed, `the runtime stage removes ${path}`).toContain(path);
    }
    expect(runs.some((r) => /(^|\s)(npm|npx|yarn|corepack)\s/.test(r))).toBe(false);
    expect(runtime.instructions.some((i) => i.getKeyword() === 'ADD')).toBe(false);
  });

  it('the runtime stage gets production dependencies and compiled JavaScript only', () => {
    const froms = runtime.copies.filter((c) => c.from);
    const deps = stages.find(
      (s) => s.name === froms.find((c) => c.sources.some((x) => x.endsWith('/node_modules')))?.from,
    );
    const deprun = deps?.instructions.map((i) => i.getArgumentsContent() ?? '').join('\n') ?? '';
    expect(deprun).toMatch(/npm ci[^\n]*--omit=dev/);
    const fromContext = runtime.copies.filter((c) => !c.from).flatMap((c) => c.sources);
    expect(fromContext.sort()).toEqual(['config/breakwater.yaml', 'package.json']);
    expect(froms.flatMap((c) => c.sources.map((s) => posix.basename(s))).sort()).toEqual([
      'dist',
      'node_modules',
    ]);
  });

  it('every COPY from the build context names a file in the repository that .dockerignore lets into the context', () => {
    const included = dockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
    expect(included('node_modules/fastify/package.json')).toBe(false);
    expect(included('.git/HEAD')).toBe(false);
    for (const stage of stages) {
      for (const c of stage.copies) {
        if (c.from) continue;
        for (const source of c.sources) {
          expect(existsSync(join(ROOT, source)), `line ${c.line}: ${source} exists`).toBe(true);
          for (const file of filesUnder(source)) {
            expect(included(file), `line ${c.line}: ${file} is in the build context`).toBe(true);
          }
        }
      }
    }
  });

  it('every COPY --from names an earlier stage and a path that stage produces (present here after npm ci and npm run build)', () => {
    stages.forEach((stage, index) => {
      for (const c of stage.copies) {
        if (!c.from) continue;
        const from = stages.findIndex((s) => s.name === c.from);
        expect(from, `line ${c.line}: stage ${c.from}`).toBeGreaterThanOrEqual(0);
        expect(from).toBeLessThan(index);
        for (const source of c.sources) {
          const rel = posix.relative(stages[from]?.workdir ?? '/', source);
          expect(rel.startsWith('..'), `line ${c.line}: ${source} is inside the stage's WORKDIR`).toBe(false);
          expect(existsSync(join(ROOT, rel)), `line ${c.line}: ${rel} exists after the build`).toBe(true);
        }
      }
    });
  });

  it('the entrypoint file exists after npm run build and starts breakwater', () => {
    const { argv } = containerCommand('/etc/breakwater/breakwater.yaml');
    const [script = ''] = argv;
    expect(relative(ROOT, script)).toBe(join('dist', 'cli.js'));
    expect(existsSync(script)).toBe(true);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const out = execFileSync(process.execPath, [script, '--version'], { encoding: 'utf8' });
    expect(out.trim()).toBe(`breakwater ${pkg.version}`);
  });

  it('reads its config where the default config is copied; EXPOSE and HEALTHCHECK agree with that config', async () => {
    const configCopy = runtime.copies.find((c) => c.sources.includes('config/breakwater.yaml'));
    expect(runtime.env.BREAKWATER_CONFIG).toBe(configCopy?.dest);
    expect(posix.dirname(runtime.env.BREAKWATER_CONFIG ?? '')).toBe('/etc/breakwater');
    const config = await defaultConfig();
    const exposed = runtime.instructions
      .filter((i) => i.getKeyword() === 'EXPOSE')
      .flatMap((i) => i.getArguments().map((a) => Number(a.getValue())));
    expect(exposed.sort()).toEqual([config.listeners[0]?.port, config.admin.port].sort());
    const health =
      runtime.instructions.find((i) => i.getKeyword() === 'HEALTHCHECK')?.getRawArgumentsContent() ?? '';
    expect(health).toContain(`http://127.0.0.1:${config.admin.port}/health/live`);
  });
});

interface ComposeService {
  image?: string;
  build?: string;
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  stop_grace_period?: string;
  depends_on?: string[] | Record<string, unknown>;
}
const compose = parseYaml(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as {
  services: Record<string, ComposeService>;
};

/** The repository path a container path of a compose service is mounted from. */
function mounted(service: ComposeService, path: string): string | undefined {
  for (const v of service.volumes ?? []) {
    const [host = '', container = ''] = v.split(':');
    if (path === container || path.startsWith(`${container}/`))
      return posix.join(host, path.slice(container.length));
  }
  return undefined;
}

describe('docker-compose.yml', () => {
  it.skipIf(noCompose)('docker-compose config accepts it', () => {
    const run = spawnSync('docker-compose', ['-f', join(ROOT, 'docker-compose.yml'), 'config', '-q'], {
      encoding: 'utf8',
    });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });

  it.skipIf(noCompose)('docker-compose config refuses a service with an unknown key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bw-compose-'));
    writeFileSync(join(dir, 'docker-compose.yml'), 'services:\n  app:\n    image: x\n    stop_grace: 1s\n');
    const run = spawnSync('docker-compose', ['-f', join(dir, 'docker-compose.yml'), 'config', '-q'], {
      encoding: 'utf8',
    });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain('stop_grace');
  });

  it('breakwater reads a mounted directory holding its config, publishes its ports, and outlasts its drain', async () => {
    const bw = compose.services.breakwater as ComposeService;
    expect(bw.build).toBe('.');
    const [flag, path = ''] = bw.command ?? [];
    expect(flag).toBe('--config');
    const file = mounted(bw, path) ?? '';
    expect(posix.dirname(path)).toBe('/etc/breakwater'); // a directory mount: edits reach the watcher
    expect(existsSync(join(ROOT, file)), file).toBe(true);
    const config = await parseConfigText(readFileSync(join(ROOT, file), 'utf8'), file, { env: {} });
    expect(config.admin.host).toBe('0.0.0.0');
    expect(config.listeners[0]?.host).toBe('0.0.0.0');
    expect(bw.ports?.sort()).toEqual(
      [
        `${config.listeners[0]?.port}:${config.listeners[0]?.port}`,
        `${config.admin.port}:${config.admin.port}`,
      ].sort(),
    );
    const grace = Number(/^(\d+)s$/.exec(bw.stop_grace_period ?? '')?.[1]);
    expect(grace * 1000).toBeGreaterThan(config.shutdown.delay + config.shutdown.drainTimeout);
  });

  it("breakwater's upstreams default to the demo service's ports", () => {
    const file = 'config/compose.yaml';
    const text = readFileSync(join(ROOT, file), 'utf8');
    const demo = compose.services.demo as ComposeService;
    const script = mounted(demo, demo.command?.[1] ?? '') ?? '';
    const source = readFileSync(join(ROOT, script), 'utf8');
    const defaults = [...source.matchAll(/^ {2}(\w+): \{\n {4}port: (\d+),/gm)].map((m) => [m[1], m[2]]);
    expect(defaults.map(([name]) => name)).toEqual([
      'catalog',
      'recommendation',
      'inventory',
      'orders',
      'payment',
    ]);
    for (const [name, port] of defaults) {
      expect(text).toContain(`\${${name?.toUpperCase()}_URL:-http://demo:${port}}`);
    }
  });

  it('Prometheus scrapes breakwater at its service name and admin port', async () => {
    const prom = compose.services.prometheus as ComposeService;
    const file = mounted(prom, '/etc/prometheus/prometheus.yml') ?? '';
    const scrape = parseYaml(readFileSync(join(ROOT, file), 'utf8')) as {
      scrape_configs: { metrics_path: string; static_configs: { targets: string[] }[] }[];
    };
    const config = await parseConfigText(
      readFileSync(join(ROOT, 'config/compose.yaml'), 'utf8'),
      'config/compose.yaml',
      {
        env: {},
      },
    );
    const [job] = scrape.scrape_configs;
    expect(job?.metrics_path).toBe('/metrics');
    expect(job?.static_configs[0]?.targets).toEqual([`breakwater:${config.admin.port}`]);
  });

  it.skipIf(noPromtool)("promtool check config accepts the compose Prometheus's config", () => {
    const run = spawnSync('promtool', ['check', 'config', join(ROOT, 'demo/prometheus.yml')], {
      encoding: 'utf8',
    });
    expect(run.stdout + run.stderr).toContain('SUCCESS');
    expect(run.status).toBe(0);
  });
});
