/**
 * A WebSocket handshake's upstream attempt: the innermost call of an upgrade's pipeline, as
 * `upstreamCall` is a request's. It picks an endpoint, sends the handshake on a connection of its
 * own (node:http, no pool: a WebSocket owns its TCP connection) within `connect_timeout` to connect
 * and `timeout` for the answer, and resolves with the answer (a 101 or any other status) or the
 * failure. Outlier detection hears the result here; the breaker and the other policies judge the
 * outcome in their layers, as for any call. There are no retries: a handshake is sent once.
 *
 * The answer is held, not relayed: the WebSocket tunnel (websocket.ts) relays it, or drops it
 * (`discard`) when the client left meanwhile.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Clock } from '../clock.js';
import { problem } from '../listener/problem.js';
import {
  type Call,
  type CallResponse,
  type Outcome,
  onFinish,
  type RequestContext,
} from '../pipeline/types.js';
import { secureContextOf, tlsNameOf } from '../upstream/upstream.js';
import { AttemptError, classify } from './attempt.js';
import { upgradeRequestHeaders } from './headers.js';

/** The head of a handshake's answer, as a call's response offers it. */
export interface HandshakeHead {
  readonly status: number;
  readonly statusText: string;
  readonly grpcStatus: undefined;
  /** Node's raw header strings (name, value, ...). */
  readonly rawHeaders: readonly string[];
  readonly upgrade: string | undefined;
}

/** A handshake's answer. */
export interface HandshakeResponse extends CallResponse {
  readonly attempt: Handshake;
  readonly head: HandshakeHead;
}

const CLIENT_GONE = new AttemptError('client-aborted', 'the client closed the connection', true);
const NO_STATUS: Promise<number | undefined> = Promise.resolve(undefined);

/** One handshake in flight, then its answer: the response, or (101) the upstream socket. */
export class Handshake {
  /** The answer to anything but a 101 (its body not read yet). */
  response: IncomingMessage | undefined;
  /** After a 101: the upstream's socket, and the bytes that came behind its head. */
  socket: Socket | undefined;
  upstreamHead: Buffer | undefined;
  /** Called on an error of the request after its answer came (the tunnel cuts the client then). */
  afterError: (() => void) | undefined;
  private settled = false;
  private connected = false;
  private readonly timers: unknown[] = [];

  constructor(
    readonly request: ClientRequest,
    private readonly clock: Clock,
  ) {}

  /** A handshake has no gRPC status. */
  grpcEnd(): Promise<number | undefined> {
    return NO_STATUS;
  }

  /** Drops the answer and whatever holds it. */
  discard(): void {
    this.response?.destroy();
    this.socket?.destroy();
    this.request.destroy();
  }

  /** Stops a handshake still waiting for its answer (no effect once it came). */
  abort(err: AttemptError): void {
    if (!this.settled) this.request.destroy(err);
  }

  /** @internal The call's timers and settling. */
  timer(ms: number, fn: () => void): void {
    this.timers.push(this.clock.setTimeout(fn, ms));
  }

  /** @internal */
  settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    for (const t of this.timers) this.clock.clearTimeout(t);
    return true;
  }

  /** @internal */
  markConnected(): void {
    this.connected = true;
  }

  get isConnected(): boolean {
    return this.connected;
  }
}

/** The innermost call of a WebSocket handshake's pipeline. */
export function handshakeCall(clock: Clock): Call<HandshakeResponse> {
  return (ctx: RequestContext): Promise<Outcome<HandshakeResponse>> => {
    const { upstream, route, requestId } = ctx;
    // The client left while the call was admitted (a wait in the shaper or the bulkhead's queue).
    if (ctx.clientGone) return Promise.resolve({ type: 'failure', error: CLIENT_GONE, endpoint: undefined });
    const endpoint = upstream.pick(ctx.tried);
    if (!endpoint) {
      const detail = `no endpoint of upstream ${upstream.name} is healthy`;
      return Promise.resolve({
        type: 'problem',
        problem: problem('no-healthy-endpoint', detail, { upstream: upstream.name, requestId }),
      });
    }
    ctx.tried = endpoint;
    ctx.attempts++;
    endpoint.inflight++;
    onFinish(ctx, () => {
      endpoint.inflight--;
    });
    const url = new URL(endpoint.model.origin);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const headers = upgradeRequestHeaders(
      ctx.req,
      {
        host: upstream.hostFor(endpoint, ctx.req.headers.host),
        requestId,
        proto: 'http',
        remoteAddress: ctx.peer,
        trust: route.trust,
      },
      ctx.req.headers.upgrade as string,
    );
    const options: http.RequestOptions = {
      host,
      port: Number(url.port),
      method: 'GET',
      path: ctx.path,
      headers,
      setHost: false,
      agent: false,
    };
    const sentAt = clock.now();
    // An https endpoint is reached with the upstream's tls settings, as its pool is.
    const tls = upstream.model.tls;
    const secure = url.protocol === 'https:';
    const request = secure
      ? https.request({
          ...options,
          servername: tlsNameOf(endpoint.model, upstream.model),
          rejectUnauthorized: !tls?.insecureSkipVerify,
          ...(tls ? { secureContext: secureContextOf(tls) } : {}),
        })
      : http.request(options);
    const hs = new Handshake(request, clock);
    // The client leaving stops a handshake still in flight (the tunnel runs the finishers).
    onFinish(ctx, () => hs.abort(CLIENT_GONE));
    return new Promise<Outcome<HandshakeResponse>>((resolve) => {
      const answered = (res: IncomingMessage, status: number): void => {
        upstream.recordResult(endpoint, status >= 500, clock.now() - sentAt);
        resolve({
          type: 'response',
          attempt: hs,
          endpoint,
          head: {
            status,
            statusText: res.statusMessage ?? '',
            grpcStatus: undefined,
            rawHeaders: res.rawHeaders,
            upgrade: res.headers.upgrade,
          },
        });
      };
      const failed = (error: AttemptError): void => {
        if (error.kind !== 'client-aborted' && !ctx.clientGone)
          upstream.recordResult(endpoint, true, undefined);
        resolve({ type: 'failure', error, endpoint });
      };
      const connectMs = route.timeouts.connect;
      const answerMs = route.timeouts.attempt;
      // 0 is no connect timeout, as for the pools (undici sets no timer then).
      if (connectMs > 0)
        hs.timer(connectMs, () => {
          if (!hs.isConnected)
            request.destroy(
              new AttemptError(
                'connect-timeout',
                `connecting to the upstream took longer than ${connectMs} ms`,
                false,
              ),
            );
        });
      hs.timer(answerMs, () => {
        const detail = `the upstream did not answer the WebSocket handshake within ${answerMs} ms`;
        request.destroy(new AttemptError('timeout', detail, true));
      });
      request.on('socket', (s: Socket) => {
        s.once(secure ? 'secureConnect' : 'connect', () => hs.markConnected());
      });
      request.on('upgrade', (res: IncomingMessage, socket: Socket, upstreamHead: Buffer) => {
        socket.on('error', ignore);
        if (!hs.settle()) {
          socket.destroy();
          return;
        }
        hs.socket = socket;
        hs.upstreamHead = upstreamHead;
        const protocol = res.headers.upgrade;
        if (protocol === undefined || protocol.trim().toLowerCase() !== 'websocket') {
          socket.destroy();
          const detail = `the upstream switched to ${JSON.stringify(protocol ?? '')}, not websocket`;
          failed(new AttemptError('protocol', detail, true));
          return;
        }
        answered(res, 101);
      });
      request.on('response', (res: IncomingMessage) => {
        if (!hs.settle()) {
          res.destroy();
          return;
        }
        hs.response = res;
        answered(res, res.statusCode ?? 502);
      });
      request.on('error', (err: Error) => {
        if (!hs.settle()) {
          hs.afterError?.();
          return;
        }
        failed(classify(err, hs.isConnected, hs.isConnected));
      });
      request.end();
    });
  };
}

function ignore(): void {}
