/**
 * A raw-socket HTTP client: sends any bytes and returns whatever comes back until the server
 * closes the connection or `waitMs` of silence passes.
 */
import net from 'node:net';

export interface RawResult {
  readonly text: string;
  readonly bytes: Buffer;
  /** How the connection ended: closed by the peer, reset, or still open when we stopped. */
  readonly end: 'closed' | 'reset' | 'open';
}

export function rawRequest(port: number, bytes: string | Buffer, waitMs = 500): Promise<RawResult> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (end: RawResult['end']) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const all = Buffer.concat(chunks);
      resolve({ text: all.toString('latin1'), bytes: all, end });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('open'), waitMs);
    };
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      arm();
    });
    socket.on('end', () => finish('closed'));
    socket.on('error', () => finish('reset'));
    socket.on('connect', () => {
      socket.write(bytes);
      arm();
    });
  });
}

export interface RawResponse {
  readonly status: number;
  /** Header names lower-cased; a repeated header's values joined with ", ". */
  readonly headers: Record<string, string>;
  readonly body: string;
}

/**
 * The HTTP/1.1 responses in `text`, in the order they came (interim 1xx responses included).
 * Bodies are read by Content-Length or chunked framing; a response without either takes the rest.
 * Trailing bytes that do not start a status line are returned as `rest`.
 */
export function parseResponses(text: string): { responses: RawResponse[]; rest: string } {
  const responses: RawResponse[] = [];
  let at = 0;
  while (at < text.length) {
    const end = text.indexOf('\r\n\r\n', at);
    if (end < 0 || !/^HTTP\/1\.[01] \d{3}/.test(text.slice(at, at + 12))) break;
    const lines = text.slice(at, end).split('\r\n');
    const status = Number((lines[0] as string).slice(9, 12));
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    at = end + 4;
    let body = '';
    if (status >= 100 && status < 200) {
      // no body
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      body = text.slice(at, at + n);
      at += n;
    } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
      for (;;) {
        const eol = text.indexOf('\r\n', at);
        if (eol < 0) {
          at = text.length;
          break;
        }
        const size = Number.parseInt(text.slice(at, eol), 16);
        at = eol + 2;
        if (!(size > 0)) {
          const trailerEnd = text.indexOf('\r\n\r\n', at - 2);
          at = trailerEnd < 0 ? text.length : trailerEnd + 4;
          break;
        }
        body += text.slice(at, at + size);
        at += size + 2;
      }
    } else {
      body = text.slice(at);
      at = text.length;
    }
    responses.push({ status, headers, body });
  }
  return { responses, rest: text.slice(at) };
}
