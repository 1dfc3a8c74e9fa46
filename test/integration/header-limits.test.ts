/**
 * One table of header-limit cases, run over HTTP/1.1 and over HTTP/2 with prior knowledge on a
 * `protocol: h2c` listener. The HTTP/2 clients ignore SETTINGS (raw frames, the server's
 * SETTINGS_MAX_HEADER_LIST_SIZE never acknowledged) and encode their header blocks four ways:
 * literals, Huffman-coded literals, the dynamic table (one large field repeated by a one-byte
 * index), and every block split across CONTINUATION frames. A request over a limit gets 431 over
 * HTTP/1.1; over HTTP/2 it gets 431 or a reset of its stream, and the same connection still serves
 * the next stream. From the upstream's side, nothing over a limit was ever forwarded.
 */
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import {
  type HeaderList,
  HpackEncoder,
  type HpackMode,
  MAX_FRAME,
  RawH2Client,
  type StreamResult,
} from '../kit/h2-raw.js';
import { rawRequest } from '../kit/raw-client.js';
import { startUpstream, type TestUpstream } from '../kit/upstream.js';

const MAX_HEADER_BYTES = 16 * 1024;
const MAX_HEADERS = 100;

interface Case {
  readonly name: string;
  /** The path (a marker the upstream's log is searched for comes first). */
  readonly path: (marker: string) => string;
  /** Headers besides Host / the pseudo-headers. Cookies are listed crumb by crumb. */
  readonly headers: HeaderList;
  readonly refused: boolean;
}

const repeat = (n: number, f: (i: number) => readonly [string, string]) =>
  Array.from({ length: n }, (_, i) => f(i));

const CASES: readonly Case[] = [
  {
    name: 'within the limits (60 headers, 13 KB)',
    path: (m) => m,
    headers: repeat(60, (i) => [`x-fill-${i}`, 'v'.repeat(200)]),
    refused: false,
  },
  {
    name: 'oversized path (64,000 bytes)',
    path: (m) => `${m}?q=${'p'.repeat(64_000 - m.length - 3)}`,
    headers: [],
    refused: true,
  },
  {
    name: 'oversized single header (30,000 bytes)',
    path: (m) => m,
    headers: [['x-big', 'b'.repeat(30_000)]],
    refused: true,
  },
  {
    name: 'total over the size limit (20 x 1,000 bytes, one field repeated)',
    path: (m) => m,
    headers: repeat(20, () => ['x-fill', 'f'.repeat(1_000)]),
    refused: true,
  },
  {
    name: 'header count over the limit (101)',
    path: (m) => m,
    headers: repeat(MAX_HEADERS + 1, (i) => [`x-n-${i}`, 'v']),
    refused: true,
  },
  {
    name: 'many small headers (2,000)',
    path: (m) => m,
    headers: repeat(2_000, () => ['x-s', '1']),
    refused: true,
  },
  {
    name: 'cookie crumbs within the limits (150 crumbs, one Cookie header)',
    path: (m) => m,
    headers: repeat(150, (i) => ['cookie', `c${i}=v`]),
    refused: false,
  },
  {
    name: 'cookie crumbs over the size limit (400 x 45 bytes)',
    path: (m) => m,
    headers: repeat(400, (i) => ['cookie', `c${i}=${'k'.repeat(40)}`]),
    refused: true,
  },
];

/** HTTP/1.1 joins cookie crumbs into one Cookie header (RFC 9113 8.2.3 is the other way round). */
function http1Request(c: Case, marker: string): string {
  const cookies = c.headers.filter(([n]) => n === 'cookie').map(([, v]) => v);
  const rest = c.headers.filter(([n]) => n !== 'cookie');
  const lines = rest.map(([n, v]) => `${n}: ${v}\r\n`).join('');
  const cookie = cookies.length ? `cookie: ${cookies.join('; ')}\r\n` : '';
  return `GET ${c.path(marker)} HTTP/1.1\r\nhost: x\r\n${lines}${cookie}connection: close\r\n\r\n`;
}

function h2Fields(c: Case, marker: string): HeaderList {
  return [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':authority', 'x'],
    [':path', c.path(marker)],
    ...c.headers,
  ];
}

/** The h2 variants: how the header block is encoded, and in how many pieces it is sent. */
const H2_VARIANTS: readonly { name: string; mode: HpackMode; pieces?: number }[] = [
  { name: 'literal', mode: 'literal' },
  { name: 'huffman', mode: 'huffman' },
  { name: 'indexed', mode: 'indexed' },
  { name: 'continuation', mode: 'huffman', pieces: 4 },
];

describe('header limits, one table for HTTP/1.1 and HTTP/2', () => {
  let up: TestUpstream;
  let bw: Running;
  let port: number;
  beforeAll(async () => {
    // Lenient: it records whatever it is sent, however large (Node's own 16 KiB limit would refuse it).
    up = await startUpstream(undefined, { lenient: true });
    bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    protocol: h2c
    limits: { max_header_bytes: ${MAX_HEADER_BYTES}, max_headers: ${MAX_HEADERS} }
    routes: [{ upstream: app }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url}"], retry: { enabled: false } }
`);
    port = bw.bw.listenerPort('main');
  });
  afterAll(async () => {
    await bw.stop();
    await up.close();
  });

  /** The requests the upstream received for this marker. */
  const forwarded = (marker: string) =>
    up.received.filter((r) => r.url === marker || r.url.startsWith(`${marker}?`));

  /** Header bytes of a request as the upstream got it: its request line and every header line. */
  const headerBytes = (r: TestUpstream['received'][number]) => {
    let n = r.method.length + r.url.length + 12;
    for (let i = 0; i < r.rawHeaders.length; i += 2)
      n += (r.rawHeaders[i] as string).length + (r.rawHeaders[i + 1] as string).length + 4;
    return n;
  };

  /** node:http2 as a client: it acknowledges SETTINGS, so Node's own limit applies on the server. */
  async function nodeH2(fields: HeaderList): Promise<StreamResult> {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => undefined);
    // The SETTINGS frame that carries the limit, acknowledged before the request is sent.
    await new Promise<void>((r) =>
      session.on('remoteSettings', (settings) => {
        if (settings.maxHeaderListSize === MAX_HEADER_BYTES) r();
      }),
    );
    const headers: Record<string, string | string[]> = {};
    for (const [n, v] of fields) {
      const had = headers[n];
      headers[n] = had === undefined ? v : [...(Array.isArray(had) ? had : [had]), v];
    }
    return new Promise((resolve) => {
      const stream = session.request(headers);
      const chunks: Buffer[] = [];
      let status = 0;
      stream.on('response', (h) => {
        status = Number(h[':status']);
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => resolve({ kind: 'response', status, headers: {}, body: Buffer.concat(chunks) }));
      stream.on('error', () => undefined);
      stream.on('close', () => {
        if (status === 0) resolve({ kind: 'reset', code: stream.rstCode ?? -1 });
        session.close();
      });
    });
  }

  describe.each(CASES)('$name', (c) => {
    it('HTTP/2, node:http2 client (acknowledges SETTINGS)', async () => {
      const marker = `/hl/${CASES.indexOf(c)}/h2-node`;
      const first = await nodeH2(h2Fields(c, marker));
      if (!c.refused) expect(first).toMatchObject({ kind: 'response', status: 200 });
      else if (first.kind === 'response') expect(first.status).toBe(431);
      else expect(first).toMatchObject({ kind: 'reset' });
      expect(forwarded(marker)).toHaveLength(c.refused ? 0 : 1);
    });

    it('HTTP/1.1', async () => {
      const marker = `/hl/${CASES.indexOf(c)}/h1`;
      const res = await rawRequest(port, http1Request(c, marker), 2000);
      if (c.refused) {
        expect(res.text.slice(0, 12)).toBe('HTTP/1.1 431');
        expect(forwarded(marker)).toHaveLength(0);
      } else {
        expect(res.text.slice(0, 12)).toBe('HTTP/1.1 200');
        expect(forwarded(marker)).toHaveLength(1);
      }
    });

    it.each(H2_VARIANTS)('HTTP/2 ignoring SETTINGS, $name', async (v) => {
      const marker = `/hl/${CASES.indexOf(c)}/h2-${v.name}`;
      const client = await RawH2Client.connect(port, v.mode);
      try {
        const fields = h2Fields(c, marker);
        const fragment = v.pieces
          ? Math.ceil(new HpackEncoder(v.mode).encode(fields).length / v.pieces)
          : MAX_FRAME;
        const first = await client.result(client.request(fields, fragment), 10_000);
        if (c.refused) {
          if (first.kind === 'response') expect(first.status).toBe(431);
          else expect(first).toMatchObject({ kind: 'reset' });
        } else {
          expect(first).toMatchObject({ kind: 'response', status: 200 });
        }
        // The connection is still there for the next stream.
        const next = await client.result(
          client.request(h2Fields(CASES[0] as Case, `${marker}/next`)),
          10_000,
        );
        expect(next).toMatchObject({ kind: 'response', status: 200 });
        expect(client.goaway).toBeUndefined();
      } finally {
        client.close();
      }
      const got = forwarded(marker);
      expect(got).toHaveLength(c.refused ? 0 : 1);
      if (!c.refused) {
        // The upstream got the header list whole: every field, the crumbs as one Cookie header.
        const r = got[0] as TestUpstream['received'][number];
        const crumbs = c.headers.filter(([n]) => n === 'cookie').map(([, v2]) => v2);
        if (crumbs.length) {
          expect(r.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'cookie')).toHaveLength(1);
          expect(r.headers.cookie).toBe(crumbs.join('; '));
        }
        for (const [n, value] of c.headers.filter(([n2]) => n2 !== 'cookie'))
          expect(r.headers[n]).toBe(value);
      }
    });
  });

  it('resets an HTTP/2 block of more than 2 x max_headers + 4 fields while Node decodes it (ENHANCE_YOUR_CALM)', async () => {
    const marker = '/hl/pairs';
    // 300 references to one 4,000-byte dynamic-table entry: 1.2 MB of headers in a 4 KB block,
    // dropped before it is ever built into a request.
    const fields = h2Fields(
      {
        name: 'pairs',
        path: (m) => m,
        headers: repeat(300, () => ['x-r', 'r'.repeat(4_000)]),
        refused: true,
      },
      marker,
    );
    const client = await RawH2Client.connect(port, 'indexed');
    try {
      expect(await client.result(client.request(fields), 10_000)).toEqual({ kind: 'reset', code: 11 });
      const next = await client.result(client.request(h2Fields(CASES[0] as Case, `${marker}/next`)), 10_000);
      expect(next).toMatchObject({ kind: 'response', status: 200 });
    } finally {
      client.close();
    }
    expect(forwarded(marker)).toHaveLength(0);
  });

  it('closes an HTTP/2 connection that keeps sending header lists over the limits (GOAWAY after 10 refusals)', async () => {
    const marker = '/hl/bomb';
    // One 4,000-byte field in the dynamic table, then 200 one-byte references to it: a block of
    // about 4 KB that stands for 800 KB of headers, sent one request at a time.
    const bomb = h2Fields(
      { name: 'bomb', path: (m) => m, headers: repeat(200, () => ['x-r', 'r'.repeat(4_000)]), refused: true },
      marker,
    );
    const client = await RawH2Client.connect(port, 'indexed');
    let answered = 0;
    try {
      for (let i = 0; i < 30 && client.goaway === undefined && !client.closed; i++) {
        const r = await client.result(client.request(bomb), 10_000);
        if (r.kind === 'response') {
          expect(r.status).toBe(431);
          answered++;
        }
      }
      expect(client.goaways.map((g) => g.code)).toContain(11); // ENHANCE_YOUR_CALM
      expect(answered).toBe(10);
    } finally {
      client.close();
    }
    expect(forwarded(marker)).toHaveLength(0);
    // Another connection is served as usual.
    const next = await RawH2Client.connect(port, 'indexed');
    try {
      const r = await next.result(next.request(h2Fields(CASES[0] as Case, `${marker}/next`)), 10_000);
      expect(r).toMatchObject({ kind: 'response', status: 200 });
    } finally {
      next.close();
    }
  });

  it("a header block past Node's own ceilings (more than 8 CONTINUATION frames) ends only that connection", async () => {
    const marker = '/hl/continuations';
    const client = await RawH2Client.connect(port, 'literal');
    try {
      // 1 MiB of headers in 16 KB frames: one HEADERS and 63 CONTINUATION frames.
      const huge = h2Fields(
        {
          name: 'huge',
          path: (m) => m,
          headers: repeat(16, (i) => [`x-${i}`, 'h'.repeat(60_000)]),
          refused: true,
        },
        marker,
      );
      const r = await client.result(client.request(huge), 10_000);
      expect(r.kind).not.toBe('response');
      expect(client.goaway).toBeDefined();
    } finally {
      client.close();
    }
    expect(forwarded(marker)).toHaveLength(0);
    const next = await RawH2Client.connect(port, 'literal');
    try {
      const r = await next.result(next.request(h2Fields(CASES[0] as Case, `${marker}/next`)), 10_000);
      expect(r).toMatchObject({ kind: 'response', status: 200 });
    } finally {
      next.close();
    }
  });

  it('forwarded nothing over the limits to the upstream', () => {
    expect(up.received.length).toBeGreaterThan(0);
    for (const r of up.received) {
      // breakwater adds a few headers of its own (X-Forwarded-*, x-request-id): 1 KiB of slack.
      expect(headerBytes(r)).toBeLessThan(MAX_HEADER_BYTES + 1024);
      expect(r.rawHeaders.length / 2).toBeLessThan(MAX_HEADERS + 10);
    }
  });
});
