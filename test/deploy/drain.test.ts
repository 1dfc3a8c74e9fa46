/**
 * What a pod goes through when Kubernetes stops it, run on the built dist/ the way the image runs
 * it (node as the entrypoint, exec form, the image's ENV and config path) with the ConfigMap's
 * config from k8s/base: the Deployment's probe paths answer; SIGTERM with requests in flight turns
 * readiness 503 at once, new connections are refused, the requests in flight complete, and the
 * process exits 0 within the pod's grace period.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../kit/process.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';
import { onLoopback, runAsContainer, upstreamNames } from './container.js';
import { loadObject } from './kube.js';

interface PodSpec {
  terminationGracePeriodSeconds: number;
  initContainers: {
    name: string;
    startupProbe: { httpGet: { path: string } };
    readinessProbe: { httpGet: { path: string } };
    livenessProbe: { httpGet: { path: string } };
  }[];
  containers: { name: string; env?: { name: string; value?: string }[] }[];
}

const pod = loadObject<{ spec: { template: { spec: PodSpec } } }>('k8s/base/deployment.yaml', 'Deployment')
  .spec.template.spec;
const configMapYaml =
  loadObject<{ data: Record<string, string> }>('k8s/base/configmap.yaml', 'ConfigMap').data[
    'breakwater.yaml'
  ] ?? '';
const sidecar = pod.initContainers.find((c) => c.name === 'breakwater');
const probes = {
  startup: sidecar?.startupProbe.httpGet.path ?? '',
  readiness: sidecar?.readinessProbe.httpGet.path ?? '',
  liveness: sidecar?.livenessProbe.httpGet.path ?? '',
};
/** The path of the first URL the app calls through breakwater (e.g. /inventory). */
const appPath = new URL(
  pod.containers.find((c) => c.name === 'app')?.env?.find((e) => e.value?.startsWith('http://'))?.value ?? '',
).pathname;

async function status(url: string): Promise<number | string> {
  try {
    const res = await request(url, { reset: true });
    await res.body.dump();
    return res.statusCode;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('the drain a pod goes through, on the built entrypoint with the shipped ConfigMap', () => {
  /** Requests whose path contains /hold/ wait until release(); the others are answered at once. */
  let upstream: TestUpstream;
  const held: ServerResponse[] = [];
  const release = () => {
    for (const res of held.splice(0)) res.end('done');
  };
  beforeAll(async () => {
    upstream = await startUpstream((req, res) => {
      if (req.url?.includes('/hold/')) held.push(res);
      else res.end('quick');
    });
  });
  afterAll(async () => {
    release();
    await upstream.close();
  });

  async function start(shutdown?: Record<string, string>, tries = 2) {
    const [port, admin] = [await freePort(), await freePort()];
    const endpoints = Object.fromEntries(upstreamNames(configMapYaml).map((n) => [n, upstream.url]));
    const yaml = onLoopback(configMapYaml, { listenerPort: port, adminPort: admin, endpoints, shutdown });
    const container = runAsContainer(yaml);
    let exited = false;
    void container.exited.then(() => {
      exited = true;
    });
    const adminUrl = (path: string) => `http://127.0.0.1:${admin}${path}`;
    await until(
      'the startup probe passes',
      async () => exited || (await status(adminUrl(probes.startup))) === 200,
      15_000,
    );
    if (exited) {
      // A port freePort() handed out can be taken by a test running beside this one before
      // breakwater binds it: start again on other ports. Any other early exit is a failure.
      const lines = [...container.stdout, ...container.stderr].join('\n');
      if (tries > 1 && lines.includes('EADDRINUSE')) return start(shutdown, tries - 1);
      throw new Error(`breakwater exited before its startup probe passed:\n${lines}`);
    }
    return { container, app: `http://127.0.0.1:${port}${appPath}`, adminUrl };
  }

  it("the Deployment's startup, readiness and liveness probe paths answer 200 on the ConfigMap's admin port", async () => {
    const { container, adminUrl } = await start();
    try {
      expect(await status(adminUrl(probes.startup))).toBe(200);
      expect(await status(adminUrl(probes.readiness))).toBe(200);
      expect(await status(adminUrl(probes.liveness))).toBe(200);
    } finally {
      container.kill('SIGKILL');
    }
  });

  it('SIGTERM with requests in flight: readiness 503 at once, new connections refused, in-flight requests complete, exit 0 within the grace period', async () => {
    const { container, app, adminUrl } = await start();
    try {
      const before = upstream.received.length;
      const inflight = Array.from({ length: 10 }, (_, i) =>
        request(`${app}/hold/${i}`).then(async (r) => ({ status: r.statusCode, body: await r.body.text() })),
      );
      await until('every request reached the upstream', async () => upstream.received.length - before === 10);
      expect(await status(`${app}/quick`)).toBe(200);

      const signalled = Date.now();
      container.kill('SIGTERM');
      await until(
        'readiness turns 503',
        async () => (await status(adminUrl(probes.readiness))) === 503,
        2_000,
      );
      expect(held.length).toBe(10); // still in flight: readiness went first
      expect(await status(adminUrl(probes.liveness))).toBe(200); // not restarted while draining
      await until(
        'new connections are refused',
        async () => (await status(`${app}/late`)) === 'ECONNREFUSED',
      );

      release();
      const results = await Promise.all(inflight);
      expect(results).toEqual(Array.from({ length: 10 }, () => ({ status: 200, body: 'done' })));
      expect(await container.exited).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(pod.terminationGracePeriodSeconds * 1000);
      expect(container.stdout.some((l) => l.includes('shutdown: done'))).toBe(true);
    } finally {
      release();
      container.kill('SIGKILL');
    }
  });

  it('with shutdown.delay (breakwater as an ordinary container), new connections are still served during the delay, then refused', async () => {
    const { container, app, adminUrl } = await start({ delay: '3s' });
    try {
      container.kill('SIGTERM');
      await until(
        'readiness turns 503',
        async () => (await status(adminUrl(probes.readiness))) === 503,
        2_000,
      );
      expect(await status(`${app}/during-the-delay`)).toBe(200);
      await until(
        'new connections are refused',
        async () => (await status(`${app}/late`)) === 'ECONNREFUSED',
        8_000,
      );
      expect(await container.exited).toBe(0);
    } finally {
      container.kill('SIGKILL');
    }
  });
});
