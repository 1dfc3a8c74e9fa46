import { describe, expect, it } from 'vitest';
import { type CallOrigin, clientAddress, parseCidr, trustCheck } from '../../src/listener/client-address.js';

/** The two fields clientAddress reads: the peer address and the headers. */
function req(remoteAddress: string, xff?: string): CallOrigin {
  return { peer: remoteAddress, req: { headers: xff === undefined ? {} : { 'x-forwarded-for': xff } } };
}

describe('trusted proxies', () => {
  it('parses addresses and CIDR blocks, and refuses the rest', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseCidr('192.168.1.7')).toEqual({ address: '192.168.1.7', prefix: 32, family: 'ipv4' });
    expect(parseCidr('fd00::/8')).toEqual({ address: 'fd00::', prefix: 8, family: 'ipv6' });
    expect(parseCidr('::1')?.prefix).toBe(128);
    for (const bad of [
      '10.0.0.0/33',
      '10.0.0.0/',
      '10.0.0.0/8x',
      'example.com',
      '10.0.0/8',
      '::1/129',
      '1.2.3.4/-1',
    ])
      expect(parseCidr(bad), bad).toBeUndefined();
  });

  it('matches IPv4, IPv6 and IPv4-mapped IPv6 peers', () => {
    const trust = trustCheck(['10.0.0.0/8', '::1']);
    expect(trust?.('10.1.2.3')).toBe(true);
    expect(trust?.('::ffff:10.1.2.3')).toBe(true);
    expect(trust?.('::1')).toBe(true);
    expect(trust?.('11.0.0.1')).toBe(false);
    expect(trust?.('not an address')).toBe(false);
    expect(trustCheck([])).toBeUndefined();
  });

  it('takes the right-most address that is not a trusted proxy', () => {
    const trust = trustCheck(['10.0.0.0/8']);
    // Peer trusted: walk the header from the right past trusted hops.
    expect(clientAddress(req('10.0.0.1', '198.51.100.1, 203.0.113.9, 10.0.0.7'), trust)).toBe('203.0.113.9');
    // The left part is whatever the client claimed: never believed past an untrusted hop.
    expect(clientAddress(req('10.0.0.1', '1.1.1.1, 203.0.113.9'), trust)).toBe('203.0.113.9');
    // Only trusted hops: the left-most of them.
    expect(clientAddress(req('10.0.0.1', '10.0.0.5, 10.0.0.7'), trust)).toBe('10.0.0.5');
    // A malformed entry stops the walk at the last good one.
    expect(clientAddress(req('10.0.0.1', 'junk, 10.0.0.7'), trust)).toBe('10.0.0.7');
    // Peer not trusted: its header is ignored.
    expect(clientAddress(req('203.0.113.50', '1.2.3.4'), trust)).toBe('203.0.113.50');
    // No trusted proxies at all.
    expect(clientAddress(req('10.0.0.1', '1.2.3.4'), undefined)).toBe('10.0.0.1');
    expect(clientAddress(req('10.0.0.1'), trust)).toBe('10.0.0.1');
  });
});
