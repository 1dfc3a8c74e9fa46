/**
 * The process's one connection to Redis (`stores.redis`), shared by the global rate limiters and
 * the Idempotency-Key store, with a breaker in front of it and its metrics.
 *
 * The client (ioredis) is set up so that Redis can never stall or crash the proxy:
 * - no offline queue: a command while disconnected fails at once instead of waiting for a
 *   reconnect (Node clients queue by default, which is how requests hang in an outage);
 * - a per-command timeout (`command_timeout`, 20 ms by default, as Envoy's call to its rate-limit
 *   service), and a command lost with its connection is failed, never re-sent later;
 * - reconnection with capped exponential backoff and jitter, forever, by the client itself;
 * - an `error` listener always attached (an unhandled `error` event would end the process), which
 *   logs once per outage;
 * - commands pipelined on the one connection (sent without waiting for earlier replies), but not
 *   auto-pipelined: ioredis's auto-pipelining answers a batch only when its slowest command is
 *   answered, which would tie one request's limit check to another's.
 *
 * Every call goes through `run()`, which asks the breaker first: while Redis is down (the breaker
 * open), callers get a `StoreUnavailableError` without touching the network, and once per
 * `reset_timeout` one call probes. Scripts are sent by hash (EVALSHA) and loaded with EVAL only when
 * Redis answers NOSCRIPT (after a restart or failover).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import type { ConnectionOptions } from 'node:tls';
import type { Redis } from 'ioredis';
import { type Clock, systemRandom } from '../clock.js';
import type { RedisStoreModel } from '../config/resolve.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { StoreBreaker, type StoreBreakerState } from './breaker.js';

/**
 * ioredis, loaded when a store is made: a process without `stores.redis` never loads it (150
 * modules, a few MB of resident memory in every sidecar).
 */
function loadIoredis(): typeof Redis {
  const require = createRequire(import.meta.url);
  return (require('ioredis') as { Redis: typeof Redis }).Redis;
}

/** Thrown by `run()` when the store cannot be asked (breaker open, disconnected) or did not answer. */
export class StoreUnavailableError extends Error {
  constructor(
    message: string,
    readonly reason: 'unavailable' | 'timeout' | 'error',
  ) {
    super(message);
    this.name = 'StoreUnavailableError';
  }
}

/** A Lua script sent by hash. */
export interface StoreScript {
  readonly lua: string;
  readonly sha: string;
}

export function script(lua: string): StoreScript {
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}

export interface StoreHealth {
  readonly store: 'redis';
  readonly address: string;
  readonly up: boolean;
  readonly connection: string;
  readonly breaker: StoreBreakerState;
  readonly retry_in_ms: number;
  readonly last_error: string | null;
  readonly last_error_ago_ms: number | null;
}

type Counter = { inc(): void };

/** The Buffer-reply forms of EVALSHA and EVAL that ioredis defines at run time. */
interface BufferScripting {
  evalshaBuffer(sha: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
  evalBuffer(lua: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
}

/** The metric children of one operation, made once. */
interface OpMetrics {
  readonly ok: Counter;
  readonly error: Counter;
  readonly timeout: Counter;
  readonly unavailable: Counter;
  readonly duration: { observe(v: number): void };
}

export class RedisStore {
  readonly client: Redis;
  readonly breaker: StoreBreaker;
  /**
   * This process among the replicas: hostname-pid-random (a consumer name in a Redis Stream's
   * group, a lease's owner). A new client (a reload that changes stores.redis) gets a new one.
   */
  readonly instanceId: string;
  private readonly ops = new Map<string, OpMetrics>();
  /** Further connections by name, each with its own command timeout (see `connection`). */
  private readonly extra = new Map<string, Redis>();
  private lastError: { message: string; at: number } | undefined;
  /** Between a connection error and the next 'ready' (for logging once per disconnection). */
  private disconnected = false;
  private closed = false;

  constructor(
    readonly model: RedisStoreModel,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    readonly clock: Clock,
  ) {
    this.breaker = new StoreBreaker(model.breaker, clock);
    this.instanceId = `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
    const tls: ConnectionOptions | undefined = model.tls
      ? {
          ...(model.tls.ca ? { ca: model.tls.ca } : {}),
          ...(model.tls.cert ? { cert: model.tls.cert, key: model.tls.key } : {}),
          servername: model.tls.serverName ?? model.host,
          rejectUnauthorized: !model.tls.insecureSkipVerify,
          minVersion: model.tls.minVersion,
        }
      : undefined;
    this.client = new (loadIoredis())({
      host: model.host,
      port: model.port,
      db: model.db,
      ...(model.username !== undefined ? { username: model.username } : {}),
      ...(model.password !== undefined ? { password: model.password } : {}),
      ...(tls ? { tls } : {}),
      connectionName: 'breakwater',
      connectTimeout: model.connectTimeout,
      commandTimeout: model.commandTimeout,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      enableAutoPipelining: false,
      protocol: 2,
      // 50 ms, doubling up to 2 s, plus up to 100 ms of jitter; forever.
      retryStrategy: (times) =>
        Math.min(50 * 2 ** Math.min(times - 1, 10), 2_000) + Math.floor(systemRandom() * 100),
    });
    // Connection errors are logged once until the client is connected again; command failures
    // are counted, and logged when they open the breaker.
    this.client.on('error', (err: Error) => {
      this.noteError(err.message);
      if (this.disconnected || this.closed) return;
      this.disconnected = true;
      this.logger.warn(
        { event: 'store_error', store: 'redis', address: model.address, error: err.message },
        `redis store ${model.address}: ${err.message}; reconnecting with backoff, on_store_error applies meanwhile`,
      );
    });
    this.client.on('ready', () => {
      this.breaker.reconnected();
      if (this.disconnected) {
        this.disconnected = false;
        this.logger.info(
          { event: 'store_connected', store: 'redis', address: model.address },
          `redis store ${model.address} connected again`,
        );
      }
      this.updateUp();
    });
    this.client.on('close', () => this.updateUp());
    this.breaker.onTransition((from, to, reason) => {
      this.updateUp();
      const fields = { event: 'store_breaker', store: 'redis', from, to, reason };
      if (to === 'open') this.logger.warn(fields, `redis store breaker ${from} -> open (${reason})`);
      else this.logger.info(fields, `redis store breaker ${from} -> ${to} (${reason})`);
    });
    metrics.storeUp.labels('redis').set(0);
  }

  /** Up: connected and the breaker closed. */
  get up(): boolean {
    return this.client.status === 'ready' && this.breaker.state === 'closed';
  }

  health(): StoreHealth {
    const now = this.clock.now();
    return {
      store: 'redis',
      address: this.model.address,
      up: this.up,
      connection: this.client.status,
      breaker: this.breaker.state,
      retry_in_ms: Math.round(this.breaker.retryInMs()),
      last_error: this.lastError?.message ?? null,
      last_error_ago_ms: this.lastError ? Math.round(now - this.lastError.at) : null,
    };
  }

  /** A key under `key_prefix`, hash-tagged on `tag` so a Redis Cluster keeps the tag's keys in one slot. */
  key(kind: string, tag: string): string {
    return `${this.model.keyPrefix}${kind}:{${tag}}`;
  }

  /**
   * Runs `fn` against the client unless the breaker refuses; counts and times it as `op`.
   * Rejects with StoreUnavailableError on any failure.
   */
  async run<T>(op: string, fn: (client: Redis) => Promise<T>, client: Redis = this.client): Promise<T> {
    const m = this.opMetrics(op);
    if (this.closed || !this.breaker.allow()) {
      m.unavailable.inc();
      throw new StoreUnavailableError(`redis store ${this.model.address} is unavailable`, 'unavailable');
    }
    const start = this.clock.now();
    try {
      const value = await fn(client);
      m.duration.observe((this.clock.now() - start) / 1000);
      m.ok.inc();
      this.breaker.success();
      return value;
    } catch (err) {
      const raw = (err as Error).message ?? String(err);
      // ioredis's words for "no connection" (offline queue off) say how it is configured, not what happened.
      const message = raw.includes('enableOfflineQueue') ? 'not connected' : raw;
      const result = message === 'Command timed out' ? 'timeout' : 'error';
      m.duration.observe((this.clock.now() - start) / 1000);
      m[result].inc();
      this.noteError(message);
      this.breaker.failure(message);
      throw new StoreUnavailableError(`redis store ${this.model.address}: ${message}`, result);
    }
  }

  /**
   * A second connection to the same Redis, made once per `name`, with the same settings but its own
   * command timeout: for calls that may take longer than command_timeout allows (writes that carry
   * a request body) without loosening the timeout of the calls on the request path. Pass it to
   * `run()`; the breaker and metrics are shared. Closed with the store.
   */
  connection(name: string, commandTimeout: number): Redis {
    let c = this.extra.get(name);
    if (!c) {
      c = this.client.duplicate({ commandTimeout, connectionName: `breakwater-${name}` });
      c.on('error', (err: Error) => this.noteError(err.message));
      this.extra.set(name, c);
    }
    return c;
  }

  /** EVALSHA `s`, loading it with EVAL when Redis does not know it (NOSCRIPT). */
  async evalScript(
    client: Redis,
    s: StoreScript,
    keys: readonly string[],
    args: readonly (string | number | Buffer)[],
  ): Promise<unknown> {
    try {
      return await client.call('EVALSHA', s.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return client.call('EVAL', s.lua, keys.length, ...keys, ...args);
    }
  }

  /** As evalScript, with bulk replies as Buffers. */
  async evalScriptBuffer(
    client: Redis,
    s: StoreScript,
    keys: readonly string[],
    args: readonly (string | number | Buffer)[],
  ): Promise<unknown> {
    // ioredis makes a *Buffer twin of every command at run time without typing it (its
    // callBuffer() also loses the command name when auto-pipelining is on, in 6.0.0).
    const b = client as unknown as BufferScripting;
    try {
      return await b.evalshaBuffer(s.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return b.evalBuffer(s.lua, keys.length, ...keys, ...args);
    }
  }

  /**
   * Resolves when the client is connected, or after `ms` (start-up waits this long for Redis so
   * the first requests find it connected; an unreachable Redis delays start by `ms` at most).
   */
  waitReady(ms: number): Promise<void> {
    if (this.client.status === 'ready') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.clock.clearTimeout(timer);
        this.client.off('ready', done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, ms);
      this.client.once('ready', done);
    });
  }

  /** Closes the connection (no reconnect); later calls fail as unavailable; store_up is left alone. */
  async close(): Promise<void> {
    this.closed = true;
    this.client.disconnect(false);
    for (const c of this.extra.values()) c.disconnect(false);
  }

  private noteError(message: string): void {
    this.lastError = { message, at: this.clock.now() };
    this.updateUp();
  }

  private updateUp(): void {
    // A closed client speaks for nothing: the gauge is its successor's, or gone with stores.redis.
    if (this.closed) return;
    this.metrics.storeUp.labels('redis').set(this.up ? 1 : 0);
  }

  private opMetrics(op: string): OpMetrics {
    let m = this.ops.get(op);
    if (!m) {
      const c = this.metrics.storeRequests;
      m = {
        ok: c.labels('redis', op, 'ok'),
        error: c.labels('redis', op, 'error'),
        timeout: c.labels('redis', op, 'timeout'),
        unavailable: c.labels('redis', op, 'unavailable'),
        duration: this.metrics.storeDuration.labels('redis', op),
      };
      this.ops.set(op, m);
    }
    return m;
  }
}
