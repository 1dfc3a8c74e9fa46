/**
 * Which protocol a request came over, judged by the object Node made for it: an HTTP/2 request is
 * an `Http2ServerRequest` (Node's compatibility API) with a stream under it; anything else is an
 * HTTP/1 `IncomingMessage`, whatever version its request line claims (`GET / HTTP/2.0` is an
 * HTTP/1 request with a version breakwater refuses). Code that differs by protocol asks here and
 * never reads `httpVersion`, which the client writes.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import http2, { type ServerHttp2Stream } from 'node:http2';

const { Http2ServerRequest, Http2ServerResponse } = http2;

/** True for a request that came over HTTP/2. */
export function isHttp2(req: object): boolean {
  return req instanceof Http2ServerRequest;
}

/** The HTTP/2 stream of a request, or undefined for an HTTP/1 request. */
export function requestStream(req: IncomingMessage): ServerHttp2Stream | undefined {
  return req instanceof Http2ServerRequest ? req.stream : undefined;
}

/** The HTTP/2 stream of a response, or undefined for an HTTP/1 response. */
export function responseStream(res: ServerResponse): ServerHttp2Stream | undefined {
  return res instanceof Http2ServerResponse ? res.stream : undefined;
}
