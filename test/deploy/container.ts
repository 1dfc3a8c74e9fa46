/**
 * breakwater started the way its container starts it: the image's ENTRYPOINT and CMD (node run
 * directly, exec form, no shell, no npm) and its ENV, with the config at the path the image reads,
 * on this checkout's dist/. Shipped configs are moved onto free loopback ports for the test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMap, isSeq, parseDocument } from 'yaml';
import { containerCommand, ROOT } from './dockerfile.js';

export interface Container {
  readonly proc: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
  readonly configFile: string;
  /** Sends a signal if the process is still running. */
  kill(signal?: NodeJS.Signals): void;
}

export function runAsContainer(yaml: string, env: Record<string, string> = {}): Container {
  const dir = mkdtempSync(join(tmpdir(), 'bw-container-'));
  mkdirSync(join(dir, 'etc/breakwater'), { recursive: true });
  const configFile = join(dir, 'etc/breakwater/breakwater.yaml');
  writeFileSync(configFile, yaml);
  const { argv, env: imageEnv } = containerCommand(configFile);
  const proc = spawn(process.execPath, argv, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...imageEnv, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => stdout.push(...d.split('\n').filter(Boolean)));
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return {
    proc,
    stdout,
    stderr,
    exited,
    configFile,
    kill(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    },
  };
}

export interface Rewrite {
  readonly listenerPort: number;
  readonly adminPort: number;
  /** Endpoint URL per upstream name. */
  readonly endpoints?: Readonly<Record<string, string>>;
  /** Replaces keys of the `shutdown` block. */
  readonly shutdown?: Readonly<Record<string, string>>;
}

/**
 * A shipped config moved onto 127.0.0.1 and the given ports (the first listener and the admin
 * listener), with its upstreams pointed at test servers; everything else as shipped.
 */
export function onLoopback(yaml: string, rewrite: Rewrite): string {
  const doc = parseDocument(yaml);
  doc.setIn(['listeners', 0, 'host'], '127.0.0.1');
  doc.setIn(['listeners', 0, 'port'], rewrite.listenerPort);
  doc.setIn(['admin', 'host'], '127.0.0.1');
  doc.setIn(['admin', 'port'], rewrite.adminPort);
  for (const [name, url] of Object.entries(rewrite.endpoints ?? {})) {
    if (!doc.hasIn(['upstreams', name])) throw new Error(`the config has no upstream ${name}`);
    doc.setIn(['upstreams', name, 'endpoints'], doc.createNode([url]));
  }
  for (const [key, value] of Object.entries(rewrite.shutdown ?? {})) doc.setIn(['shutdown', key], value);
  const listeners = doc.get('listeners');
  if (!isSeq(listeners) || !isMap(doc.get('admin')))
    throw new Error('the config has no listeners or admin block');
  return doc.toString();
}

/** Upstream names of a config text. */
export function upstreamNames(yaml: string): string[] {
  const upstreams = parseDocument(yaml).get('upstreams');
  if (!isMap(upstreams)) return [];
  return upstreams.items.map((p) => String((p.key as { value?: unknown }).value ?? p.key));
}
