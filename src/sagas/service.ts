/**
 * Sagas in a running breakwater: the engine on the durable log in `data_dir`, its metrics and log
 * lines, the triggers each listener checks before its routes, and what the admin API asks.
 * Made only when the config has `sagas:` (a config without it never touches the disk).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Clock, every } from '../clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { type EmbeddedStore, lockFile } from '../stores/embedded.js';
import { SagaEngine, type StepCaller } from './engine.js';
import { EmbeddedSagaLog } from './log.js';
import { SAGA_STATES, type SagaRecord, type SagaState } from './machine.js';
import { matchTrigger, type SagaModel } from './model.js';
import { runTrigger, type TriggerLimits } from './trigger.js';

export interface SagaServiceDeps {
  readonly store: EmbeddedStore;
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
  private readonly parked = new Map<string, string>();
  private stopSweep: () => void = () => undefined;

  private constructor(
    readonly engine: SagaEngine,
    private readonly log: EmbeddedSagaLog,
    private readonly deps: SagaServiceDeps,
    private readonly unlock: () => Promise<void>,
  ) {}

  /**
   * Takes the sagas lock of `data_dir` (one process drives a directory's sagas), opens the log and
   * recovers every saga that was in flight.
   */
  static async open(deps: SagaServiceDeps): Promise<SagaService> {
    const unlock = await lockFile(deps.store.dir, 'sagas');
    if (!unlock)
      throw new Error(
        `another breakwater process runs the sagas of ${deps.store.dir} (sagas.lock); give each process its own data_dir`,
      );
    const log = new EmbeddedSagaLog(deps.store);
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
          logger.error(
            { event: 'saga_log_failed', saga: rec.saga, saga_id: rec.id, err },
            `saga ${rec.saga} ${rec.id} stopped: its log could not be written (it is recovered at the next start)`,
          ),
      },
    });
    service = new SagaService(engine, log, deps, unlock);
    for (const rec of log.list())
      if (rec.state === 'failed_to_compensate') service.parked.set(rec.id, rec.saga);
    service.stopSweep = every(deps.clock, SWEEP_EVERY, () => void engine.sweep().catch(() => undefined));
    metrics.collectors.set('sagas', () => service?.collect());
    return service;
  }

  /** Removes what is past its retention and drives on every saga that was in flight (once, at start). */
  async recover(): Promise<number> {
    const { engine, log, deps } = this;
    const { logger } = deps;
    await engine.sweep();
    const recovered = engine.recover();
    const unknown = [...log.list()].filter(
      (r) => (r.state === 'running' || r.state === 'compensating') && !deps.models()[r.saga],
    );
    for (const r of unknown)
      logger.warn(
        { event: 'saga_undefined', saga: r.saga, saga_id: r.id, state: r.state },
        `saga ${r.id} is ${r.state} but the config no longer defines saga ${r.saga}: it waits until the saga is defined again`,
      );
    logger.info(
      { event: 'sagas_opened', data_dir: deps.store.dir, recovered },
      `saga log open, ${recovered} sagas recovered`,
    );
    return recovered;
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

  /** Newest first (ids are time-ordered), read only as far as `limit` matches. */
  list(filter: { state?: SagaState | undefined; saga?: string | undefined; limit: number }): SagaRecord[] {
    const out: SagaRecord[] = [];
    for (const r of this.log.list({ reverse: true })) {
      if (filter.state !== undefined && r.state !== filter.state) continue;
      if (filter.saga !== undefined && r.saga !== filter.saga) continue;
      out.push(r);
      if (out.length >= filter.limit) break;
    }
    return out;
  }

  get(id: string): SagaRecord | undefined {
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

  /** Stops driving sagas (in flight ones stay in the log for the next start) and releases the lock. */
  async stop(): Promise<void> {
    this.stopSweep();
    this.deps.metrics.collectors.delete('sagas');
    await this.engine.stop();
    await this.unlock();
  }
}
