/**
 * Who the client is, when proxies stand in front of breakwater (`trusted_proxies`).
 *
 * The address of the connection is the client unless that address is a trusted proxy; then the
 * client is the right-most `X-Forwarded-For` entry that is not itself a trusted proxy (nginx's
 * `real_ip_recursive on`, Traefik's `forwardedHeaders.trustedIPs`). A connection from an address
 * that is not trusted cannot speak for anyone else: its `X-Forwarded-For` is dropped, not passed on.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { requestStream } from './protocol.js';

/** True when `address` (as Node reports it, IPv4-mapped IPv6 included) is a trusted proxy. */
export type TrustCheck = (address: string) => boolean;

/** Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`, `::1`; undefined when it is not a CIDR block. */
export function parseCidr(
  text: string,
): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const v = isIP(address);
  if (v === 0) return undefined;
  const max = v === 4 ? 32 : 128;
  const prefix = slash < 0 ? max : Number(text.slice(slash + 1));
  if (
    !Number.isInteger(prefix) ||
    prefix < 0 ||
    prefix > max ||
    (slash >= 0 && !/^\d+$/.test(text.slice(slash + 1)))
  )
    return undefined;
  return { address, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

/** A check for a list of CIDR blocks (already validated), or undefined for an empty list. */
export function trustCheck(cidrs: readonly string[]): TrustCheck | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const c of cidrs) {
    const p = parseCidr(c);
    if (p) list.addSubnet(p.address, p.prefix, p.family);
  }
  // Answers remembered per address (BlockList.check allocates on every call; peers are few).
  const known = new Map<string, boolean>();
  return (address) => {
    let trusted = known.get(address);
    if (trusted === undefined) {
      // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
      const a = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
      const v = isIP(a);
      trusted = v !== 0 && list.check(a, v === 4 ? 'ipv4' : 'ipv6');
      if (known.size >= 4096) known.clear();
      known.set(address, trusted);
    }
    return trusted;
  };
}

/** Peer addresses captured when a connection was accepted: HTTP/1 by socket, HTTP/2 by session. */
const PEERS = new WeakMap<object, string>();

/**
 * Remembers the address of a connection (an HTTP/1 socket, an HTTP/2 session) when it is accepted:
 * a socket that is gone no longer knows its peer, and a request read from it before it went (a
 * pipelined one) must still say who sent it.
 */
export function rememberPeer(connection: object, address: string | undefined): void {
  if (address !== undefined) PEERS.set(connection, address);
}

/** The address of the peer that sent `req`: captured at accept, else the socket's (if still known). */
export function peerAddress(req: IncomingMessage): string | undefined {
  const stream = requestStream(req);
  const connection = stream === undefined ? req.socket : stream.session;
  const known = connection ? PEERS.get(connection) : undefined;
  return known ?? req.socket?.remoteAddress;
}

/** Who sent a call: the peer address it came from and its headers (a RequestContext is one). */
export interface CallOrigin {
  readonly req: { readonly headers: IncomingHttpHeaders };
  readonly peer: string | undefined;
}

/** The client's address: the connection's, or, behind trusted proxies, the one they forwarded. */
export function clientAddress(call: CallOrigin, trust: TrustCheck | undefined): string {
  const peer = call.peer ?? '';
  if (trust === undefined || !trust(peer)) return peer;
  const xff = call.req.headers['x-forwarded-for'];
  if (xff === undefined) return peer;
  const hops = (Array.isArray(xff) ? xff.join(',') : xff).split(',');
  let client = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = (hops[i] as string).trim();
    if (isIP(hop) === 0) break;
    client = hop;
    if (!trust(hop)) break;
  }
  return client;
}
