import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { compileTemplate, type RenderInput, render } from '../../src/sagas/template.js';

const base = (sagas: string) => `
listeners:
  - name: main
    port: 0
    routes: [{ upstream: orders }]
upstreams:
  orders: { endpoints: ["http://127.0.0.1:1"] }
  payments: { endpoints: ["http://127.0.0.1:2"] }
sagas:
${sagas}`;

async function problems(yaml: string) {
  try {
    await parseConfigText(yaml, '/etc/bw.yaml', { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('sagas config', () => {
  it('a valid saga resolves with defaults, its templates compiled', async () => {
    const cfg = await parseConfigText(
      base(`  checkout:
    trigger: { listener: main, path: /checkout/:cart }
    steps:
      - name: order
        call: { upstream: orders, path: "/orders/{{ request.params.cart }}" }
        compensate: { upstream: orders, path: "/orders/{{ steps.order.body.id }}/cancel" }
      - name: charge
        call: { upstream: payments, path: /charges, body: '{"order": "{{ steps.order.body.id }}"}' }
`),
      '/etc/bw.yaml',
      { env: {} },
    );
    const s = cfg.sagas.checkout;
    expect(s?.trigger.method).toBe('POST');
    expect(s?.timeout).toBe(30_000);
    expect(s?.steps[0]?.compensate?.retry).toEqual({ maxAttempts: 10, initialWait: 100, maxWait: 30_000 });
    expect(s?.steps[0]?.compensate?.maxAge).toBe(3_600_000);
    expect([...(s?.steps[0]?.compensate?.successStatuses ?? [])]).toEqual([404, 410]);
    expect(s?.needsJsonBody).toBe(false);
    expect(s?.forwardsBody).toBe(true);
  });

  it('unknown references are config errors naming file, line, column and key', async () => {
    const p = await problems(
      base(`  checkout:
    trigger: { listener: main, path: /checkout }
    steps:
      - name: order
        call: { upstream: orders, path: "/orders/{{ steps.charge.body.id }}" }
      - name: charge
        call:
          upstream: payments
          path: /charges
          headers: { x-cart: "{{ request.params.cart }}" }
          body: '{"a": "{{ request.bodyy.x }}", "b": "{{ process.env.HOME }}"}'
`),
    );
    expect(p.map((x) => `${x.file}:${x.line}:${x.column} ${x.key}`)).toEqual([
      '/etc/bw.yaml:14:41 sagas.checkout.steps[0].call.path',
      '/etc/bw.yaml:19:30 sagas.checkout.steps[1].call.headers.x-cart',
      '/etc/bw.yaml:20:17 sagas.checkout.steps[1].call.body',
      '/etc/bw.yaml:20:17 sagas.checkout.steps[1].call.body',
    ]);
    expect(p[0]?.message).toContain('step charge has not run yet');
    expect(p[1]?.message).toContain('the trigger path has no parameter :cart');
    expect(p[2]?.message).toContain('request has method, path, params, query, headers and body');
    expect(p[3]?.message).toContain('a reference starts with request, steps or saga');
  });

  it('names that refer elsewhere are checked: listener, upstreams, step names, response step', async () => {
    const p = await problems(
      base(`  checkout:
    trigger: { listener: nope, path: /checkout }
    response: { step: missing }
    steps:
      - name: order
        call: { upstream: ghost, path: /orders }
      - name: order
        call: { upstream: orders, path: /orders }
`),
    );
    expect(p.map((x) => `${x.key}: ${x.message}`)).toEqual([
      'sagas.checkout.trigger.listener: listener "nope" is not defined; defined: main',
      'sagas.checkout.response.step: no step "missing"; steps: order',
      'sagas.checkout.steps[0].call.upstream: upstream "ghost" is not defined; defined: orders, payments',
      'sagas.checkout.steps[1].name: step name "order" is used twice',
    ]);
  });

  it('expressions are not a template: only dotted references', async () => {
    const p = await problems(
      base(`  checkout:
    trigger: { listener: main, path: /checkout }
    steps:
      - name: order
        call: { upstream: orders, path: "/orders/{{ request.body.a + 1 }}" }
`),
    );
    expect(p[0]?.message).toContain('is not a name');
  });
});

describe('saga templates', () => {
  const scope = { params: new Set(['id']), steps: ['charge'], allSteps: ['charge'] };
  const input: RenderInput = {
    saga: { id: 's-1', name: 'checkout' },
    request: {
      method: 'POST',
      path: '/x',
      params: { id: 'a/b?c' },
      query: {},
      headers: { 'x-tenant': 't\r\nx: y' },
      body: { name: 'say "hi"', n: 3, tags: ['a'] },
    },
    steps: { charge: { status: 201, headers: {}, body: { id: 'ch_1' } } },
  };
  const rendered = (source: string, context: 'path' | 'header' | 'body') => {
    const { template, errors } = compileTemplate(source, context, scope);
    expect(errors).toEqual([]);
    return render(template, input);
  };

  it('escapes for where the value lands: a path segment, a JSON string, a JSON value', () => {
    expect(rendered('/p/{{ request.params.id }}/{{ steps.charge.body.id }}', 'path')).toBe(
      '/p/a%2Fb%3Fc/ch_1',
    );
    expect(
      JSON.parse(rendered('{"name": "{{ request.body.name }}", "n": {{ request.body.n }}}', 'body')),
    ).toEqual({
      name: 'say "hi"',
      n: 3,
    });
    expect(
      JSON.parse(rendered('{"tags": {{ request.body.tags }}, "s": {{ request.body.name }}}', 'body')),
    ).toEqual({
      tags: ['a'],
      s: 'say "hi"',
    });
    expect(rendered('saga {{ saga.id }} of {{ saga.name }}', 'body')).toBe('saga s-1 of checkout');
  });

  it('refuses a header value with a line break and a reference without a value', () => {
    const h = compileTemplate('{{ request.headers.x-tenant }}', 'header', scope).template;
    expect(() => render(h, input)).toThrow(/control character/);
    const missing = compileTemplate('{{ request.body.nope }}', 'body', scope).template;
    expect(() => render(missing, input)).toThrow(/has no value/);
  });
});

describe('the e-commerce example', () => {
  it('has a checkout saga: order -> payment -> inventory reservation', async () => {
    const { readFileSync } = await import('node:fs');
    const file = new URL('../../config/examples/ecommerce.yaml', import.meta.url).pathname;
    const cfg = await parseConfigText(readFileSync(file, 'utf8'), file, { env: {} });
    const s = cfg.sagas.checkout;
    expect(s?.steps.map((x) => [x.name, x.call.upstream, x.compensate?.upstream])).toEqual([
      ['order', 'orders', 'orders'],
      ['payment', 'payments', 'payments'],
      ['reservation', 'inventory', 'inventory'],
    ]);
    expect(s?.trigger).toMatchObject({ listener: 'outbound', method: 'POST', path: '/checkout' });
  });
});
