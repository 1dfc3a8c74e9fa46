/**
 * Starts breakwater in-process from YAML text, on ports chosen by the OS, with logs captured.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Breakwater } from '../../src/app.js';
import type { Clock } from '../../src/clock.js';
import { parseConfigText } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';

export interface Running {
  readonly bw: Breakwater;
  /** Base URL of the first (or named) listener. */
  url(listener?: string): string;
  readonly adminUrl: string;
  readonly logs: Record<string, unknown>[];
  stop(): Promise<void>;
}

export async function startBreakwater(
  yaml: string,
  /** `clock`: an injected clock (test/kit/clock.ts) for the policies, so a test sets the time. */
  options: { env?: Record<string, string>; file?: string; clock?: Clock } = {},
): Promise<Running> {
  let file = options.file;
  if (file === undefined) {
    file = join(mkdtempSync(join(tmpdir(), 'bw-test-')), 'breakwater.yaml');
    writeFileSync(file, yaml);
  }
  const config = await parseConfigText(yaml, file, { env: { ...process.env, ...options.env } });
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n'))
        if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const logger = createLogger({ level: config.logging.level, destination: sink });
  const bw = await Breakwater.start(config, {
    logger,
    metrics: createMetrics({ defaultMetrics: false }),
    source: yaml,
    ...(options.clock ? { clock: options.clock } : {}),
  });
  const first = config.listeners[0]?.name ?? '';
  return {
    bw,
    url: (listener = first) => `http://127.0.0.1:${bw.listenerPort(listener)}`,
    adminUrl: `http://127.0.0.1:${bw.admin?.port}`,
    logs,
    stop: () => bw.stop(1000),
  };
}

/** A config with one listener and one upstream, with `extra` YAML appended under the upstream. */
export function simpleConfig(upstreamUrl: string, upstreamExtra = '', routeExtra = ''): string {
  return `
listeners:
  - name: main
    port: 0
    routes:
      - name: all
        upstream: app
${indent(routeExtra, 8)}
admin:
  port: 0
upstreams:
  app:
    endpoints: [${upstreamUrl}]
${indent(upstreamExtra, 4)}
logging:
  level: info
`;
}

export function indent(text: string, n: number): string {
  const pad = ' '.repeat(n);
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => pad + l)
    .join('\n');
}
