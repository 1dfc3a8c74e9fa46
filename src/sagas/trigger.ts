/**
 * A request that starts a saga: its body read whole (bounded by the listener's max_body_bytes),
 * parsed as JSON when a template reads `request.body`, the saga run, and its answer written with
 * the saga's id (`x-breakwater-saga-id`) and state (`x-breakwater-saga-state`).
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import { isHopByHop } from '../attempt/headers.js';
import type { Clock } from '../clock.js';
import { answered, isProblemKind, type Problem, problem, sendProblem } from '../listener/problem.js';
import type { Logger } from '../observability/logger.js';
import { type ClientAnswer, LogUnavailable, type SagaEngine } from './engine.js';
import type { RequestRecord } from './machine.js';
import type { SagaModel } from './model.js';

export interface TriggerLimits {
  /** The listener's limits.max_body_bytes (0: none). */
  readonly maxBodyBytes: number;
}

class TooLarge extends Error {}

export function runTrigger(
  engine: SagaEngine,
  model: SagaModel,
  params: Record<string, string>,
  req: IncomingMessage,
  res: ServerResponse,
  requestId: string,
  url: string,
  limits: TriggerLimits,
  logger: Logger,
  clock: Clock,
): void {
  const cl = req.headers['content-length'];
  if (limits.maxBodyBytes > 0 && cl !== undefined && Number(cl) > limits.maxBodyBytes) {
    writeProblem(
      res,
      problem(
        'payload-too-large',
        `the request body (${cl} bytes) is over the limit of ${limits.maxBodyBytes} bytes`,
        { requestId, headers: ['connection', 'close'] },
      ),
    );
    return;
  }
  if (req.headers.expect !== undefined && req.httpVersion !== '1.0') res.writeContinue();
  readWhole(req, limits.maxBodyBytes, model.timeout, clock)
    .then(
      async (body) => {
        let json: unknown;
        if (model.needsJsonBody) {
          try {
            json = JSON.parse(body.toString('utf8')) as unknown;
          } catch (err) {
            writeProblem(
              res,
              problem(
                'bad-request',
                `saga ${model.name} reads fields of the request body, which is not JSON (${(err as Error).message})`,
                { requestId },
              ),
            );
            return;
          }
          if (json === null || typeof json !== 'object') {
            writeProblem(
              res,
              problem(
                'bad-request',
                `saga ${model.name} reads fields of the request body, which must be a JSON object or array`,
                { requestId },
              ),
            );
            return;
          }
        }
        const q = url.indexOf('?');
        const query: Record<string, string> = {};
        if (q >= 0) for (const [k, v] of new URLSearchParams(url.slice(q + 1))) query[k] ??= v;
        const headers: Record<string, string> = {};
        for (const h of model.headersRead) {
          const v = req.headers[h];
          if (v !== undefined) headers[h] = Array.isArray(v) ? v.join(', ') : v;
        }
        const keepBody = (model.needsJsonBody || model.forwardsBody) && body.length > 0;
        const record: RequestRecord = {
          method: req.method ?? 'POST',
          path: q < 0 ? url : url.slice(0, q),
          params,
          query,
          headers,
          body: keepBody ? body.toString('base64') : null,
          contentType: req.headers['content-type'],
          requestId,
          clientAddress: req.socket?.remoteAddress,
        };
        try {
          const { answer } = await engine.begin(model, record);
          writeAnswer(res, answer, requestId);
        } catch (err) {
          if (!(err instanceof LogUnavailable)) throw err;
          logger.error({ event: 'saga_log_failed', saga: model.name, err }, err.message);
          writeProblem(res, problem('saga-unavailable', `${err.message}; no step was run`, { requestId }));
        }
      },
      (err: unknown) => {
        if (err instanceof TooLarge)
          writeProblem(
            res,
            problem('payload-too-large', err.message, { requestId, headers: ['connection', 'close'] }),
          );
        else if (!answered(res))
          writeProblem(
            res,
            problem('body-timeout', `the request body did not arrive within ${model.timeout} ms`, {
              requestId,
              headers: ['connection', 'close'],
            }),
          );
      },
    )
    .catch((err: unknown) => {
      logger.error(
        { event: 'saga_trigger_failed', saga: model.name, err, request_id: requestId },
        'saga trigger failed',
      );
      writeProblem(
        res,
        problem('saga-failed', 'internal error while running the saga', { status: 500, requestId }),
      );
    });
}

function readWhole(req: IncomingMessage, max: number, timeoutMs: number, clock: Clock): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = clock.setTimeout(() => {
      req.destroy();
      reject(new Error('timeout'));
    }, timeoutMs);
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (max > 0 && size > max) {
        clock.clearTimeout(timer);
        req.pause();
        reject(new TooLarge(`the request body is over the limit of ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      clock.clearTimeout(timer);
      resolve(Buffer.concat(chunks, size));
    });
    req.on('error', (err) => {
      clock.clearTimeout(timer);
      reject(err);
    });
  });
}

function writeProblem(res: ServerResponse, p: Problem, saga?: { id: string; state: string }): void {
  sendProblem(res, p, saga ? { saga_id: saga.id, saga_state: saga.state } : undefined);
}

function writeAnswer(res: ServerResponse, a: ClientAnswer, requestId: string): void {
  if (answered(res)) return;
  const sagaHeaders: string[] = [];
  const headers: string[] = [];
  for (let i = 0; i + 1 < a.headers.length; i += 2) {
    const name = (a.headers[i] as string).toLowerCase();
    if (name.startsWith('x-breakwater-saga-')) sagaHeaders.push(name, a.headers[i + 1] as string);
    else if (name !== 'content-length' && name !== 'x-request-id' && !isHopByHop(name))
      headers.push(name, a.headers[i + 1] as string);
  }
  if (a.problem) {
    const kind = isProblemKind(a.problem.kind) ? a.problem.kind : 'saga-failed';
    const id = sagaHeaders[sagaHeaders.indexOf('x-breakwater-saga-id') + 1] ?? '';
    const state = sagaHeaders[sagaHeaders.indexOf('x-breakwater-saga-state') + 1] ?? '';
    writeProblem(
      res,
      problem(kind, a.problem.detail, { status: a.status, requestId, headers: sagaHeaders }),
      { id, state },
    );
    return;
  }
  headers.push(...sagaHeaders, 'content-length', String(a.body.length), 'x-request-id', requestId);
  res.writeHead(a.status, headers);
  res.end(res.req.method === 'HEAD' ? undefined : a.body);
}
