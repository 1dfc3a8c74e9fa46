/**
 * `npm run demo` and `npm run scenario`: the promotion day, live in the terminal or headless.
 *
 *   npm run demo                        # ~90 s, live view, text report, promo-day-report.html
 *   npm run demo -- --quick             # ~20 s
 *   npm run scenario                    # the same profile headless: one JSON document on stdout
 *   npm run scenario -- --replicas 3    # three breakwater processes sharing Redis
 *
 * Options: --quick, --profile full|quick|test, --json (headless), --html FILE, --no-html,
 * --replicas N (needs redis-server on PATH or REDIS_URL). Exit 0 when every target holds; 1 with
 * the failing figure named on stderr; 2 on a usage or start-up error.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { resolve } from 'node:path';
import { htmlReport } from './html.js';
import type { ProfileName } from './profile.js';
import { failure, liveView, textReport } from './report.js';
import { runScenario } from './run.js';

interface Args {
  profile: ProfileName;
  json: boolean;
  html: string | null;
  replicas: number;
}

function parseArgs(argv: readonly string[]): Args {
  const args: Args = { profile: 'full', json: false, html: resolve('promo-day-report.html'), replicas: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') args.profile = 'quick';
    else if (a === '--profile') {
      const p = value();
      if (p !== 'full' && p !== 'quick' && p !== 'test')
        throw new Error(`--profile: full, quick or test, got ${p}`);
      args.profile = p;
    } else if (a === '--json') args.json = true;
    else if (a === '--html') args.html = resolve(value());
    else if (a === '--no-html') args.html = null;
    else if (a === '--replicas') {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1 || n > 5) throw new Error('--replicas: 1 to 5');
      args.replicas = n;
    } else throw new Error(`unknown option ${a} (see demo/promo-day/main.ts)`);
  }
  return args;
}

/** A redis-server of our own on a free port, for --replicas without REDIS_URL. */
async function startRedis(): Promise<{ url: string; stop: () => void }> {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  await new Promise<void>((resolveStart, reject) => {
    child.once('error', (err) =>
      reject(new Error(`redis-server: ${err.message} (apt-get install redis-server, or set REDIS_URL)`)),
    );
    const deadline = Date.now() + 10_000;
    const attempt = () => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolveStart();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error('redis-server did not start within 10 s'));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
  const orphanGuard = () => child.kill('SIGKILL');
  process.on('exit', orphanGuard);
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () => {
      process.off('exit', orphanGuard);
      child.kill('SIGTERM');
    },
  };
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 2;
  }
  const say = (line: string) => process.stderr.write(`${line}\n`);
  let redis: { url: string; stop: () => void } | undefined;
  try {
    let redisUrl = process.env.REDIS_URL;
    if (args.replicas > 1 && !redisUrl) {
      redis = await startRedis();
      redisUrl = redis.url;
    }
    if (!args.json)
      say(
        `breakwater promotion day: ${args.profile === 'full' ? 'about 90 s' : args.profile === 'quick' ? 'about 20 s' : 'about 17 s'}; config/examples/promo-day.yaml; Ctrl-C stops it`,
      );
    const figures = await runScenario({
      profile: args.profile,
      replicas: args.replicas,
      redisUrl: args.replicas > 1 ? redisUrl : undefined,
      say: args.json ? () => {} : say,
      ...(args.json ? {} : { onLive: liveView(process.stdout) }),
    });
    if (args.json) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
    else process.stdout.write(`\n${textReport(figures)}\n`);
    if (args.html) {
      writeFileSync(args.html, htmlReport(figures));
      if (!args.json) say(`HTML report: ${args.html}`);
    }
    const failed = failure(figures);
    if (failed) {
      say(failed);
      return 1;
    }
    if (!args.json) say('every target held');
    return 0;
  } catch (err) {
    say(`promo-day could not run: ${(err as Error).message}`);
    return 2;
  } finally {
    redis?.stop();
  }
}

// Ctrl-C or a kill: exit through process.exit, so the 'exit' handlers stop breakwater and Redis.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));
process.exitCode = await main();
