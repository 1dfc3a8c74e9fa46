/**
 * Bulkhead, per upstream: at most `max_concurrent` requests in flight (from admission until the
 * response to the client is over), `max_queue` more waiting up to `queue_timeout`; beyond that 503
 * at once. A hanging upstream can then hold only its own slots, never the whole process.
 */

import type { Clock } from '../clock.js';
import type { BulkheadPolicy } from '../config/resolve.js';
import { type Problem, problem } from '../listener/problem.js';
import {
  type Call,
  type CallResponse,
  type Layer,
  type Outcome,
  onFinish,
  type ProblemOutcome,
  type RequestContext,
} from './types.js';

interface Waiter {
  resolve: (admitted: boolean) => void;
  timer: unknown;
  /** The promise `acquire` returned for this waiter (how `leave` finds it). */
  promise?: Promise<boolean>;
}

export class Bulkhead {
  private active = 0;
  private readonly waiting: Waiter[] = [];

  constructor(
    readonly policy: BulkheadPolicy,
    private readonly clock: Clock,
  ) {}

  get inFlight(): number {
    return this.active;
  }
  get queueLength(): number {
    return this.waiting.length;
  }

  /** Resolves true when a slot is held (release it once), false when refused. */
  acquire(): Promise<boolean> | boolean {
    if (this.active < this.policy.maxConcurrent) {
      this.active++;
      return true;
    }
    if (this.waiting.length >= this.policy.maxQueue) return false;
    let waiter: Waiter | undefined;
    const promise = new Promise<boolean>((resolve) => {
      const w: Waiter = {
        resolve,
        timer: this.clock.setTimeout(() => {
          const i = this.waiting.indexOf(w);
          if (i >= 0) this.waiting.splice(i, 1);
          resolve(false);
        }, this.policy.queueTimeout),
      };
      waiter = w;
      this.waiting.push(w);
    });
    (waiter as Waiter).promise = promise;
    return promise;
  }

  /** Takes a waiter out of the queue at once (its client left); it resolves false. */
  leave(queued: Promise<boolean>): void {
    const i = this.waiting.findIndex((w) => w.promise === queued);
    if (i < 0) return;
    const [w] = this.waiting.splice(i, 1) as [Waiter];
    this.clock.clearTimeout(w.timer);
    w.resolve(false);
  }

  release(): void {
    const w = this.waiting.shift();
    if (w) {
      this.clock.clearTimeout(w.timer);
      w.resolve(true); // the slot passes straight to the next waiter
    } else {
      this.active--;
    }
  }

  /** The 503 `bulkhead-full` answer. */
  fullProblem(upstream: string, requestId: string): Problem {
    const detail = `upstream ${upstream} has ${this.policy.maxConcurrent} requests in flight`;
    return problem('bulkhead-full', detail, { upstream, requestId });
  }

  /**
   * Works over any call (an HTTP request, a WebSocket handshake): the slot is held until the call's
   * finishers run (the response to the client is over; a WebSocket's connection closed).
   */
  layer<R extends CallResponse>(upstream: string, onRejected: () => void): Layer<R> {
    const admit = (ctx: RequestContext, next: Call<R>): Promise<Outcome<R>> => {
      // A request whose client left while it queued gives its slot straight back.
      if (ctx.clientGone) {
        this.release();
        return Promise.resolve(refuse(ctx));
      }
      let released = false;
      onFinish(ctx, () => {
        if (!released) {
          released = true;
          this.release();
        }
      });
      return next(ctx);
    };
    const refuse = (ctx: RequestContext): ProblemOutcome => {
      onRejected();
      return { type: 'problem', problem: this.fullProblem(upstream, ctx.requestId) };
    };
    // The common case (a free slot) adds no promise of its own.
    return (next) => (ctx) => {
      const got = this.acquire();
      if (got === true) return admit(ctx, next);
      if (got === false) return Promise.resolve(refuse(ctx));
      // A client that leaves while queued frees its place in the queue at once.
      onFinish(ctx, () => this.leave(got));
      return got.then((admitted): Outcome<R> | Promise<Outcome<R>> =>
        admitted ? admit(ctx, next) : refuse(ctx),
      );
    };
  }
}
