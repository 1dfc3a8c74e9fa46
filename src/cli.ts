#!/usr/bin/env node
/**
 * breakwater's command line.
 *
 *   breakwater [run] [--config FILE | FILE]        run (FILE defaults to $BREAKWATER_CONFIG, then config/breakwater.yaml)
 *   breakwater validate [--config FILE | FILE]     check a file, print every problem, exit 0 or 1
 *   breakwater schema                     print the JSON Schema of the config file
 *   breakwater --version | --help
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Breakwater } from './app.js';
import { ConfigError, loadConfigFile } from './config/load.js';
import { configJsonSchema } from './config/schema.js';

const USAGE = `Usage:
  breakwater [run] [--config FILE]    run breakwater
  breakwater validate --config FILE   check a config file and exit 0 (valid) or 1 (invalid)
  breakwater validate FILE            the same
  breakwater schema                   print the JSON Schema of the config file
Options:
  -c, --config FILE   config file (default: $BREAKWATER_CONFIG, else config/breakwater.yaml)
  --no-watch          do not reload when the config file changes (SIGHUP and
                      POST /config/reload on the admin port still reload it)
  -v, --version       print the version
  -h, --help          print this help
Docs: docs/configuration.md`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    process.stderr.write(`breakwater: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`breakwater ${version()}\n`);
    return 0;
  }
  const usageError = (message: string) => {
    process.stderr.write(`breakwater: ${message}\n${USAGE}\n`);
    return 2;
  };
  const [command = 'run', ...args] = positionals;
  if (command === 'schema') {
    if (args.length) return usageError(`unexpected argument "${args[0]}" after schema`);
    process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
    return 0;
  }
  if (command !== 'run' && command !== 'validate') {
    const hint = /\.ya?ml$/i.test(command) ? ` (to run with this file: breakwater --config ${command})` : '';
    return usageError(`unknown command "${command}"${hint}`);
  }
  // The file may be given as an argument (breakwater validate my.yaml) or with --config, not both.
  if (args.length > 1) return usageError(`unexpected argument "${args[1]}"`);
  if (args.length === 1 && values.config !== undefined && args[0] !== values.config)
    return usageError(`two config files given: --config ${values.config} and ${args[0]}`);
  const file = args[0] ?? values.config ?? process.env.BREAKWATER_CONFIG ?? 'config/breakwater.yaml';
  let loaded: Awaited<ReturnType<typeof loadConfigFile>>;
  try {
    loaded = await loadConfigFile(file);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`breakwater: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  if (command === 'validate') {
    process.stdout.write(`${file}: valid\n`);
    return 0;
  }
  return run(loaded.config, loaded.source, !values['no-watch']);
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: 'string', short: 'c' },
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
      'no-watch': { type: 'boolean' },
    },
  });
}

async function run(
  config: Awaited<ReturnType<typeof loadConfigFile>>['config'],
  source: string,
  watchConfig: boolean,
): Promise<number> {
  let bw: Breakwater;
  try {
    bw = await Breakwater.start(config, { source });
  } catch (err) {
    process.stderr.write(`breakwater: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  return new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      bw.logger.info({ signal }, 'signal received');
      bw.stop().then(
        () => resolve(0),
        (err: unknown) => {
          bw.logger.error({ err }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    process.on('SIGHUP', () => {
      void bw.reload('SIGHUP');
    });
    if (watchConfig) bw.watchConfig();
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    // Exit once stdout has taken everything (a pipe is asynchronous: `schema | less` would be cut at
    // 64 KiB) and pino's destination has flushed.
    process.stdout.write('', () => setImmediate(() => process.exit(code)));
  },
  (err: unknown) => {
    process.stderr.write(`breakwater: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
