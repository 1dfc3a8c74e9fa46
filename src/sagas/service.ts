/**
 * Sagas in a running breakwater: the engine on the durable log (`saga_store`: the embedded store in
 * `data_dir`, or Redis shared by a fleet), its metrics and log lines, the triggers each listener
 * checks before its routes, and what the admin API asks. Made only when the config has `sagas:`
 * (a config without it never touches the disk).
 *
 * On Redis, sagas in flight have leases: this process renews the leases of the sagas it drives
 * every lease/3, and every lease/2 takes over (recovers) the sagas whose lease lapsed, whoever
 * started them.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Clock, every } from '../clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { type EmbeddedStore, lockFile } from '../stores/embedded.js';
import type { RedisStore } from '../stores/redis.js';
import { SagaEngine, type StepCaller } from './engine.js';
import { EmbeddedSagaLog, SagaFenced, type SagaLog } from './log.js';
import { SAGA_STATES, type SagaRecord, type SagaState } from './machine.js';
import { matchTrigger, type SagaModel } from './model.js';
import { RedisSagaLog } from './redis-log.js';
import { runTrigger, type TriggerLimits } from './trigger.js';

/** Where the saga log lives (`saga_store`). */
export type SagaBackend =
  | { readonly kind: 'embedded'; readonly store: EmbeddedStore }
  | {
      readonly kind: 'redis';
      /** The process's Redis store now (a reload may replace it). */
      readonly store: () => RedisStore | undefined;
      readonly lease: number;
    };

export interface SagaServiceDeps {
  readonly backend: SagaBackend;
  readonly clock: Clock;
  readonly call: StepCaller;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** The live definitions (a reload swaps them; sagas in flight keep the one they started with). */
  readonly models: () => Readonly<Record<string, SagaModel>>;
  /** The admin URL of a saga (the Long-Running-Action header). */
  readonly sagaUrl: (id: string) => string;
}

/** A request handler for a trigger a listener matched. */
export type SagaTrigger = (req: IncomingMessage, res: ServerResponse, requestId: string, url: string) => void;

/** How often finished sagas past their retention are removed from the log. */
const SWEEP_EVERY = 60_000;

export class SagaService {
  private parked = new Map<string, string>();
  private readonly stoppers: (() => void)[] = [];
  /** A takeover round is running (rounds never overlap). */
  private takingOver = false;

  private constructor(
    readonly engine: SagaEngine,
    private readonly log: SagaLog,
    private readonly deps: SagaServiceDeps,
    private readonly unlock: () => Promise<void>,
  ) {}

  /**
   * Opens the log: on the embedded store, takes the sagas lock of `data_dir` first (one process
   * drives a directory's sagas). `recover()` then drives the sagas that were in flight.
   */
  static async open(deps: SagaServiceDeps): Promise<SagaService> {
    const b = deps.backend;
    let unlock = async () => undefined;
    let log: SagaLog;
    if (b.kind === 'embedded') {
      const release = await lockFile(b.store.dir, 'sagas');
      if (!release)
        throw new Error(
          `another breakwater process runs the sagas of ${b.store.dir} (sagas.lock); give each process its own data_dir`,
        );
      unlock = async () => {
        await release();
      };
      log = new EmbeddedSagaLog(b.store);
    } else log = new RedisSagaLog(b.store, b.lease);
    let service: SagaService | undefined;
    const { metrics, logger } = deps;
    const engine = new SagaEngine({
      clock: deps.clock,
      call: deps.call,
      log,
      model: (name) => deps.models()[name],
      names: () => Object.keys(deps.models()),
      sagaUrl: deps.sagaUrl,
      observer: {
        transition: (rec, e) =>
          logger.info(
            {
              event: 'saga',
              saga: rec.saga,
              saga_id: rec.id,
              transition: e.type,
              step: 'step' in e ? rec.steps[e.step]?.name : undefined,
              state: rec.state,
              request_id: rec.request.requestId,
            },
            `saga ${rec.saga} ${rec.id}: ${e.type}`,
          ),
        finished: (rec) => {
          metrics.sagas.labels(rec.saga, rec.state).inc();
          metrics.sagaDuration
            .labels(rec.saga)
            .observe(((rec.finishedAt ?? rec.updatedAt) - rec.createdAt) / 1000);
          if (rec.state === 'failed_to_compensate') {
            service?.parked.set(rec.id, rec.saga);
            logger.error(
              {
                event: 'saga_failed_to_compensate',
                saga: rec.saga,
                saga_id: rec.id,
                step: rec.steps.find((s) => s.state === 'compensation_failed')?.name,
              },
              `saga ${rec.saga} ${rec.id} failed to compensate: an operator must retry or forget it (POST /sagas/${rec.id}/retry)`,
            );
          }
        },
        compensation: (rec, step, outcome) => metrics.sagaCompensations.labels(rec.saga, step, outcome).inc(),
        recovered: (rec) => {
          metrics.sagasRecovered.inc();
          logger.info(
            { event: 'saga_recovered', saga: rec.saga, saga_id: rec.id, state: rec.state },
            `saga ${rec.saga} ${rec.id} recovered (${rec.state})`,
          );
        },
        logFailed: (rec, err) =>
          err instanceof SagaFenced
            ? logger.warn(
                { event: 'saga_lost', saga: rec.saga, saga_id: rec.id, err: err.message },
                `saga ${rec.saga} ${rec.id} stopped here: ${err.message}`,
              )
            : logger.error(
                { event: 'saga_log_failed', saga: rec.saga, saga_id: rec.id, err },
                `saga ${rec.saga} ${rec.id} stopped: its log could not be written (it is recovered ${log.lease === undefined ? 'at the next start' : 'by the replica that takes it over once its lease lapses'})`,
              ),
      },
    });
    const s = new SagaService(engine, log, deps, unlock);
    service = s;
    const quiet = (p: Promise<unknown>) => void p.catch(() => undefined);
    s.stoppers.push(
      every(deps.clock, SWEEP_EVERY, () => quiet(engine.sweep().then(() => s.refreshParked()))),
    );
    if (log.lease !== undefined) {
      s.stoppers.push(every(deps.clock, Math.max(1, Math.floor(log.lease / 3)), () => quiet(s.renew())));
      s.stoppers.push(every(deps.clock, Math.max(1, Math.floor(log.lease / 2)), () => quiet(s.takeOver())));
    }
    metrics.collectors.set('sagas', () => service?.collect());
    return s;
  }

  /**
   * Once, after open: removes what is past its retention and drives on every saga that was in
   * flight (embedded) or whose lease lapsed (Redis; later rounds take over the rest). A Redis that
   * cannot be reached now is logged, not fatal: the next round tries again.
   */
  async recover(): Promise<number> {
    const { engine, log, deps } = this;
    const { logger } = deps;
    const where = log.backend === 'embedded' ? { data_dir: this.dataDir() } : { backend: 'redis' };
    try {
      await engine.sweep();
      await this.refreshParked();
      const recovered = await engine.recover();
      for (const state of ['running', 'compensating'] as const)
        for await (const r of log.list({ state }))
          if (!deps.models()[r.saga])
            logger.warn(
              { event: 'saga_undefined', saga: r.saga, saga_id: r.id, state: r.state },
              `saga ${r.id} is ${r.state} but the config no longer defines saga ${r.saga}: it waits until the saga is defined again`,
            );
      logger.info(
        { event: 'sagas_opened', ...where, recovered },
        `saga log open (${log.backend}), ${recovered} sagas recovered`,
      );
      return recovered;
    } catch (err) {
      logger.warn(
        { event: 'sagas_open_failed', ...where, err: (err as Error).message },
        `saga log (${log.backend}) could not be read: ${(err as Error).message}; sagas in flight are recovered once it can`,
      );
      return 0;
    }
  }

  private dataDir(): string | undefined {
    const b = this.deps.backend;
    return b.kind === 'embedded' ? b.store.dir : undefined;
  }

  /** Renews the leases of the sagas this process drives; stops those another replica owns now. */
  private async renew(): Promise<void> {
    const ids = this.engine.liveIds();
    if (ids.length === 0) return;
    for (const id of await this.log.renew(ids)) {
      this.deps.logger.warn(
        { event: 'saga_lost', saga_id: id },
        `saga ${id}: its lease was taken over by another replica; this one stops driving it`,
      );
      this.engine.abandon(id);
    }
  }

  /** One takeover round: drives the sagas whose lease lapsed (their owner died or stalled). */
  private async takeOver(): Promise<void> {
    if (this.takingOver) return;
    this.takingOver = true;
    try {
      await this.engine.recover();
    } finally {
      this.takingOver = false;
    }
  }

  /** The parked sagas (failed_to_compensate), read from the log's state index. */
  private async refreshParked(): Promise<void> {
    const next = new Map<string, string>();
    for await (const r of this.log.list({ state: 'failed_to_compensate' })) next.set(r.id, r.saga);
    this.parked = next;
  }

  private collect(): void {
    const { metrics } = this.deps;
    const names = new Set(Object.keys(this.deps.models()));
    const live = this.engine.inFlightBy();
    const parked = new Map<string, number>();
    for (const saga of this.parked.values()) parked.set(saga, (parked.get(saga) ?? 0) + 1);
    for (const n of [...live.keys(), ...parked.keys()]) names.add(n);
    for (const n of names) {
      metrics.sagasInFlight.labels(n).set(live.get(n) ?? 0);
      metrics.sagasParked.labels(n).set(parked.get(n) ?? 0);
    }
  }

  /** The trigger matcher of a listener, or undefined when no saga starts there. */
  triggerFor(
    listener: string,
    limits: TriggerLimits,
    all: Readonly<Record<string, SagaModel>>,
  ): ((method: string, path: string) => SagaTrigger | undefined) | undefined {
    const models = Object.values(all).filter((m) => m.trigger.listener === listener);
    if (models.length === 0) return undefined;
    // Every request of the listener is checked: a method and a literal prefix decide most without
    // allocating (the path is split only when it could be a trigger with parameters).
    const checks = models.map((m) => {
      const first = m.trigger.segments.findIndex((x) => typeof x !== 'string');
      const prefix =
        first < 0
          ? m.trigger.path
          : `/${m.trigger.segments.slice(0, first).join('/')}${first > 0 ? '/' : ''}`;
      return { m, exact: first < 0, prefix };
    });
    return (method, path) => {
      for (const { m, exact, prefix } of checks) {
        if (m.trigger.method !== method) continue;
        if (exact ? path !== prefix : !path.startsWith(prefix)) continue;
        const params = exact ? {} : matchTrigger(m.trigger.segments, path);
        if (params === undefined) continue;
        return (req, res, requestId, url) =>
          runTrigger(
            this.engine,
            m,
            params,
            req,
            res,
            requestId,
            url,
            limits,
            this.deps.logger,
            this.deps.clock,
          );
      }
      return undefined;
    };
  }

  /** Where the log lives ('embedded' or 'redis'). */
  get backend(): SagaLog['backend'] {
    return this.log.backend;
  }

  /** For GET /state: where the log lives, and the sagas this process drives and those parked. */
  state(): {
    backend: string;
    lease_ms: number | null;
    instance: string | null;
    driving: number;
    parked: number;
  } {
    const log = this.log;
    return {
      backend: log.backend,
      lease_ms: log.lease ?? null,
      instance: log instanceof RedisSagaLog ? (log.instance ?? null) : null,
      driving: this.engine.liveIds().length,
      parked: this.parked.size,
    };
  }

  /** Newest first (ids are time-ordered), read only as far as `limit` matches. */
  async list(filter: {
    state?: SagaState | undefined;
    saga?: string | undefined;
    limit: number;
  }): Promise<SagaRecord[]> {
    const out: SagaRecord[] = [];
    const options = filter.state === undefined ? { reverse: true } : { reverse: true, state: filter.state };
    for await (const r of this.log.list(options)) {
      if (filter.saga !== undefined && r.saga !== filter.saga) continue;
      out.push(r);
      if (out.length >= filter.limit) break;
    }
    return out;
  }

  get(id: string): Promise<SagaRecord | undefined> {
    return this.log.get(id);
  }

  async retry(id: string): ReturnType<SagaEngine['retry']> {
    const r = await this.engine.retry(id);
    if (r === 'ok') this.parked.delete(id);
    return r;
  }

  async forget(id: string): ReturnType<SagaEngine['forget']> {
    const r = await this.engine.forget(id);
    if (r === 'ok') this.parked.delete(id);
    return r;
  }

  static isState(s: string): s is SagaState {
    return (SAGA_STATES as readonly string[]).includes(s);
  }

  /**
   * Stops driving sagas (in flight ones stay in the log: the next start recovers them, or on Redis
   * another replica, at once: their leases are released) and releases the lock.
   */
  async stop(): Promise<void> {
    for (const stop of this.stoppers) stop();
    this.deps.metrics.collectors.delete('sagas');
    const mine = this.engine.liveIds();
    await this.engine.stop();
    await this.log.release(mine).catch(() => undefined);
    await this.unlock();
  }
}
