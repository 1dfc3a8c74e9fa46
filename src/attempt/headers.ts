/**
 * Header rewriting between client and upstream (RFC 9110 7.6.1 and the X-Forwarded-* convention).
 *
 * Both directions drop hop-by-hop headers: Connection and every header it names, Keep-Alive, TE,
 * Transfer-Encoding, Upgrade, Proxy-Connection, Proxy-Authorization (and, towards the upstream,
 * Expect: breakwater answers `100-continue` itself, and Host, which is set per upstream).
 * Everything else passes in the order and case it arrived in.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { TrustCheck } from '../listener/client-address.js';
import { isHttp2 } from '../listener/protocol.js';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'te',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'proxy-authorization',
  'http2-settings',
]);

/** Whether a (lower-case) header name is hop-by-hop: never relayed, and forbidden in HTTP/2. */
export function isHopByHop(lower: string): boolean {
  return HOP_BY_HOP.has(lower);
}

/** Request headers breakwater sets itself, so the client's copies are not passed on. */
const REQUEST_OWNED = new Set([
  'host',
  'expect',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'x-breakwater-timeout-ms',
  // Set from the time left for a gRPC call (the client's value is its deadline, read at arrival).
  'grpc-timeout',
]);

/** Response headers breakwater sets itself: an upstream's copies are not passed on. */
const RESPONSE_OWNED = new Set(['x-breakwater-attempts', 'x-breakwater-fallback']);

const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const KEEP_ALIVE_OR_CLOSE = /^[ \t]*(?:keep-alive|close)[ \t]*$/i;
const REQUEST_ID_RE = /^[\x21-\x7e]{1,200}$/;

/** The extra names a Connection header lists (lower-cased), or undefined when it lists none. */
function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (!value) return undefined;
  // Almost every Connection header says only this (no names listed): no split, no Set; and
  // mostly in these very bytes, told without running the regular expression.
  if (value === 'keep-alive' || value === 'close' || KEEP_ALIVE_OR_CLOSE.test(value)) return undefined;
  let out: Set<string> | undefined;
  for (const raw of value.split(',')) {
    const t = raw.trim().toLowerCase();
    if (t === '' || t === 'close' || t === 'keep-alive' || !TOKEN_RE.test(t)) continue;
    if (!out) out = new Set();
    out.add(t);
  }
  return out;
}

export interface ForwardedRequestHeaders {
  /** Flat [name, value, name, value, ...] for undici. */
  readonly headers: string[];
  readonly requestId: string;
}

export interface RequestHeaderOptions {
  /** Host header to send upstream (already chosen by the host_header policy). */
  readonly host: string;
  readonly requestId: string;
  readonly proto: string;
  readonly remoteAddress: string | undefined;
  /** Trusted proxies: the client's X-Forwarded-For is passed on only from one of them. */
  readonly trust: TrustCheck | undefined;
}

/**
 * Request ids breakwater makes: 16 random hex digits fixed per process, then a counter, e.g.
 * `3f9a0c1e5b7d2a64-1a2b`. Unique across processes as a UUID is, for a fraction of the cost.
 */
const ID_PREFIX = `${randomBytes(8).toString('hex')}-`;
let idCounter = 0;
export function newRequestId(): string {
  idCounter = (idCounter + 1) % Number.MAX_SAFE_INTEGER;
  return ID_PREFIX + idCounter.toString(36);
}

/** Returns the client's request id if it is usable, else undefined. */
export function incomingRequestId(req: IncomingMessage): string | undefined {
  const v = req.headers['x-request-id'];
  return typeof v === 'string' && REQUEST_ID_RE.test(v) ? v : undefined;
}

/**
 * The request headers as the upstream call reads them (an IncomingMessage is one; an internal call
 * makes one without a socket).
 */
export interface HeaderSource {
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
}

/** Builds the header list sent upstream from the client's raw headers. */
export function upstreamRequestHeaders(req: HeaderSource, opts: RequestHeaderOptions): string[] {
  const raw = req.rawHeaders;
  const extra = connectionTokens(req.headers.connection);
  const out: string[] = [];
  let xff: string | undefined;
  const h2 = isHttp2(req);
  let cookie = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) are the request line, not headers.
    if (name.charCodeAt(0) === 58) continue;
    const lower = name.toLowerCase();
    // HTTP/2 cookie crumbs go on as one Cookie header joined by "; " (RFC 9113 8.2.3 requires it
    // towards HTTP/1.1, where several Cookie headers are not allowed), where the first one was.
    if (h2 && lower === 'cookie') {
      if (!cookie) out.push('cookie', req.headers.cookie as string);
      cookie = true;
      continue;
    }
    if (HOP_BY_HOP.has(lower) || (extra?.has(lower) ?? false)) continue;
    if (REQUEST_OWNED.has(lower)) {
      if (lower === 'x-forwarded-for')
        xff = xff === undefined ? (raw[i + 1] as string) : `${xff}, ${raw[i + 1]}`;
      continue;
    }
    out.push(name, raw[i + 1] as string);
  }
  const clientHost = req.headers.host;
  out.push('host', opts.host);
  const peer = opts.remoteAddress;
  if (peer !== undefined) {
    // Only a trusted proxy may speak for the client before it; anyone else's list is replaced.
    out.push(
      'x-forwarded-for',
      xff === undefined || !(opts.trust?.(peer) ?? false) ? peer : `${xff}, ${peer}`,
    );
  }
  out.push('x-forwarded-proto', opts.proto);
  if (clientHost !== undefined) out.push('x-forwarded-host', clientHost);
  out.push('x-request-id', opts.requestId);
  return out;
}

/**
 * Builds the header list sent to the client from undici's raw response headers, dropping
 * hop-by-hop headers. Returns null when the upstream sent a header value Node refuses to write.
 */
export function clientResponseHeaders(
  raw: readonly Buffer[],
  requestId: string,
  extra?: readonly string[],
): string[] {
  let connection: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (responseName(raw[i] as Buffer).kind === NAME_CONNECTION) {
      // Several Connection headers: every one's listed names go.
      const tokens = connectionTokens((raw[i + 1] as Buffer).toString('latin1'));
      if (tokens) connection = connection ? new Set([...connection, ...tokens]) : tokens;
    }
  }
  const out: string[] = [];
  let sawRequestId = false;
  for (let i = 0; i < raw.length; i += 2) {
    const n = responseName(raw[i] as Buffer);
    if (n.kind === NAME_DROPPED || n.kind === NAME_CONNECTION || (connection?.has(n.lower) ?? false))
      continue;
    if (n.kind === NAME_REQUEST_ID) sawRequestId = true;
    out.push(n.name, (raw[i + 1] as Buffer).toString('latin1'));
  }
  if (!sawRequestId) out.push('x-request-id', requestId);
  if (extra) for (const v of extra) out.push(v);
  return out;
}

/** What a response header name is to the client side: relayed, dropped, Connection, x-request-id. */
const NAME_RELAYED = 0;
const NAME_DROPPED = 1;
const NAME_CONNECTION = 2;
const NAME_REQUEST_ID = 3;

interface ResponseName {
  /** The name's bytes as the upstream sent them. */
  readonly bytes: Buffer;
  /** The same as a string (relayed in its case), and lower-cased. */
  readonly name: string;
  readonly lower: string;
  readonly kind: number;
}

/** Names longer than this are not kept (a string made each time, as before). */
const MAX_INTERNED = 48;
/** Slots of the name cache (a power of two): one upstream's few header names fit many times over. */
const NAME_SLOTS = 256;
const names: (ResponseName | undefined)[] = new Array(NAME_SLOTS).fill(undefined);

/**
 * A response header name as a string, with its lower case and what it is, from a small cache of
 * the names seen lately: an upstream sends the same few names on every response, so a name costs
 * a byte comparison instead of a string, its lower-casing and set lookups. The cache is a fixed
 * table indexed by a hash of the bytes (a colliding name replaces the one before), so it stays
 * small whatever names arrive.
 */
function responseName(bytes: Buffer): ResponseName {
  const len = bytes.length;
  if (len > MAX_INTERNED) return nameOf(bytes);
  let h = len;
  for (let i = 0; i < len; i++) h = (Math.imul(h, 31) + (bytes[i] as number)) | 0;
  const slot = (h ^ (h >>> 8)) & (NAME_SLOTS - 1);
  const known = names[slot];
  if (known !== undefined && sameBytes(known.bytes, bytes)) return known;
  const n = nameOf(bytes);
  names[slot] = n;
  return n;
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  const len = a.length;
  if (len !== b.length) return false;
  for (let i = 0; i < len; i++) if (a[i] !== b[i]) return false;
  return true;
}

function nameOf(bytes: Buffer): ResponseName {
  const name = bytes.toString('latin1');
  const lower = name.toLowerCase();
  const kind =
    lower === 'connection'
      ? NAME_CONNECTION
      : HOP_BY_HOP.has(lower) || RESPONSE_OWNED.has(lower)
        ? NAME_DROPPED
        : lower === 'x-request-id'
          ? NAME_REQUEST_ID
          : NAME_RELAYED;
  // A copy: undici's buffer may be a view of a socket read that is reused.
  return { bytes: Buffer.from(bytes), name, lower, kind };
}

/**
 * Headers for a WebSocket handshake sent upstream: those of any request (hop-by-hop removed,
 * X-Forwarded-*, x-request-id, Host), with `Connection: upgrade` and the client's `Upgrade` put back,
 * since on this one hop they are the request. `Sec-WebSocket-*` headers pass as they came.
 */
export function upgradeRequestHeaders(
  req: HeaderSource,
  opts: RequestHeaderOptions,
  upgrade: string,
): string[] {
  const out = upstreamRequestHeaders(req, opts);
  out.push('connection', 'upgrade', 'upgrade', upgrade);
  return out;
}

/**
 * The client's copy of an upstream's answer to an upgrade request (Node's raw header strings):
 * hop-by-hop and breakwater-owned headers removed as for any response, x-request-id added when
 * missing; for the 101 itself (`switching`), `Connection: upgrade` and the upstream's `Upgrade` are
 * put back.
 */
export function upgradeResponseHeaders(
  raw: readonly string[],
  requestId: string,
  switching: boolean,
): string[] {
  let connection: Set<string> | undefined;
  let upgrade: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase();
    if (lower === 'connection') {
      const tokens = connectionTokens(raw[i + 1]);
      if (tokens) connection = connection ? new Set([...connection, ...tokens]) : tokens;
    } else if (lower === 'upgrade') upgrade ??= raw[i + 1];
  }
  const out: string[] = [];
  let sawRequestId = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || RESPONSE_OWNED.has(lower) || (connection?.has(lower) ?? false)) continue;
    if (lower === 'x-request-id') sawRequestId = true;
    out.push(name, raw[i + 1] as string);
  }
  if (!sawRequestId) out.push('x-request-id', requestId);
  if (switching && upgrade !== undefined) out.push('connection', 'upgrade', 'upgrade', upgrade);
  return out;
}
