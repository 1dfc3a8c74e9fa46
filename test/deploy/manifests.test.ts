/**
 * k8s/: every manifest validates against the Kubernetes schemas with unknown fields rejected, the
 * kustomizations render, and the sidecar agrees with breakwater itself (probe paths and ports,
 * the mounted config, the image's user, the drain and the grace period).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { parseConfigText } from '../../src/config/load.js';
import type { ResolvedConfig } from '../../src/config/resolve.js';
import { CLI } from '../kit/process.js';
import { finalStage, ROOT } from './dockerfile.js';
import {
  type KubeObject,
  kustomize,
  loadManifests,
  loadObject,
  type Manifest,
  skipWithout,
  validateManifests,
} from './kube.js';

const noKubectl = skipWithout('kubectl');

/** Every YAML file under k8s/ but the kustomizations: the resources they list. */
function manifestFiles(dir = 'k8s'): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(ROOT, dir))) {
    const path = posix.join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) out.push(...manifestFiles(path));
    else if (/\.ya?ml$/.test(name) && name !== 'kustomization.yaml') out.push(path);
  }
  return out;
}

function kustomizations(dir = 'k8s'): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(ROOT, dir))) {
    const path = posix.join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) out.push(...kustomizations(path));
    else if (name === 'kustomization.yaml') out.push(dir);
  }
  return out;
}

interface Container {
  name: string;
  image: string;
  restartPolicy?: string;
  ports?: { name?: string; containerPort: number }[];
  env?: { name: string; value?: string }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    runAsGroup?: number;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
  lifecycle?: { preStop?: { sleep?: { seconds: number } } };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsNonRoot?: boolean; seccompProfile?: { type: string } };
  initContainers?: Container[];
  containers: Container[];
  volumes?: {
    name: string;
    configMap?: { name: string; items?: unknown[] };
    emptyDir?: { sizeLimit?: string; medium?: string };
  }[];
}
interface Deployment extends KubeObject {
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    strategy?: {
      type: string;
      rollingUpdate?: { maxSurge?: number | string; maxUnavailable?: number | string };
    };
    template: {
      metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
      spec: PodSpec;
    };
  };
}

function find<T extends KubeObject>(manifests: readonly Manifest[], kind: string, name?: string): T {
  const m = manifests.find(
    (x) => x.object.kind === kind && (name === undefined || x.object.metadata.name === name),
  );
  if (!m) throw new Error(`no ${kind}${name ? `/${name}` : ''}`);
  return m.object as T;
}

function all<T extends KubeObject>(manifests: readonly Manifest[], kind: string): T[] {
  return manifests.filter((x) => x.object.kind === kind).map((x) => x.object as T);
}

function selects(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

function sidecarOf(d: Deployment): Container {
  const c = d.spec.template.spec.initContainers?.find((x) => x.name === 'breakwater');
  if (!c) throw new Error(`${d.metadata.name} has no breakwater init container`);
  return c;
}

function portNumber(c: Container, port: string | number): number | undefined {
  return typeof port === 'number' ? port : c.ports?.find((p) => p.name === port)?.containerPort;
}

const base = manifestFiles('k8s/base').flatMap((f) => loadManifests(f));
const deployment = find<Deployment>(base, 'Deployment', 'shop');
const configMap = find<KubeObject & { data: Record<string, string> }>(base, 'ConfigMap');
const image = finalStage();
const imageConfigPath = image.env.BREAKWATER_CONFIG ?? '';

/** The config in the ConfigMap, as breakwater resolves it. */
async function configMapConfig(): Promise<ResolvedConfig> {
  const text = configMap.data[posix.basename(imageConfigPath)];
  if (text === undefined) throw new Error(`the ConfigMap has no key ${posix.basename(imageConfigPath)}`);
  return parseConfigText(text, 'k8s/base/configmap.yaml', { env: {} });
}

describe('k8s/ validates against the Kubernetes schemas, unknown fields rejected', () => {
  it('every manifest file (base and examples) is valid', async () => {
    const files = manifestFiles();
    expect(files).toEqual(expect.arrayContaining(['k8s/base/deployment.yaml', 'k8s/examples/hpa/hpa.yaml']));
    const manifests = files.flatMap((f) => loadManifests(f));
    expect(new Set(manifests.map((m) => m.object.kind))).toEqual(
      new Set([
        'ConfigMap',
        'Deployment',
        'Service',
        'PodDisruptionBudget',
        'PodMonitor',
        'HorizontalPodAutoscaler',
        'NetworkPolicy',
      ]),
    );
    expect(await validateManifests(manifests)).toEqual([]);
  });

  it('the check rejects an unknown field, a wrong type and a bad enum value, each named by its path', async () => {
    const broken = structuredClone(deployment) as Deployment;
    const sidecar = sidecarOf(broken) as Container & { restartPolicyy?: string };
    sidecar.restartPolicyy = 'Always';
    (sidecar.ports as unknown as { containerPort: string }[])[0] = { containerPort: 'admin' };
    (broken.spec.template.spec as { restartPolicy?: string }).restartPolicy = 'Sometimes';
    const monitor = structuredClone(find(base, 'PodMonitor')) as KubeObject & {
      spec: { podMetricsEndpoints: Record<string, unknown>[] };
    };
    (monitor.spec.podMetricsEndpoints[0] as Record<string, unknown>).metricsPath = '/metrics';
    const problems = await validateManifests([
      { source: 'broken', object: broken },
      { source: 'broken', object: monitor },
    ]);
    const text = problems.join('\n');
    expect(text).toContain('unknown field spec.template.spec.initContainers[0].restartPolicyy');
    expect(text).toContain('unknown field spec.podMetricsEndpoints[0].metricsPath');
    expect(text).toMatch(/containerPort must be integer/);
    expect(text).toMatch(/restartPolicy must be equal to one of the allowed values/);
  });

  it('every manifest file is listed by a kustomization, and every listed resource exists', () => {
    const listed = new Set<string>();
    for (const dir of kustomizations()) {
      const k = parseYaml(readFileSync(join(ROOT, dir, 'kustomization.yaml'), 'utf8')) as {
        resources?: string[];
      };
      for (const r of k.resources ?? []) {
        const path = posix.normalize(posix.join(dir, r));
        expect(existsSync(join(ROOT, path)), `${dir}/kustomization.yaml lists ${r}`).toBe(true);
        if (statSync(join(ROOT, path)).isDirectory()) {
          expect(existsSync(join(ROOT, path, 'kustomization.yaml')), `${path} is a kustomization`).toBe(true);
        } else listed.add(path);
      }
    }
    expect(manifestFiles().filter((f) => !listed.has(f))).toEqual([]);
  });

  it.skipIf(noKubectl)(
    'every kustomization renders with kubectl kustomize, and what it renders is valid',
    async () => {
      const dirs = kustomizations();
      expect(dirs).toEqual(
        expect.arrayContaining(['k8s/base', 'k8s/examples/blue-green', 'k8s/examples/hpa']),
      );
      const rendered = dirs.flatMap((d) => kustomize(d));
      expect(await validateManifests(rendered)).toEqual([]);
    },
  );
});

describe('the breakwater sidecar (k8s/base)', () => {
  const pod = deployment.spec.template.spec;
  const sidecar = sidecarOf(deployment);

  it('is a native sidecar: the first init container, restartPolicy Always, not a regular container', () => {
    expect(pod.initContainers?.[0]?.name).toBe('breakwater');
    expect(sidecar.restartPolicy).toBe('Always');
    expect(pod.containers.map((c) => c.name)).not.toContain('breakwater');
  });

  it("probes breakwater's own health paths on its admin port: startup and readiness /health/ready, liveness /health/live", async () => {
    const config = await configMapConfig();
    expect(config.admin.host).toBe('0.0.0.0'); // the kubelet probes the pod IP
    const probes = {
      startupProbe: '/health/ready',
      readinessProbe: '/health/ready',
      livenessProbe: '/health/live',
    };
    for (const [probe, path] of Object.entries(probes)) {
      const get = sidecar[probe as keyof typeof probes]?.httpGet;
      expect(get?.path, probe).toBe(path);
      expect(portNumber(sidecar, get?.port ?? ''), probe).toBe(config.admin.port);
    }
  });

  it('is scraped on its admin port: the Prometheus annotations and the PodMonitor', async () => {
    const config = await configMapConfig();
    const annotations = deployment.spec.template.metadata.annotations ?? {};
    expect(annotations['prometheus.io/scrape']).toBe('true');
    expect(Number(annotations['prometheus.io/port'])).toBe(config.admin.port);
    expect(annotations['prometheus.io/path']).toBe('/metrics');
    const monitor = find<
      KubeObject & {
        spec: {
          selector: { matchLabels: Record<string, string> };
          podMetricsEndpoints: { port: string; path: string }[];
        };
      }
    >(base, 'PodMonitor');
    expect(selects(monitor.spec.selector.matchLabels, deployment.spec.template.metadata.labels)).toBe(true);
    const [endpoint] = monitor.spec.podMetricsEndpoints;
    expect(endpoint?.path).toBe('/metrics');
    expect(portNumber(sidecar, endpoint?.port ?? '')).toBe(config.admin.port);
  });

  it('reads the ConfigMap mounted as a directory at the path the image reads, so hot reload sees edits', () => {
    const mount = sidecar.volumeMounts?.find((m) => m.mountPath === posix.dirname(imageConfigPath));
    expect(mount, `a mount at ${posix.dirname(imageConfigPath)}`).toBeDefined();
    expect(mount?.subPath).toBeUndefined(); // a subPath mount never sees ConfigMap updates
    expect(mount?.readOnly).toBe(true);
    const volume = pod.volumes?.find((v) => v.name === mount?.name);
    expect(volume?.configMap?.name).toBe(configMap.metadata.name);
    expect(volume?.configMap?.items).toBeUndefined();
    expect(Object.keys(configMap.data)).toContain(posix.basename(imageConfigPath));
    expect(imageConfigPath).toBe('/etc/breakwater/breakwater.yaml');
  });

  it('gives the temporary files of buffered bodies a writable, bounded emptyDir where the config puts them', () => {
    // The root filesystem is read-only: without a volume there, a body over body_buffer_bytes gets 507.
    const raw = parseYaml(configMap.data[posix.basename(imageConfigPath)] ?? '') as {
      buffering?: { temp_dir?: string };
    };
    const tempDir = raw.buffering?.temp_dir ?? '/tmp'; // os.tmpdir() in the image (no TMPDIR set)
    expect(image.env.TMPDIR).toBeUndefined();
    const mount = sidecar.volumeMounts?.find((m) => m.mountPath === tempDir);
    expect(mount, `a mount at ${tempDir}`).toBeDefined();
    expect(mount?.readOnly).not.toBe(true);
    const volume = pod.volumes?.find((v) => v.name === mount?.name);
    expect(volume?.emptyDir?.sizeLimit).toMatch(/^\d+(Mi|Gi)$/);
  });

  it('holds a config that breakwater validate accepts', async () => {
    await configMapConfig();
    const dir = mkdtempSync(join(tmpdir(), 'bw-cm-'));
    const file = join(dir, 'breakwater.yaml');
    writeFileSync(file, configMap.data['breakwater.yaml'] ?? '');
    const out = execFileSync(process.execPath, [CLI, 'validate', '--config', file], { encoding: 'utf8' });
    expect(out).toContain('valid');
  });

  it('listens on loopback only, where the app sends its calls, on routes that exist', async () => {
    const config = await configMapConfig();
    const [listener] = config.listeners;
    expect(listener?.host).toBe('127.0.0.1');
    const app = pod.containers.find((c) => c.name === 'app');
    const urls = (app?.env ?? []).map((e) => e.value ?? '').filter((v) => v.startsWith('http://'));
    expect(urls.length).toBeGreaterThan(0);
    for (const url of urls) {
      const u = new URL(url);
      expect(`${u.hostname}:${u.port}`).toBe(`127.0.0.1:${listener?.port}`);
      expect(listener?.routes.some((r) => r.match.pathPrefix === u.pathname)).toBe(true);
    }
  });

  it("runs as the image's numeric non-root user with a read-only root filesystem, no privilege escalation, no capabilities", () => {
    expect(pod.securityContext?.runAsNonRoot).toBe(true);
    expect(pod.securityContext?.seccompProfile?.type).toBe('RuntimeDefault');
    const [uid, gid] = (image.user ?? '').split(':').map(Number);
    expect(sidecar.securityContext?.runAsUser).toBe(uid);
    expect(sidecar.securityContext?.runAsGroup).toBe(gid);
    expect(uid).toBeGreaterThan(0);
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      expect(c.securityContext?.readOnlyRootFilesystem, c.name).toBe(true);
      expect(c.securityContext?.allowPrivilegeEscalation, c.name).toBe(false);
      expect(c.securityContext?.capabilities?.drop, c.name).toEqual(['ALL']);
      expect(c.securityContext?.capabilities?.add, c.name).toBeUndefined();
      expect(c.resources?.requests?.cpu, c.name).toBeDefined();
      expect(c.resources?.requests?.memory, c.name).toBeDefined();
      expect(c.resources?.limits?.memory, c.name).toBeDefined();
    }
  });

  it("gives the pod a grace period that covers the app's preStop and breakwater's delay + drain_timeout", async () => {
    const { shutdown } = await configMapConfig();
    const preStop = pod.containers.reduce(
      (s, c) => Math.max(s, c.lifecycle?.preStop?.sleep?.seconds ?? 0),
      0,
    );
    const needed = preStop + (shutdown.delay + shutdown.drainTimeout) / 1000 + 5;
    expect(pod.terminationGracePeriodSeconds ?? 30).toBeGreaterThanOrEqual(needed);
  });

  it('rolls out one new pod at a time and never below the replica count', () => {
    expect(deployment.spec.strategy).toEqual({
      type: 'RollingUpdate',
      rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
    });
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
  });

  it('the Service, the PodDisruptionBudget and the Deployment select the same pods; the Service targets the app port', () => {
    const labels = deployment.spec.template.metadata.labels;
    expect(selects(deployment.spec.selector.matchLabels, labels)).toBe(true);
    const service = find<
      KubeObject & { spec: { selector: Record<string, string>; ports: { targetPort: string }[] } }
    >(base, 'Service');
    expect(selects(service.spec.selector, labels)).toBe(true);
    const app = pod.containers.find((c) => c.name === 'app');
    for (const p of service.spec.ports) expect(portNumber(app as Container, p.targetPort)).toBeDefined();
    const pdb = find<
      KubeObject & { spec: { selector: { matchLabels: Record<string, string> }; maxUnavailable: number } }
    >(base, 'PodDisruptionBudget');
    expect(selects(pdb.spec.selector.matchLabels, labels)).toBe(true);
    expect(pdb.spec.maxUnavailable).toBeLessThan(deployment.spec.replicas ?? 1);
  });

  it('names the images the kustomization sets', () => {
    const k = parseYaml(readFileSync(join(ROOT, 'k8s/base/kustomization.yaml'), 'utf8')) as {
      images: { name: string; newTag: string }[];
    };
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      const [name, tag] = c.image.split(':');
      expect(k.images.find((i) => i.name === name)?.newTag, c.image).toBe(tag);
    }
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(sidecar.image.endsWith(`:${pkg.version}`)).toBe(true);
  });
});

describe('the examples', () => {
  it('the HPA scales the base Deployment on the CPU of its app container, which requests CPU', () => {
    const hpa = find<
      KubeObject & {
        spec: {
          scaleTargetRef: { kind: string; name: string };
          minReplicas: number;
          maxReplicas: number;
          metrics: { type: string; containerResource?: { name: string; container: string } }[];
        };
      }
    >(loadManifests('k8s/examples/hpa/hpa.yaml'), 'HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2); // the PodDisruptionBudget still lets one go
    for (const m of hpa.spec.metrics) {
      if (m.type !== 'ContainerResource') continue;
      const c = deployment.spec.template.spec.containers.find(
        (x) => x.name === m.containerResource?.container,
      );
      expect(c?.resources?.requests?.[m.containerResource?.name ?? '']).toBeDefined();
    }
  });

  it("the NetworkPolicy selects the shop pods and opens ports they name: the app's to all, the admin port to monitoring only", () => {
    const policy = loadObject<{
      spec: {
        podSelector: { matchLabels: Record<string, string> };
        ingress: { from?: unknown[]; ports: { port: string }[] }[];
      };
    }>('k8s/examples/network-policy/networkpolicy.yaml', 'NetworkPolicy');
    expect(selects(policy.spec.podSelector.matchLabels, deployment.spec.template.metadata.labels)).toBe(true);
    const app = deployment.spec.template.spec.containers.find((c) => c.name === 'app') as Container;
    const open = policy.spec.ingress.filter((r) => !r.from).flatMap((r) => r.ports.map((p) => p.port));
    const restricted = policy.spec.ingress.filter((r) => r.from).flatMap((r) => r.ports.map((p) => p.port));
    expect(open.map((p) => portNumber(app, p))).toEqual([8080]);
    expect(restricted.map((p) => portNumber(sidecarOf(deployment), p))).toEqual([9901]);
  });

  it.skipIf(noKubectl)(
    'the HPA example renders the base without replicas, so an apply never fights the autoscaler',
    () => {
      const rendered = kustomize('k8s/examples/hpa');
      expect(find<Deployment>(rendered, 'Deployment', 'shop').spec.replicas).toBeUndefined();
      expect(find(rendered, 'HorizontalPodAutoscaler', 'shop')).toBeDefined();
    },
  );

  it.skipIf(noKubectl)(
    'blue-green: two complete colours, and the Service selects exactly one; patching track switches it',
    () => {
      const rendered = kustomize('k8s/examples/blue-green');
      const deployments = all<Deployment>(rendered, 'Deployment');
      expect(deployments.map((d) => d.metadata.name).sort()).toEqual(['shop-blue', 'shop-green']);
      for (const d of deployments) {
        const colour = d.metadata.name.replace('shop-', '');
        expect(d.spec.template.metadata.labels.track).toBe(colour);
        expect(sidecarOf(d)).toEqual(sidecarOf(deployment)); // the same sidecar as the base
        const volume = d.spec.template.spec.volumes?.find((v) => v.configMap);
        expect(find(rendered, 'ConfigMap', volume?.configMap?.name).metadata.name).toBe(
          `shop-breakwater-${colour}`,
        );
      }
      const service = find<KubeObject & { spec: { selector: Record<string, string> } }>(
        rendered,
        'Service',
        'shop',
      );
      const live = (selector: Record<string, string>) =>
        deployments
          .filter((d) => selects(selector, d.spec.template.metadata.labels))
          .map((d) => d.metadata.name);
      expect(live(service.spec.selector)).toEqual(['shop-blue']);
      expect(live({ ...service.spec.selector, track: 'green' })).toEqual(['shop-green']);
      const images = deployments.map(
        (d) => d.spec.template.spec.containers.find((c) => c.name === 'app')?.image,
      );
      expect(new Set(images).size).toBe(2); // green carries the new version
    },
  );

  it('every relative link in docs/deploy.md points at a file that exists', () => {
    const doc = readFileSync(join(ROOT, 'docs/deploy.md'), 'utf8');
    const links = [...doc.matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)]
      .map((m) => m[1] ?? '')
      .filter((l) => !/^https?:/.test(l));
    expect(links.length).toBeGreaterThan(10);
    for (const link of links) expect(existsSync(join(ROOT, 'docs', link)), link).toBe(true);
  });

  it('the docs name every kustomization', () => {
    const doc = readFileSync(join(ROOT, 'docs/deploy.md'), 'utf8');
    for (const dir of kustomizations()) {
      if (relative('k8s/examples/blue-green', dir).match(/^(blue|green)$/)) continue;
      expect(doc, dir).toContain(dir);
    }
  });
});
