/**
 * gRPC end to end: an @grpc/grpc-js client and server talking through breakwater (listener and
 * upstream both `protocol: h2c`): unary and server-streaming calls with their trailers, the breaker
 * opening on UNAVAILABLE, a retry on UNAVAILABLE, answers of breakwater's own as gRPC errors, and
 * grpc-timeout as the call's deadline.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterEach, describe, expect, it } from 'vitest';
import { type Running, startBreakwater } from '../kit/breakwater.js';
import { h2Request } from '../kit/h2.js';

interface Message {
  text: string;
  count: number;
}
type UnaryCall = grpc.ServerUnaryCall<Message, Message>;
type StreamCall = grpc.ServerWritableStream<Message, Message>;
type ChatCall = grpc.ServerDuplexStream<Message, Message>;
interface EchoImpl {
  Unary(call: UnaryCall, callback: grpc.sendUnaryData<Message>): void;
  Stream(call: StreamCall): void;
}
interface EchoClient extends grpc.Client {
  Chat(md?: grpc.Metadata): grpc.ClientDuplexStream<Message, Message>;
  Unary(
    m: Message,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (e: grpc.ServiceError | null, r?: Message) => void,
  ): void;
  Stream(m: Message, md?: grpc.Metadata): grpc.ClientReadableStream<Message>;
}

const definition = protoLoader.loadSync(fileURLToPath(new URL('../fixtures/echo.proto', import.meta.url)), {
  keepCase: true,
  defaults: true,
});
const echo = (grpc.loadPackageDefinition(definition).echo as grpc.GrpcObject)
  .Echo as grpc.ServiceClientConstructor;

describe('gRPC through breakwater', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function server(
    impl: Partial<EchoImpl>,
  ): Promise<{ port: number; calls: Message[]; metadata: grpc.Metadata[] }> {
    const calls: Message[] = [];
    const metadata: grpc.Metadata[] = [];
    const s = new grpc.Server();
    const record = (call: UnaryCall | StreamCall) => {
      calls.push(call.request);
      metadata.push(call.metadata);
    };
    s.addService(echo.service, {
      Unary: (call: UnaryCall, cb: grpc.sendUnaryData<Message>) => {
        record(call);
        if (impl.Unary) impl.Unary(call, cb);
        else cb(null, { text: `echo ${call.request.text}`, count: call.request.count });
      },
      Stream: (call: StreamCall) => {
        record(call);
        impl.Stream?.(call);
      },
      // Bidi: each message is answered at once; the call ends when the client ends.
      Chat: (call: ChatCall) => {
        metadata.push(call.metadata);
        call.on('data', (m: Message) => {
          calls.push(m);
          call.write({ text: `re: ${m.text}`, count: m.count });
        });
        call.on('end', () => call.end());
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    cleanup.push(() => new Promise<void>((r) => s.tryShutdown(() => r())));
    return { port, calls, metadata };
  }

  async function proxy(upstreamPort: number, upstreamExtra = ''): Promise<Running> {
    const bw = await startBreakwater(`
listeners:
  - name: main
    port: 0
    protocol: h2c
    routes: [{ upstream: echo }]
admin: { port: 0 }
upstreams:
  echo:
    endpoints: ["http://127.0.0.1:${upstreamPort}"]
    protocol: h2c
${upstreamExtra}
`);
    cleanup.push(() => bw.stop());
    return bw;
  }

  function client(bw: Running): EchoClient {
    const c = new echo(
      `127.0.0.1:${bw.bw.listenerPort('main')}`,
      grpc.credentials.createInsecure(),
    ) as unknown as EchoClient;
    cleanup.push(async () => c.close());
    return c;
  }

  function unary(
    c: EchoClient,
    m: Message,
    deadlineMs = 5000,
  ): Promise<{ value?: Message; error?: grpc.ServiceError }> {
    return new Promise((resolve) =>
      c.Unary(m, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (error, value) =>
        resolve(error ? { error } : { value: value as Message }),
      ),
    );
  }

  it('passes a unary call, its metadata and its trailers', async () => {
    const up = await server({
      Unary: (call, cb) => {
        const trailer = new grpc.Metadata();
        trailer.set('x-served-by', 'echo-1');
        cb(null, { text: `echo ${call.request.text}`, count: call.request.count + 1 }, trailer);
      },
    });
    const bw = await proxy(up.port);
    const c = client(bw);
    const trailers = new Promise<grpc.Metadata>((resolve) => {
      const call = c.Unary(
        { text: 'hi', count: 41 },
        new grpc.Metadata(),
        {},
        () => undefined,
      ) as unknown as grpc.ClientUnaryCall;
      call.on('status', (s: grpc.StatusObject) => resolve(s.metadata));
    });
    expect((await trailers).get('x-served-by')).toEqual(['echo-1']);
    const r = await unary(c, { text: 'hello', count: 1 });
    expect(r.value).toEqual({ text: 'echo hello', count: 2 });
    expect(up.metadata[0]?.get('x-forwarded-for')).toEqual(['127.0.0.1']);
    expect(up.metadata[0]?.get('x-request-id')[0]).toMatch(/^[0-9a-f]{16}-/);
  });

  it('passes a server-streaming call message by message, ending with its status', async () => {
    const up = await server({
      Stream: (call) => {
        for (let i = 0; i < 5; i++) call.write({ text: `part ${i}`, count: i });
        const trailer = new grpc.Metadata();
        trailer.set('x-parts', '5');
        call.end(trailer);
      },
    });
    const bw = await proxy(up.port);
    const stream = client(bw).Stream({ text: 'go', count: 5 });
    const got: Message[] = [];
    stream.on('data', (m: Message) => got.push(m));
    const status = await new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
    expect(status.code).toBe(grpc.status.OK);
    expect(status.metadata.get('x-parts')).toEqual(['5']);
    expect(got.map((m) => m.text)).toEqual(['part 0', 'part 1', 'part 2', 'part 3', 'part 4']);
  });

  it('passes a bidi stream turn by turn: each message answered before the next is sent', async () => {
    const up = await server({});
    const bw = await proxy(up.port);
    const chat = client(bw).Chat();
    const replies: Message[] = [];
    const next = () => new Promise<Message>((resolve) => chat.once('data', resolve));
    for (let i = 0; i < 3; i++) {
      const reply = next();
      chat.write({ text: `turn ${i}`, count: i });
      replies.push(await reply);
    }
    chat.end();
    const status = await new Promise<grpc.StatusObject>((resolve) => chat.on('status', resolve));
    expect(status.code).toBe(grpc.status.OK);
    expect(replies.map((m) => m.text)).toEqual(['re: turn 0', 're: turn 1', 're: turn 2']);
  });

  it('passes a bidi stream of more than max_body_bytes in all, and every reply before the status', async () => {
    const up = await server({});
    const bw = await proxy(up.port);
    const chat = client(bw).Chat();
    const big = 'x'.repeat(400 * 1024);
    let received = 0;
    chat.on('data', (m: Message) => {
      received += m.text.length;
    });
    const ended = new Promise<void>((resolve) => chat.on('end', () => resolve()));
    for (let i = 0; i < 4; i++) chat.write({ text: big, count: i });
    chat.end();
    const status = await new Promise<grpc.StatusObject>((resolve) => chat.on('status', resolve));
    await ended;
    expect(status.code).toBe(grpc.status.OK);
    expect(up.calls).toHaveLength(4);
    expect(received).toBe(4 * (big.length + 're: '.length));
  });

  it('lets a long stream run past the attempt timeout when the client set no deadline', async () => {
    const up = await server({
      Stream: (call) => {
        let i = 0;
        const t = setInterval(() => {
          call.write({ text: `tick ${i}`, count: i });
          if (++i === 6) {
            clearInterval(t);
            call.end();
          }
        }, 100);
      },
    });
    // Attempt timeout 300 ms: it covers the wait for the response headers, not the whole stream.
    const bw = await proxy(up.port, '    timeout: 300ms');
    const stream = client(bw).Stream({ text: 'go', count: 0 });
    const got: Message[] = [];
    stream.on('data', (m: Message) => got.push(m));
    const status = await new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
    expect(status.code).toBe(grpc.status.OK);
    expect(got).toHaveLength(6);
  });

  it('stays up when a client cancels and the upstream answers Trailers-Only afterwards', async () => {
    const up = await server({
      Unary: (_call, cb) => {
        setTimeout(() => cb({ code: grpc.status.UNAVAILABLE, details: 'late' }), 300);
      },
    });
    const bw = await proxy(up.port, '    retry: { enabled: false }');
    const c = client(bw);
    const cancelled = await unary(c, { text: 'gone', count: 0 }, 100);
    expect(cancelled.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    // The late answer arrives for a stream the client already reset; breakwater is still serving.
    await new Promise((r) => setTimeout(r, 400));
    const again = await unary(c, { text: 'ok?', count: 0 });
    expect(again.error?.details).toBe('late');
  });

  it('opens the breaker on UNAVAILABLE and answers UNAVAILABLE itself while open', async () => {
    const up = await server({
      Unary: (_call, cb) => cb({ code: grpc.status.UNAVAILABLE, details: 'shard down' }),
    });
    const bw = await proxy(
      up.port,
      '    circuit_breaker: { failure_threshold: 3, reset_timeout: 30s }\n    retry: { enabled: false }',
    );
    const c = client(bw);
    for (let i = 0; i < 3; i++) {
      const r = await unary(c, { text: `call ${i}`, count: i });
      expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(r.error?.details).toBe('shard down');
    }
    const blocked = await unary(c, { text: 'blocked', count: 0 });
    expect(blocked.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(blocked.error?.details).toMatch(/circuit breaker of upstream echo is open/);
    expect(up.calls).toHaveLength(3);
    const metrics = await (await fetch(`${bw.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/breakwater_grpc_calls_total\{[^}]*grpc_status="unavailable"\} 4/);
  });

  it('opens the breaker on UNAVAILABLE sent after messages, in the trailers', async () => {
    const up = await server({
      Stream: (call) => {
        call.write({ text: 'partial', count: 0 });
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'lost the shard mid-stream' });
      },
    });
    const bw = await proxy(up.port, '    circuit_breaker: { failure_threshold: 2, reset_timeout: 30s }');
    const c = client(bw);
    for (let i = 0; i < 2; i++) {
      const stream = c.Stream({ text: 'go', count: 1 });
      stream.on('data', () => undefined);
      stream.on('error', () => undefined);
      const status = await new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
      expect(status.code).toBe(grpc.status.UNAVAILABLE);
    }
    await new Promise((r) => setTimeout(r, 50));
    const state = (await (await fetch(`${bw.adminUrl}/state`)).json()) as {
      upstreams: Record<string, { breaker?: { state: string } }>;
    };
    expect(state.upstreams.echo?.breaker?.state).toBe('open');
  });

  it('retries a call answered UNAVAILABLE when retry_on names it, and it succeeds', async () => {
    let n = 0;
    const up = await server({
      Unary: (call, cb) => {
        n++;
        if (n === 1) cb({ code: grpc.status.UNAVAILABLE, details: 'warming up' });
        else cb(null, { text: `echo ${call.request.text}`, count: n });
      },
    });
    const bw = await proxy(up.port, '    retry: { retry_on: [unavailable], initial_wait: 10ms }');
    const r = await unary(client(bw), { text: 'pay', count: 0 });
    expect(r.error).toBeUndefined();
    expect(r.value).toEqual({ text: 'echo pay', count: 2 });
    expect(up.calls.map((m) => m.text)).toEqual(['pay', 'pay']);
  });

  it('does not retry UNAVAILABLE when retry_on does not name it', async () => {
    const up = await server({ Unary: (_c, cb) => cb({ code: grpc.status.UNAVAILABLE, details: 'no' }) });
    const bw = await proxy(up.port);
    const r = await unary(client(bw), { text: 'once', count: 0 });
    expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(up.calls).toHaveLength(1);
  });

  it('answers RESOURCE_EXHAUSTED when the rate limiter refuses a call', async () => {
    // One token, and the next only in 100 s: a slow machine cannot earn one during the test.
    const up = await server({});
    const bw = await proxy(up.port, '    rate_limiter: { max_requests_per_second: 0.01, burst_limit: 1 }');
    const c = client(bw);
    expect((await unary(c, { text: 'first', count: 0 })).value?.text).toBe('echo first');
    const second = await unary(c, { text: 'second', count: 0 });
    expect(second.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(up.calls).toHaveLength(1);
  });

  it('holds gRPC calls within the streaming share: a call beyond it waits, then UNAVAILABLE; it runs once a place is free', async () => {
    const up = await server({});
    // One connection of two streams, half of it for streaming: one call at a time.
    const bw = await proxy(
      up.port,
      '    max_connections: 1\n    max_concurrent_streams: 2\n    streaming_connections: 50%\n    timeout: 500ms',
    );
    const c = client(bw);
    const chat = c.Chat();
    chat.on('error', () => undefined);
    chat.write({ text: 'a', count: 1 });
    await new Promise((r) => chat.once('data', r));
    const t0 = performance.now();
    const second = await unary(c, { text: 'b', count: 2 });
    expect(second.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(second.error?.details).toContain('streaming');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(400);
    const ended = new Promise((r) => chat.once('status', r));
    chat.end();
    await ended;
    const third = await unary(c, { text: 'c', count: 3 });
    expect(third.value?.text).toBe('echo c');
  });

  it('answers UNAVAILABLE when the upstream is down', async () => {
    const bw = await proxy(1);
    const r = await unary(client(bw), { text: 'x', count: 0 });
    expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(r.error?.details).toMatch(/could not connect to the upstream/);
  });

  it('takes grpc-timeout as the deadline: DEADLINE_EXCEEDED from breakwater, the upstream told the time left', async () => {
    const deadlines: number[] = [];
    const up = await server({
      Unary: (call, cb) => {
        deadlines.push(new Date(call.getDeadline()).getTime() - Date.now());
        setTimeout(() => cb(null, { text: 'late', count: 0 }), 1500);
      },
    });
    const bw = await proxy(up.port);
    // A raw HTTP/2 call with no deadline of its own on the client side: only breakwater enforces it.
    const frame = Buffer.from([0, 0, 0, 0, 4, 0x0a, 0x02, 0x68, 0x69]); // uncompressed, 4 bytes: text "hi"
    const t0 = performance.now();
    const res = await h2Request(
      bw.url(),
      {
        ':method': 'POST',
        ':path': '/echo.Echo/Unary',
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': '200m',
      },
      frame,
    );
    const took = performance.now() - t0;
    expect(res.status).toBe(200);
    const grpcStatus = res.trailers?.['grpc-status'] ?? res.headers['grpc-status'];
    expect(grpcStatus).toBe(String(grpc.status.DEADLINE_EXCEEDED));
    expect(took).toBeLessThan(1200);
    // The upstream was given the time left as its own deadline (grpc-js reads grpc-timeout into it).
    expect(deadlines).toHaveLength(1);
    expect(deadlines[0]).toBeGreaterThan(0);
    expect(deadlines[0]).toBeLessThanOrEqual(200);
  });
});
