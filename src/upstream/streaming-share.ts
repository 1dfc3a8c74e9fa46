/**
 * The streaming share of an upstream's connections.
 *
 * A request that streams at the client's pace holds its upstream connection for as long as the
 * client takes: an unbuffered upload (`request_buffering: false`, gRPC) or an unbuffered response
 * (gRPC, `text/event-stream`, `response_buffering: false`, the opt-out header). Such attempts may
 * hold at most `limit` (from `streaming_connections`) of each endpoint's connections at once, so
 * slow streams can never take the connections that buffered requests need. An attempt that finds
 * no room waits for one to end (`wait`), within its attempt timeout.
 *
 * One share per upstream, kept across reloads that keep its endpoints (the counts live on the
 * endpoints; a reload may change the limit).
 */

/** What the share counts on each endpoint. */
import { type Clock, systemClock } from '../clock.js';

export interface StreamingCounted {
  streaming: number;
}

interface Waiter {
  readonly wake: (woken: boolean) => void;
  readonly timer: unknown;
}

export class StreamingShare {
  private readonly waiters: Waiter[] = [];

  constructor(
    public limit: number,
    private readonly clock: Clock = systemClock,
  ) {}

  /** Whether `e` has room for one more streaming attempt. */
  hasRoom(e: StreamingCounted): boolean {
    return e.streaming < this.limit;
  }

  /** Takes a place on `e` if it has room; true when taken (give it back with `release`). */
  tryTake(e: StreamingCounted): boolean {
    if (e.streaming >= this.limit) return false;
    e.streaming++;
    return true;
  }

  /** Gives a place back, and wakes the longest waiter. */
  release(e: StreamingCounted): void {
    e.streaming--;
    const w = this.waiters.shift();
    if (w) {
      this.clock.clearTimeout(w.timer);
      w.wake(true);
    }
  }

  /** Resolves true when a place was given back somewhere (look again), false after `ms`. */
  wait(ms: number): Promise<boolean> {
    return new Promise<boolean>((wake) => {
      const w: Waiter = {
        wake,
        timer: this.clock.setTimeout(() => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          wake(false);
        }, ms),
      };
      this.waiters.push(w);
    });
  }

  /** Waiting now (the /state page). */
  get waiting(): number {
    return this.waiters.length;
  }
}
