/**
 * The client side of a relayed response body: how the upstream's chunks reach the client.
 *
 *   Direct     each chunk is written to the client as it comes. While the client keeps up this is
 *              all there is (no copy, no timer, no extra listener).
 *   Buffering  the client fell behind (a write said "wait"): with buffering on, the upstream is read
 *              on at its own speed into a ResponseSpool (memory, then a temporary file) that is
 *              written out as the client drains, so the upstream connection goes back to the pool
 *              as soon as the upstream is done; back to Direct once the client has caught up. With
 *              buffering off (gRPC, event streams, opt-outs) the upstream is paused instead until
 *              the client drains, and holds its connection meanwhile.
 *   Done       the body ended (trailers relayed, response ended), or the relay was cut.
 *
 * `send_timeout` (nginx's): armed when the client first falls behind; while something waits for
 * the client, a client that takes nothing for that long (no write completes, no 'drain') is
 * disconnected and its upstream request stopped. A cut or failed body is never ended cleanly: the
 * client connection is destroyed, so a short body never passes for a whole one.
 */
import type { ServerResponse } from 'node:http';
import { responseStream } from '../listener/protocol.js';
import type { TempFileError, TempFiles } from '../stores/temp-files.js';
import { ResponseSpool } from './spool.js';

/** How far (bytes queued for the client) a response from an HTTP/2 upstream may run ahead. */
export const H2_MAX_BACKLOG = 64 * 1024 * 1024;

export type RawTrailers = readonly (string | Buffer)[] | Readonly<Record<string, string | string[]>> | null;

/** Trailers as one object (what addTrailers takes for HTTP/1.1 and HTTP/2 alike); undefined if none. */
export function trailerObject(trailers: RawTrailers): Record<string, string> | undefined {
  if (!trailers) return undefined;
  let out: Record<string, string> | undefined;
  if (Array.isArray(trailers)) {
    for (let i = 0; i < trailers.length; i += 2) {
      out ??= {};
      out[String(trailers[i])] = String(trailers[i + 1]);
    }
    return out;
  }
  for (const [k, v] of Object.entries(trailers as Record<string, string | string[]>)) {
    if (k.charCodeAt(0) === 58) continue;
    out ??= {};
    out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

/** Decided once per listener (and per kind of response), not per request. */
export interface RelayPolicy {
  /** Where what the client has not taken goes; undefined: the upstream waits for the client. */
  readonly buffer:
    | { readonly temp: TempFiles; readonly memory: number; readonly maxFile: number }
    | undefined;
  /** A client that accepts no byte this long is cut (ms; 0: never). */
  readonly sendTimeout: number;
}

/** Why a relay cut its client. */
export type CutReason = 'send_timeout' | 'buffer_lost' | 'h2_backlog';

/** The upstream side of the relay (an Attempt). */
export interface RelayOwner {
  /** The upstream may send again (after `data` returned false). */
  resumeUpstream(): void;
  /** The client was cut: stop the upstream's request if it still runs. */
  stopUpstream(reason: CutReason, message: string): void;
  /** The client response is over: ended whole, or not. */
  relayed(complete: boolean): void;
}

enum RelayState {
  Direct = 0,
  Buffering = 1,
  Done = 2,
}

export class ClientRelay {
  private state = RelayState.Direct;
  private spool: ResponseSpool | undefined;
  /** The upstream was told to wait (`data` returned false). */
  private paused = false;
  /** 'drain' is listened for (since the client first fell behind). */
  private listening = false;
  /** The client's connection holds more than it takes now: 'drain' awaited. */
  private backlogged = false;
  /** The upstream's body is complete; the rest is in the spool. */
  private ended = false;
  private trailers: RawTrailers = null;
  private sendTimer: NodeJS.Timeout | undefined;
  /** Set when the relay cut the client (access log). */
  cutReason: CutReason | undefined;

  constructor(
    private readonly res: ServerResponse,
    private readonly policy: RelayPolicy,
    private readonly owner: RelayOwner,
    private readonly h2Upstream: boolean,
  ) {}

  /** Where the response was buffered for a slow client, if it was: memory only, or a file too. */
  get buffered(): 'memory' | 'file' | undefined {
    if (this.spool === undefined) return undefined;
    return this.spool.spilled ? 'file' : 'memory';
  }

  /** A chunk of the upstream's body; false: the upstream should wait for `resumeUpstream`. */
  data(chunk: Buffer): boolean {
    if (this.state === RelayState.Direct) {
      if (this.res.write(chunk)) return true;
      return this.fellBehind();
    }
    if (this.state !== RelayState.Buffering) return true;
    const spool = this.spool as ResponseSpool;
    if (spool.push(chunk)) return true;
    if (this.h2Upstream) {
      // An HTTP/2 upstream's stream is never paused (see attempt.ts): memory takes what the file
      // does not keep up with, up to H2_MAX_BACKLOG; a client further behind is cut.
      if (spool.memoryHeld > H2_MAX_BACKLOG)
        this.cut(
          'h2_backlog',
          'the client fell more than the response buffer and 64 MiB behind an HTTP/2 upstream',
        );
      return true;
    }
    this.paused = true;
    return false;
  }

  /** The upstream's body is complete (with its trailers): ends the response once all is written. */
  end(trailers: RawTrailers): void {
    if (this.state === RelayState.Done) return;
    this.trailers = trailers;
    this.ended = true;
    if (this.state === RelayState.Direct || (this.spool as ResponseSpool).empty) this.finish();
  }

  /** Whether the response still waits for the client with the upstream done (buffered rest). */
  get draining(): boolean {
    return this.state === RelayState.Buffering && this.ended;
  }

  /** The upstream failed mid-body: the client connection is aborted, never ended cleanly. */
  fail(): void {
    if (this.state === RelayState.Done) return;
    this.stop();
    this.res.destroy();
  }

  private fellBehind(): boolean {
    this.backlogged = true;
    // 'drain' is listened for from the first write that said "wait" (it comes after that write
    // returned): a client that keeps up costs no listener added and taken off.
    if (!this.listening) {
      this.listening = true;
      this.res.on('drain', this.onDrain);
    }
    if (this.policy.sendTimeout > 0 && this.sendTimer === undefined) {
      this.sendTimer = setTimeout(this.onSendTimeout, this.policy.sendTimeout);
      this.sendTimer.unref();
      // From here on the relay may outlive the upstream: it hears the client leave itself.
      this.res.once('close', this.onClose);
    }
    const b = this.policy.buffer;
    if (b) {
      if (this.spool === undefined) {
        this.spool = new ResponseSpool(b.temp, b.memory, b.maxFile, this.spoolEvents);
        if (this.sendTimer === undefined) this.res.once('close', this.onClose);
      }
      this.state = RelayState.Buffering;
      return true;
    }
    if (this.h2Upstream) {
      if (this.res.writableLength > H2_MAX_BACKLOG)
        this.cut('h2_backlog', 'the client fell more than 64 MiB behind an HTTP/2 upstream');
      return true;
    }
    this.paused = true;
    return false;
  }

  private readonly onDrain = (): void => {
    this.backlogged = false;
    this.sendTimer?.refresh();
    if (this.state === RelayState.Buffering) this.pump();
    else if (this.paused && this.state === RelayState.Direct) {
      this.paused = false;
      this.owner.resumeUpstream();
    }
  };

  private readonly onWritten = (): void => {
    this.sendTimer?.refresh();
  };

  /** Writes what the spool has in memory until the client pushes back. */
  private pump(): void {
    const spool = this.spool as ResponseSpool;
    while (!this.backlogged) {
      const chunk = spool.shift();
      if (chunk === undefined) break;
      if (!this.res.write(chunk, this.onWritten)) this.backlogged = true;
    }
    if (this.state !== RelayState.Buffering) return;
    if (spool.empty) {
      if (this.ended) {
        this.finish();
        return;
      }
      // Caught up: chunks go straight to the client again.
      if (!this.backlogged) this.state = RelayState.Direct;
    }
    if (this.paused && spool.hasRoom()) {
      this.paused = false;
      this.owner.resumeUpstream();
    }
  }

  private readonly spoolEvents = {
    ready: (): void => {
      if (this.state === RelayState.Buffering) this.pump();
    },
    lost: (err: TempFileError): void => {
      this.cut('buffer_lost', `the buffered response could not be read back (${err.message})`);
    },
  };

  private readonly onSendTimeout = (): void => {
    if (this.state === RelayState.Done) return;
    // Nothing waits for the client (the upstream is the slow one, or a read from disk): not its fault.
    if (!this.backlogged) {
      this.sendTimer?.refresh();
      return;
    }
    this.cut(
      'send_timeout',
      `the client accepted no byte of the response for ${this.policy.sendTimeout} ms (send_timeout)`,
    );
  };

  private readonly onClose = (): void => {
    if (this.state === RelayState.Done) return;
    this.stop();
    this.owner.relayed(false);
  };

  /** Disconnects the client and stops the upstream. */
  private cut(reason: CutReason, message: string): void {
    if (this.state === RelayState.Done) return;
    this.cutReason = reason;
    this.stop();
    this.res.destroy();
    this.owner.stopUpstream(reason, message);
    this.owner.relayed(false);
  }

  private finish(): void {
    this.stop();
    const res = this.res;
    // Relayed where the client's framing can carry them: chunked HTTP/1.1, or HTTP/2.
    if (res.chunkedEncoding || responseStream(res) !== undefined) {
      const t = trailerObject(this.trailers);
      if (t) res.addTrailers(t);
    }
    res.end();
    this.owner.relayed(true);
  }

  private stop(): void {
    this.state = RelayState.Done;
    if (this.listening) this.res.off('drain', this.onDrain);
    if (this.sendTimer !== undefined) clearTimeout(this.sendTimer);
    this.spool?.destroy();
  }
}
