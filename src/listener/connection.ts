/**
 * What a listener keeps per HTTP/1 connection, from the moment it is accepted:
 *
 * - whether a refusal closed it: nothing read after a refusal is forwarded or answered (a request
 *   pipelined behind a refused one may be a smuggled one);
 * - the responses still owed on it, so that an answer written on the raw socket (the 400 for a
 *   request Node's parser refuses, a refused CONNECT) or an upgrade waits until the answers to the
 *   requests pipelined before it are out: a client gets its answers in the order it asked;
 * - the request whose body is being read, which is the one a parse error in a body belongs to.
 *
 * HTTP/2 has none of this: each request is its own stream.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ListenerContext } from '../pipeline/types.js';

export class Http1Connection {
  /** A refusal closes this connection: nothing more from it is forwarded or answered. */
  refused = false;
  /** Requests read after the refusal (and left unanswered). */
  ignored = 0;
  /** The latest request that went past the refusals (the one whose body the parser may be in). */
  current: ListenerContext | undefined = undefined;
  private open = 0;
  private waiting: (() => void) | undefined = undefined;
  private readonly ended = (): void => {
    this.open--;
    if (this.open === 0 && this.waiting !== undefined) {
      const run = this.waiting;
      this.waiting = undefined;
      run();
    }
  };

  /** A response began on this connection; it is owed until it closes (sent or aborted). */
  begin(res: ServerResponse): void {
    this.open++;
    res.on('close', this.ended);
  }

  /** Runs `fn` once every response begun so far is over: at once when none is owed. */
  afterResponses(fn: () => void): void {
    if (this.open === 0) {
      fn();
      return;
    }
    const before = this.waiting;
    this.waiting =
      before === undefined
        ? fn
        : () => {
            before();
            fn();
          };
  }
}

const CONNECTIONS = new WeakMap<object, Http1Connection>();

/** Starts keeping the state of a connection that will speak HTTP/1. */
export function trackConnection(socket: Socket): Http1Connection {
  const c = new Http1Connection();
  CONNECTIONS.set(socket, c);
  return c;
}

/** The state of an HTTP/1 connection (undefined for anything else, such as an HTTP/2 stream's socket). */
export function connectionOf(socket: Duplex | null | undefined): Http1Connection | undefined {
  return socket ? CONNECTIONS.get(socket) : undefined;
}
