/**
 * HTTPS upstreams: certificates checked against a CA made here with openssl, the TLS name (SNI and
 * the name checked) and its override, mutual TLS, the insecure switch, handshake failures treated as
 * connect failures, health checks over TLS, config errors, reloads that re-read the files, HTTP/2
 * over TLS (`protocol: h2`, ALPN) and WebSockets to wss:// upstreams. Real node:https, node:http2
 * and `ws` servers on 127.0.0.1.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { indent, type Running, startBreakwater } from '../kit/breakwater.js';
import { h2Request } from '../kit/h2.js';
import { CLI } from '../kit/process.js';
import { requireTool } from '../kit/tools.js';

/** The certificates are made with openssl (Debian's package; present on most machines). */
const openssl = requireTool('openssl', 'openssl');

const run = promisify(execFile);
let dir = '';
const at = (name: string) => join(dir, name);

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/**
 * A CA and what it signs: `server` (localhost + 127.0.0.1), `localhost-only` (the name alone),
 * `api` (api.internal only), `client` (for mutual TLS); and `other-ca` with a server certificate
 * of its own (`stranger`), which breakwater does not trust.
 */
beforeAll(async () => {
  if (!openssl.available) return;
  dir = mkdtempSync(join(tmpdir(), 'bw-tls-'));
  const ssl = (...args: string[]) => run(openssl.path ?? 'openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'];
  const ca = (name: string) =>
    ssl(
      ...['req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`],
      ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    );
  const leaf = (issuer: string, name: string, cn: string, ext: string) =>
    ssl(
      ...['req', '-x509', '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, ...ec],
      ...['-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${cn}`],
      ...['-addext', 'basicConstraints=CA:FALSE', '-addext', ext],
    );
  await Promise.all([ca('ca'), ca('other-ca')]);
  await Promise.all([
    leaf('ca', 'server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1'),
    leaf('ca', 'localhost-only', 'localhost', 'subjectAltName=DNS:localhost'),
    leaf('ca', 'api', 'api.internal', 'subjectAltName=DNS:api.internal'),
    leaf('ca', 'client', 'breakwater-client', 'extendedKeyUsage=clientAuth'),
    leaf('other-ca', 'stranger', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1'),
  ]);
  return () => rmSync(dir, { recursive: true, force: true });
}, 20_000);

interface Seen {
  readonly path: string;
  readonly host: string | undefined;
  readonly proto: string | undefined;
  /** The SNI the client sent (false: none). */
  readonly servername: string | false;
  /** CN of the client certificate, when one was presented and verified. */
  readonly clientCn: string | undefined;
}

interface TlsUpstream {
  readonly port: number;
  readonly seen: Seen[];
  /** TLS connections accepted. */
  readonly connections: number;
  url(host?: string): string;
}

/** A node:https server with `cert` (a name from beforeAll) that answers every request with 200. */
async function httpsUpstream(cert: string, options: https.ServerOptions = {}): Promise<TlsUpstream> {
  const seen: Seen[] = [];
  const server = https.createServer(
    { key: readFileSync(at(`${cert}.key`)), cert: readFileSync(at(`${cert}.pem`)), ...options },
    (req, res) => {
      const socket = req.socket as TLSSocket;
      const peer = socket.getPeerCertificate();
      seen.push({
        path: req.url ?? '',
        host: req.headers.host,
        proto: req.headers['x-forwarded-proto'] as string | undefined,
        servername: (socket as TLSSocket & { servername: string | false }).servername,
        clientCn: socket.authorized && peer?.subject ? String(peer.subject.CN) : undefined,
      });
      req.resume();
      req.on('end', () => res.end(`hello over TLS from ${cert}`));
    },
  );
  let connections = 0;
  server.on('secureConnection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    seen,
    get connections() {
      return connections;
    },
    url: (host = '127.0.0.1') => `https://${host}:${port}`,
  };
}

let configs = 0;
/** The YAML of one listener and upstream `app`, with a `tls` block (paths relative to `dir`). */
function yamlOf(endpoints: string[], tls: string | undefined, extra = ''): string {
  return `
listeners: [{ name: main, port: 0, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app:
    endpoints: [${endpoints.join(', ')}]
${tls === undefined ? '' : `    tls:\n${indent(tls, 6)}`}
${indent(extra, 4)}
`;
}

/** Starts breakwater from a config file written into `dir` (so relative file names resolve there). */
async function proxy(yaml: string): Promise<Running & { file: string }> {
  const file = at(`breakwater-${++configs}.yaml`);
  writeFileSync(file, yaml);
  const bw = await startBreakwater(yaml, { file });
  cleanup.push(() => bw.stop());
  return Object.assign(bw, { file });
}

async function get(bw: Running, init: Parameters<typeof request>[1] = {}) {
  const res = await request(`${bw.url()}/hello`, init);
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

async function problemOf(bw: Running) {
  const res = await get(bw);
  return {
    status: res.status,
    contentType: res.headers['content-type'],
    body: JSON.parse(res.text) as { type: string; detail: string },
  };
}

async function problemsOf(yaml: string) {
  const file = at(`invalid-${++configs}.yaml`);
  writeFileSync(file, yaml);
  try {
    await parseConfigText(yaml, file, { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(!openssl.available)('certificate verification', () => {
  it('with tls.ca_file: 200 and the body, Host is the endpoint, X-Forwarded-Proto the client side', async () => {
    const up = await httpsUpstream('server');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem'));
    const res = await get(bw);
    expect(res.status).toBe(200);
    expect(res.text).toBe('hello over TLS from server');
    expect(up.seen).toEqual([
      { path: '/hello', host: `127.0.0.1:${up.port}`, proto: 'http', servername: false, clientCn: undefined },
    ]);
  });

  it('without ca_file: 502 problem+json naming the TLS failure, nothing served, the code logged', async () => {
    const up = await httpsUpstream('server');
    const bw = await proxy(yamlOf([up.url()], undefined, 'retry: { enabled: false }'));
    const p = await problemOf(bw);
    expect(p.status).toBe(502);
    expect(p.contentType).toBe('application/problem+json');
    expect(p.body.type).toBe('urn:breakwater:problem:upstream-connect-failed');
    expect(p.body.detail).toMatch(/^upstream TLS handshake failed: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(/);
    expect(up.seen).toEqual([]);
    await sleep(20);
    expect(bw.logs.find((l) => l.msg === 'request')).toMatchObject({
      status: 502,
      upstream_error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    });
  });

  it('a certificate from a CA that ca_file does not hold is refused', async () => {
    const up = await httpsUpstream('stranger');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem', 'retry: { enabled: false }'));
    const p = await problemOf(bw);
    expect(p.status).toBe(502);
    expect(p.body.detail).toMatch(/upstream TLS handshake failed: UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    expect(up.seen).toEqual([]);
  });

  it('min_version: a server that stops at TLS 1.2 is refused under min_version TLSv1.3', async () => {
    const up = await httpsUpstream('server', { maxVersion: 'TLSv1.2' });
    const ok = await proxy(yamlOf([up.url()], 'ca_file: ca.pem'));
    expect((await get(ok)).status).toBe(200);
    const strict = await proxy(
      yamlOf([up.url()], 'ca_file: ca.pem\nmin_version: TLSv1.3', 'retry: { enabled: false }'),
    );
    const p = await problemOf(strict);
    expect(p.status).toBe(502);
    expect(p.body.detail).toMatch(/^upstream TLS handshake failed: ERR_SSL_/);
    expect(up.seen).toHaveLength(1);
  });
});

describe.skipIf(!openssl.available)('the TLS name', () => {
  it('server_name overrides SNI and the name checked: api.internal at 127.0.0.1 -> 200; a wrong name -> 502', async () => {
    const up = await httpsUpstream('api');
    const right = await proxy(yamlOf([up.url()], 'ca_file: ca.pem\nserver_name: api.internal'));
    expect((await get(right)).status).toBe(200);
    expect(up.seen[0]).toMatchObject({ servername: 'api.internal', host: `127.0.0.1:${up.port}` });

    const wrong = await proxy(
      yamlOf([up.url()], 'ca_file: ca.pem\nserver_name: web.internal', 'retry: { enabled: false }'),
    );
    const p = await problemOf(wrong);
    expect(p.status).toBe(502);
    expect(p.body.detail).toMatch(/^upstream TLS handshake failed: ERR_TLS_CERT_ALTNAME_INVALID/);
    expect(up.seen).toHaveLength(1);
  });

  it('without server_name, an IP endpoint is checked against the IP in its certificate', async () => {
    const up = await httpsUpstream('api');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem', 'retry: { enabled: false }'));
    const p = await problemOf(bw);
    expect(p.status).toBe(502);
    expect(p.body.detail).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('comes from the endpoint, never from the Host header sent, also after DNS expanded the name to an address', async () => {
    const up = await httpsUpstream('localhost-only');
    const bw = await proxy(
      yamlOf([up.url('localhost')], 'ca_file: ca.pem', 'host_header: preserve\ndns_refresh: 1h'),
    );
    const upstream = bw.bw.upstreams.get('app');
    await upstream?.refreshDns();
    expect(upstream?.endpoints.map((e) => e.model.origin)).toEqual([`https://127.0.0.1:${up.port}`]);
    for (const host of ['shop.example', 'other.example']) {
      const res = await get(bw, { headers: { host } });
      expect(res.status).toBe(200);
    }
    expect(up.seen.map((s) => [s.host, s.servername])).toEqual([
      ['shop.example', 'localhost'],
      ['other.example', 'localhost'],
    ]);
    // A new Host does not make undici reconnect: both requests used one connection.
    expect(up.connections).toBe(1);
  });
});

describe.skipIf(!openssl.available)('mutual TLS', () => {
  const mtls = () => ({ ca: readFileSync(at('ca.pem')), requestCert: true, rejectUnauthorized: true });

  it('with cert_file and key_file: 200, and the server sees the client certificate', async () => {
    const up = await httpsUpstream('server', mtls());
    const bw = await proxy(
      yamlOf([up.url()], 'ca_file: ca.pem\ncert_file: client.pem\nkey_file: client.key'),
    );
    const res = await get(bw);
    expect(res.status).toBe(200);
    expect(up.seen[0]?.clientCn).toBe('breakwater-client');
    // The effective config shows file contents as sizes, never the key itself.
    const config = await (await request(`${bw.adminUrl}/config`)).body.text();
    expect(config).toMatch(/"key":"<\d+ bytes>"/);
    expect(config).not.toContain('PRIVATE KEY');
  });

  it('without a client certificate: 502, and the server served nothing', async () => {
    const up = await httpsUpstream('server', mtls());
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem', 'retry: { enabled: false }'));
    const res = await get(bw);
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(up.seen).toEqual([]);
  });
});

describe.skipIf(!openssl.available)('insecure_skip_verify', () => {
  it('accepts an unverifiable certificate, and warns at load and at every reload', async () => {
    const up = await httpsUpstream('stranger');
    const bw = await proxy(yamlOf([up.url()], 'insecure_skip_verify: true'));
    expect((await get(bw)).status).toBe(200);
    const warnings = () =>
      bw.logs.filter(
        (l) => l.event === 'tls_insecure_skip_verify' && l.level === 'warn' && l.upstream === 'app',
      );
    expect(warnings()).toHaveLength(1);
    expect(String(warnings()[0]?.msg)).toContain('upstreams.app.tls.insecure_skip_verify is true');
    expect((await bw.bw.reload('test')).ok).toBe(true);
    expect(warnings()).toHaveLength(2);
  });
});

describe.skipIf(!openssl.available)('handshake failures are connect failures', () => {
  it('retried on another endpoint, a POST too (nothing reached the first)', async () => {
    const stranger = await httpsUpstream('stranger');
    const good = await httpsUpstream('server');
    const bw = await proxy(
      yamlOf([stranger.url(), good.url()], 'ca_file: ca.pem', 'retry: { initial_wait: 1ms }'),
    );
    for (let i = 0; i < 4; i++) {
      const res = await get(bw, { method: 'POST', body: 'order' });
      expect(res.status).toBe(200);
    }
    expect(stranger.seen).toEqual([]);
    expect(good.seen).toHaveLength(4);
  });

  it('count for the circuit breaker: it opens after failure_threshold handshake failures', async () => {
    const up = await httpsUpstream('stranger');
    const bw = await proxy(
      yamlOf(
        [up.url()],
        'ca_file: ca.pem',
        'retry: { enabled: false }\ncircuit_breaker: { failure_threshold: 2, reset_timeout: 1m }',
      ),
    );
    expect((await problemOf(bw)).status).toBe(502);
    expect((await problemOf(bw)).status).toBe(502);
    const p = await problemOf(bw);
    expect(p.status).toBe(503);
    expect(p.body.type).toBe('urn:breakwater:problem:circuit-open');
  });

  it('count for outlier detection: the endpoint is ejected and traffic moves to the other', async () => {
    const stranger = await httpsUpstream('stranger');
    const good = await httpsUpstream('server');
    const bw = await proxy(
      yamlOf(
        [stranger.url(), good.url()],
        'ca_file: ca.pem',
        'retry: { enabled: false }\noutlier_detection: { consecutive_failures: 1, base_ejection_time: 1m }',
      ),
    );
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await get(bw)).status);
    expect(statuses).toEqual([502, 200, 200, 200, 200]);
    const ejected = bw.bw.upstreams.get('app')?.endpoints.find((e) => e.model.url === stranger.url());
    expect(ejected?.ejections).toBe(1);
  });
});

describe.skipIf(!openssl.available)('health checks', () => {
  it('run over the same TLS pool: healthy with the CA, unhealthy without it', async () => {
    const up = await httpsUpstream('server');
    const check = 'health_check: { path: /health, interval: 50ms }';
    const yaml = `
listeners: [{ name: main, port: 0, routes: [{ upstream: trusted }] }]
admin: { port: 0 }
upstreams:
  trusted: { endpoints: ["${up.url()}"], tls: { ca_file: ca.pem }, ${check} }
  untrusted: { endpoints: ["${up.url()}"], ${check} }
`;
    const bw = await proxy(yaml);
    const health = (name: string) => bw.bw.upstreams.get(name)?.endpoints[0]?.health;
    for (let i = 0; i < 100 && (health('trusted') === 'unknown' || health('untrusted') === 'unknown'); i++)
      await sleep(10);
    expect(health('trusted')).toBe('healthy');
    expect(health('untrusted')).toBe('unhealthy');
    expect(up.seen.some((s) => s.path === '/health' && s.host === `127.0.0.1:${up.port}`)).toBe(true);
  });
});

describe.skipIf(!openssl.available)('config', () => {
  it('a missing ca_file is an error with file, line, column and key', async () => {
    const yaml = yamlOf(['https://127.0.0.1:9443'], 'ca_file: missing-ca.pem');
    const problems = await problemsOf(yaml);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ key: 'upstreams.app.tls.ca_file', line: 8, column: 16 });
    expect(problems[0]?.message).toMatch(/^cannot read missing-ca\.pem: ENOENT/);
  });

  it('the CLI exits 1 and prints file:line:column and the key', async () => {
    const file = at('cli-missing-ca.yaml');
    writeFileSync(file, yamlOf(['https://127.0.0.1:9443'], 'ca_file: missing-ca.pem'));
    const err = await run(process.execPath, [CLI, 'validate', '--config', file]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain(`${file}:8:16 upstreams.app.tls.ca_file: cannot read missing-ca.pem`);
  });

  it('cert_file without key_file, and key_file without cert_file, are errors', async () => {
    const certOnly = await problemsOf(yamlOf(['https://127.0.0.1:9443'], 'cert_file: client.pem'));
    expect(certOnly.map((p) => [p.key, p.message])).toEqual([
      ['upstreams.app.tls.cert_file', "cert_file needs key_file (the client certificate's private key)"],
    ]);
    const keyOnly = await problemsOf(yamlOf(['https://127.0.0.1:9443'], 'key_file: client.key'));
    expect(keyOnly.map((p) => p.key)).toEqual(['upstreams.app.tls.key_file']);
  });

  it('refuses files that do not hold what their key says', async () => {
    const problems = await problemsOf(
      yamlOf(['https://127.0.0.1:9443'], 'ca_file: ca.key\ncert_file: client.pem\nkey_file: server.key'),
    );
    expect(problems.map((p) => p.key)).toEqual(['upstreams.app.tls.ca_file', 'upstreams.app.tls.key_file']);
    expect(problems[0]?.message).toContain('no PEM certificate');
    expect(problems[1]?.message).toContain('is not the unencrypted PEM private key of client.pem');
  });

  it('a tls block needs https:// endpoints; server_name must be a name, not an IP address', async () => {
    const problems = await problemsOf(
      yamlOf(['https://127.0.0.1:9443', '{ url: "http://127.0.0.1:9080" }'], 'server_name: 10.0.0.1'),
    );
    expect(problems.map((p) => [p.key, p.message])).toEqual([
      [
        'upstreams.app.endpoints[1].url',
        'http://127.0.0.1:9080 is not https://: an upstream with a tls block sends nothing in clear text',
      ],
      ['upstreams.app.tls.server_name', expect.stringMatching(/^expected a host name, not an IP address/)],
    ]);
  });

  it('an https endpoint defaults to port 443, and its default Host is the host alone', async () => {
    const cfg = await parseConfigText(
      yamlOf(['https://api.example.com', 'https://api.example.com:8443'], undefined),
      'hosts.yaml',
      { env: {} },
    );
    expect(cfg.upstreams.app?.endpoints.map((e) => [e.origin, e.authority])).toEqual([
      ['https://api.example.com:443', 'api.example.com'],
      ['https://api.example.com:8443', 'api.example.com:8443'],
    ]);
  });
});

describe.skipIf(!openssl.available)('reload', () => {
  it('re-reads the files: a fixed CA file makes new pools, an unchanged one keeps them, an unreadable one keeps the last good config', async () => {
    const up = await httpsUpstream('server');
    writeFileSync(at('trust.pem'), readFileSync(at('other-ca.pem')));
    const bw = await proxy(yamlOf([up.url()], 'ca_file: trust.pem', 'retry: { enabled: false }'));
    const endpoint = () => bw.bw.upstreams.get('app')?.endpoints[0];
    expect((await get(bw)).status).toBe(502);

    writeFileSync(at('trust.pem'), readFileSync(at('ca.pem')));
    const before = endpoint();
    expect((await bw.bw.reload('test')).ok).toBe(true);
    expect(endpoint()).not.toBe(before);
    expect((await get(bw)).status).toBe(200);

    const kept = endpoint();
    expect((await bw.bw.reload('test')).ok).toBe(true);
    expect(endpoint()).toBe(kept);

    rmSync(at('trust.pem'));
    const failed = await bw.bw.reload('test');
    expect(failed.ok).toBe(false);
    expect(failed.problems.map((p) => p.key)).toEqual(['upstreams.app.tls.ca_file']);
    expect(endpoint()).toBe(kept);
    expect((await get(bw)).status).toBe(200);
  });
});

interface H2TlsUpstream {
  readonly port: number;
  /** `req.httpVersion` of every request, in order. */
  readonly versions: string[];
  /** TLS connections accepted. */
  readonly connections: number;
  /** The protocol ALPN chose on each TLS connection (false: none). */
  readonly alpn: (string | false | null)[];
  url(host?: string): string;
}

/**
 * A node:http2 secure server (HTTP/1.1 allowed too) with `cert`: answers 200 with a body naming the
 * HTTP version, and over HTTP/2 a trailer `x-checksum`.
 */
async function h2sUpstream(cert: string): Promise<H2TlsUpstream> {
  const versions: string[] = [];
  const alpn: (string | false | null)[] = [];
  const server = http2.createSecureServer(
    { key: readFileSync(at(`${cert}.key`)), cert: readFileSync(at(`${cert}.pem`)), allowHTTP1: true },
    (req, res) => {
      versions.push(req.httpVersion);
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'text/plain');
        if (req.httpVersion === '2.0') res.addTrailers({ 'x-checksum': 'c0ffee' });
        res.end(`hello over HTTP/${req.httpVersion} from ${cert}`);
      });
    },
  );
  let connections = 0;
  server.on('secureConnection', (socket: TLSSocket) => {
    connections++;
    alpn.push(socket.alpnProtocol);
  });
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Open sessions would keep close() waiting.
        for (const s of sockets) s.destroy();
      }),
  );
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    versions,
    alpn,
    get connections() {
      return connections;
    },
    url: (host = '127.0.0.1') => `https://${host}:${port}`,
  };
}

describe.skipIf(!openssl.available)('HTTP/2 over TLS (protocol: h2)', () => {
  it('with tls.ca_file: the upstream sees HTTP/2 (ALPN h2), the client gets 200 and the body', async () => {
    const up = await h2sUpstream('server');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem', 'protocol: h2'));
    const res = await get(bw);
    expect(res.status).toBe(200);
    expect(res.text).toBe('hello over HTTP/2.0 from server');
    expect(up.versions).toEqual(['2.0']);
    expect(up.alpn).toEqual(['h2']);
  });

  it('several sequential requests, then concurrent ones, share one TLS connection', async () => {
    const up = await h2sUpstream('server');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem', 'protocol: h2'));
    for (let i = 0; i < 3; i++) {
      const res = await get(bw);
      expect(res.status).toBe(200);
      expect(res.text).toBe('hello over HTTP/2.0 from server');
    }
    // HTTP/2 multiplexes: requests at once take streams on the same connection, not new ones.
    const all = await Promise.all([get(bw), get(bw), get(bw), get(bw)]);
    expect(all.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(up.versions).toEqual(Array(7).fill('2.0'));
    expect(up.connections).toBe(1);
  });

  it('without protocol: h2 (default http1), the same server sees HTTP/1.1, one request per connection at a time', async () => {
    const up = await h2sUpstream('server');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem'));
    const res = await get(bw);
    expect(res.status).toBe(200);
    expect(res.text).toBe('hello over HTTP/1.1 from server');
    expect(up.versions).toEqual(['1.1']);
    // undici offers only http/1.1 by ALPN then.
    expect(up.alpn).toEqual(['http/1.1']);
    const all = await Promise.all([get(bw), get(bw), get(bw), get(bw)]);
    expect(all.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(up.versions).toEqual(Array(5).fill('1.1'));
    expect(up.connections).toBeGreaterThan(1);
  });

  it('without the CA: 502 connect failure, nothing served', async () => {
    const up = await h2sUpstream('server');
    const bw = await proxy(yamlOf([up.url()], undefined, 'protocol: h2\nretry: { enabled: false }'));
    const p = await problemOf(bw);
    expect(p.status).toBe(502);
    expect(p.body.type).toBe('urn:breakwater:problem:upstream-connect-failed');
    expect(p.body.detail).toMatch(/^upstream TLS handshake failed: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(/);
    expect(up.versions).toEqual([]);
  });

  it('a response trailer reaches an HTTP/2 client and a chunked HTTP/1.1 client', async () => {
    const up = await h2sUpstream('server');
    const bw = await proxy(`
listeners: [{ name: main, port: 0, protocol: h2c, routes: [{ upstream: app }] }]
admin: { port: 0 }
upstreams:
  app: { endpoints: ["${up.url()}"], protocol: h2, tls: { ca_file: ca.pem } }
`);
    const h2 = await h2Request(bw.url(), { ':method': 'GET', ':path': '/hello' });
    expect(h2.status).toBe(200);
    expect(h2.body.toString()).toBe('hello over HTTP/2.0 from server');
    expect(h2.trailers?.['x-checksum']).toBe('c0ffee');

    const h1 = await request(`${bw.url()}/hello`);
    expect(h1.statusCode).toBe(200);
    expect(h1.headers['transfer-encoding']).toBe('chunked');
    expect(await h1.body.text()).toBe('hello over HTTP/2.0 from server');
    expect(h1.trailers['x-checksum']).toBe('c0ffee');
    expect(up.versions).toEqual(['2.0', '2.0']);
    expect(up.connections).toBe(1);
  });

  it('config: protocol h2 needs https:// endpoints, protocol h2c http:// ones', async () => {
    const h2 = await problemsOf(
      yamlOf(['https://127.0.0.1:9443', 'http://127.0.0.1:9080'], undefined, 'protocol: h2'),
    );
    expect(h2.map((p) => [p.key, p.message])).toEqual([
      [
        'upstreams.app.endpoints[1]',
        'http://127.0.0.1:9080 is not https://: protocol h2 is HTTP/2 over TLS (use h2c for clear text)',
      ],
    ]);
    const h2c = await problemsOf(
      yamlOf(['http://127.0.0.1:9080', '{ url: "https://127.0.0.1:9443" }'], undefined, 'protocol: h2c'),
    );
    expect(h2c.map((p) => [p.key, p.message])).toEqual([
      [
        'upstreams.app.endpoints[1].url',
        'https://127.0.0.1:9443 is not http://: protocol h2c is HTTP/2 in clear text (use h2 for https)',
      ],
    ]);
  });
});

interface WssUpstream {
  readonly port: number;
  /** The SNI of every WebSocket handshake (false: none). */
  readonly servernames: (string | false)[];
  /** WebSocket connections opened. */
  readonly opened: number;
  url(host?: string): string;
}

/** A node:https server with `cert` and a `ws` echo server on it. */
async function wssUpstream(cert: string): Promise<WssUpstream> {
  const server = https.createServer({
    key: readFileSync(at(`${cert}.key`)),
    cert: readFileSync(at(`${cert}.pem`)),
  });
  const wss = new WebSocketServer({ server });
  const servernames: (string | false)[] = [];
  let opened = 0;
  wss.on('connection', (ws, req) => {
    opened++;
    servernames.push((req.socket as TLSSocket & { servername: string | false }).servername);
    ws.on('error', () => undefined);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    servernames,
    get opened() {
      return opened;
    },
    url: (host = '127.0.0.1') => `https://${host}:${port}`,
  };
}

type Handshake =
  | { readonly open: true; readonly ws: WebSocket }
  | {
      readonly open: false;
      readonly status: number;
      readonly contentType: string | undefined;
      readonly body: string;
    };

/** A plain ws:// client to breakwater: open, or the status and body of the refused handshake. */
function handshake(bw: Running): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${bw.url().replace('http:', 'ws:')}/chat`);
    cleanup.push(async () => ws.terminate());
    ws.once('open', () => resolve({ open: true, ws }));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          open: false,
          status: res.statusCode ?? 0,
          contentType: res.headers['content-type'],
          body: Buffer.concat(chunks).toString(),
        }),
      );
    });
  });
}

function echo(ws: WebSocket, text: string): Promise<{ data: string; binary: boolean }> {
  return new Promise((resolve) => {
    ws.once('message', (data, binary) => resolve({ data: String(data), binary }));
    ws.send(text);
  });
}

describe.skipIf(!openssl.available)('WebSocket to a wss:// upstream', () => {
  it('with tls.ca_file: the handshake succeeds and a text message echoes back', async () => {
    const up = await wssUpstream('server');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem'));
    const h = await handshake(bw);
    expect(h.open).toBe(true);
    if (!h.open) return;
    expect(await echo(h.ws, 'hello over wss')).toEqual({ data: 'hello over wss', binary: false });
    expect(up.opened).toBe(1);
    expect(up.servernames).toEqual([false]);
  });

  it('server_name is the TLS name: api.internal at 127.0.0.1 echoes, with that SNI', async () => {
    const up = await wssUpstream('api');
    const bw = await proxy(yamlOf([up.url()], 'ca_file: ca.pem\nserver_name: api.internal'));
    const h = await handshake(bw);
    expect(h.open).toBe(true);
    if (!h.open) return;
    expect(await echo(h.ws, 'named')).toEqual({ data: 'named', binary: false });
    expect(up.servernames).toEqual(['api.internal']);
  });

  it('without the CA: the handshake is refused with 502 problem+json naming the certificate failure', async () => {
    const up = await wssUpstream('server');
    const bw = await proxy(yamlOf([up.url()], undefined, 'retry: { enabled: false }'));
    const h = await handshake(bw);
    expect(h.open).toBe(false);
    if (h.open) return;
    expect(h.status).toBe(502);
    expect(h.contentType).toBe('application/problem+json');
    const body = JSON.parse(h.body) as { type: string; detail: string };
    expect(body.type).toBe('urn:breakwater:problem:upstream-connect-failed');
    expect(body.detail).toMatch(/^upstream TLS handshake failed: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(/);
    expect(up.opened).toBe(0);
  });
});
