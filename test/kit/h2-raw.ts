/**
 * A raw HTTP/2 client for tests that must not behave like a polite one: frames written by hand
 * over a node:net socket, the server's SETTINGS never acknowledged (so whatever it advertises,
 * SETTINGS_MAX_HEADER_LIST_SIZE included, is ignored), header blocks HPACK-encoded here as literals
 * without indexing, with or without Huffman coding, or through the dynamic table, and split
 * across CONTINUATION frames at will. Responses are decoded with hpack.js.
 */
import net from 'node:net';
import hpack from 'hpack.js';

export type HeaderList = readonly (readonly [string, string])[];

/**
 * How header fields are written (RFC 7541): `literal` and `huffman` are literals without
 * indexing (6.2.2) with a new name, their strings raw or Huffman-coded; `indexed` adds each field
 * to the dynamic table once (6.2.1) and repeats it as a one-byte index (6.1), so a small block can
 * stand for a large header list.
 */
export type HpackMode = 'literal' | 'huffman' | 'indexed';

const HUFFMAN = hpack.huffman.encode;
/** Entries of RFC 7541 Appendix A (static table) are not used: every name is sent as a literal. */
const STATIC_ENTRIES = 61;
const TABLE_SIZE = 4096;

/** An HPACK integer with an n-bit prefix (RFC 7541 5.1); `first` holds the bits above the prefix. */
function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

function huffmanBytes(text: Buffer): Buffer {
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const byte of text) {
    const [len, code] = HUFFMAN[byte] as readonly [number, number];
    for (let i = len - 1; i >= 0; i--) {
      acc = (acc << 1) | ((code >>> i) & 1);
      if (++bits === 8) {
        out.push(acc);
        acc = 0;
        bits = 0;
      }
    }
  }
  // Padding: the most significant bits of EOS (all ones).
  if (bits > 0) out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xff);
  return Buffer.from(out);
}

function hpackString(text: string, huffman: boolean): Buffer {
  const raw = Buffer.from(text, 'latin1');
  const bytes = huffman ? huffmanBytes(raw) : raw;
  return Buffer.concat([Buffer.from(hpackInt(bytes.length, 7, huffman ? 0x80 : 0)), bytes]);
}

/** An HPACK encoder for one connection (the dynamic table lives as long as the connection). */
export class HpackEncoder {
  /** Dynamic table, newest first: "name\0value" and its size (RFC 7541 4.1). */
  private table: { key: string; size: number }[] = [];
  private used = 0;

  constructor(readonly mode: HpackMode) {}

  encode(fields: HeaderList): Buffer {
    const parts: Buffer[] = [];
    for (const [name, value] of fields) {
      if (this.mode === 'indexed') {
        const key = `${name}\0${value}`;
        const at = this.table.findIndex((e) => e.key === key);
        if (at >= 0) {
          parts.push(Buffer.from(hpackInt(STATIC_ENTRIES + 1 + at, 7, 0x80)));
          continue;
        }
        const size = name.length + value.length + 32;
        if (size <= TABLE_SIZE) {
          parts.push(Buffer.from([0x40]), hpackString(name, true), hpackString(value, true));
          this.table.unshift({ key, size });
          this.used += size;
          while (this.used > TABLE_SIZE) this.used -= (this.table.pop() as { size: number }).size;
          continue;
        }
      }
      const huffman = this.mode !== 'literal';
      parts.push(Buffer.from([0x00]), hpackString(name, huffman), hpackString(value, huffman));
    }
    return Buffer.concat(parts);
  }
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const DATA = 0x0;
const HEADERS = 0x1;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const CONTINUATION = 0x9;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;
/** SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 6.5.2): a client may always send this much. */
export const MAX_FRAME = 16_384;

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

/** What became of one stream. */
export type StreamResult =
  | { kind: 'response'; status: number; headers: Record<string, string>; body: Buffer }
  | { kind: 'reset'; code: number }
  | { kind: 'goaway'; code: number }
  | { kind: 'closed' }
  | { kind: 'timeout' };

interface StreamState {
  headers?: Record<string, string>;
  body: Buffer[];
  result?: StreamResult;
  waiters: ((r: StreamResult) => void)[];
}

export class RawH2Client {
  private nextStream = 1;
  private readonly streams = new Map<number, StreamState>();
  private readonly decoder = hpack.decompressor.create({ table: { size: TABLE_SIZE } });
  private buffered: Buffer = Buffer.alloc(0);
  /** The header block being received (HEADERS then CONTINUATION until END_HEADERS). */
  private block: { stream: number; parts: Buffer[]; endStream: boolean } | undefined;
  /** The last GOAWAY the server sent, if any, and every one it sent (a server may send several). */
  goaway: { code: number; lastStream: number } | undefined;
  readonly goaways: { code: number; lastStream: number }[] = [];
  closed = false;

  private constructor(
    private readonly socket: net.Socket,
    readonly encoder: HpackEncoder,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.onClose());
    socket.on('close', () => this.onClose());
  }

  /** Opens a connection: the preface and an empty SETTINGS frame; the server's SETTINGS are never acknowledged. */
  static connect(port: number, mode: HpackMode): Promise<RawH2Client> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        socket.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0, Buffer.alloc(0))]));
        resolve(new RawH2Client(socket, new HpackEncoder(mode)));
      });
    });
  }

  /**
   * Sends a request without a body on a new stream and returns its id. The header block goes in
   * pieces of at most `fragment` bytes: the first in HEADERS, the rest in CONTINUATION frames.
   */
  request(fields: HeaderList, fragment = MAX_FRAME): number {
    const id = this.nextStream;
    this.nextStream += 2;
    this.streams.set(id, { body: [], waiters: [] });
    const block = this.encoder.encode(fields);
    const frames: Buffer[] = [];
    for (let at = 0; at === 0 || at < block.length; at += fragment) {
      const piece = block.subarray(at, at + fragment);
      const last = at + fragment >= block.length;
      const flags = (last ? END_HEADERS : 0) | (at === 0 ? END_STREAM : 0);
      frames.push(frame(at === 0 ? HEADERS : CONTINUATION, flags, id, piece));
    }
    this.socket.write(Buffer.concat(frames));
    return id;
  }

  /** Resolves with what became of the stream, or `timeout` after `ms`. */
  result(stream: number, ms = 5000): Promise<StreamResult> {
    const s = this.streams.get(stream);
    if (!s) throw new Error(`no stream ${stream}`);
    if (s.result) return Promise.resolve(s.result);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ kind: 'timeout' }), ms);
      s.waiters.push((r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private settle(id: number, result: StreamResult): void {
    const s = this.streams.get(id);
    if (!s || s.result) return;
    s.result = result;
    for (const w of s.waiters.splice(0)) w(result);
  }

  private onClose(): void {
    this.closed = true;
    for (const [id, s] of this.streams)
      if (!s.result)
        this.settle(
          id,
          this.goaway && id > this.goaway.lastStream
            ? { kind: 'goaway', code: this.goaway.code }
            : { kind: 'closed' },
        );
  }

  private onData(chunk: Buffer): void {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    while (this.buffered.length >= 9) {
      const len = this.buffered.readUIntBE(0, 3);
      if (this.buffered.length < 9 + len) return;
      const type = this.buffered[3] as number;
      const flags = this.buffered[4] as number;
      const id = this.buffered.readUInt32BE(5) & 0x7fffffff;
      const payload = this.buffered.subarray(9, 9 + len);
      this.buffered = this.buffered.subarray(9 + len);
      this.onFrame(type, flags, id, payload);
    }
  }

  private onFrame(type: number, flags: number, id: number, payload: Buffer): void {
    if (type === HEADERS) {
      let p = payload;
      if (flags & PADDED) p = p.subarray(1, p.length - (p[0] as number));
      if (flags & PRIORITY_FLAG) p = p.subarray(5);
      this.block = { stream: id, parts: [p], endStream: (flags & END_STREAM) !== 0 };
      if (flags & END_HEADERS) this.endBlock();
    } else if (type === CONTINUATION && this.block) {
      this.block.parts.push(payload);
      if (flags & END_HEADERS) this.endBlock();
    } else if (type === DATA) {
      // Every byte is taken at once: the windows are opened again by what was received.
      if (payload.length > 0) {
        const inc = Buffer.alloc(4);
        inc.writeUInt32BE(payload.length);
        this.socket.write(Buffer.concat([frame(WINDOW_UPDATE, 0, 0, inc), frame(WINDOW_UPDATE, 0, id, inc)]));
      }
      const s = this.streams.get(id);
      s?.body.push(flags & PADDED ? payload.subarray(1, payload.length - (payload[0] as number)) : payload);
      if (flags & END_STREAM) this.complete(id);
    } else if (type === RST_STREAM) {
      this.settle(id, { kind: 'reset', code: payload.readUInt32BE(0) });
    } else if (type === GOAWAY) {
      this.goaway = { lastStream: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4) };
      this.goaways.push(this.goaway);
      for (const [sid, s] of this.streams)
        if (!s.result && sid > this.goaway.lastStream)
          this.settle(sid, { kind: 'goaway', code: this.goaway.code });
    }
    // SETTINGS (never acknowledged), PING, WINDOW_UPDATE, PRIORITY: ignored.
  }

  private endBlock(): void {
    const block = this.block as { stream: number; parts: Buffer[]; endStream: boolean };
    this.block = undefined;
    this.decoder.write(Buffer.concat(block.parts));
    this.decoder.execute();
    const headers: Record<string, string> = {};
    for (let f = this.decoder.read(); f !== null; f = this.decoder.read()) headers[f.name] = f.value;
    const s = this.streams.get(block.stream);
    // The first block is the response head; a second one (trailers) is not looked at.
    if (s && !s.headers) s.headers = headers;
    if (block.endStream) this.complete(block.stream);
  }

  private complete(id: number): void {
    const s = this.streams.get(id);
    if (!s?.headers) return;
    this.settle(id, {
      kind: 'response',
      status: Number(s.headers[':status']),
      headers: s.headers,
      body: Buffer.concat(s.body),
    });
  }
}
