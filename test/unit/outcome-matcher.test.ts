/**
 * `retry_on` / `failure_on` compiled once (compileOutcomes) answer as the list read in order
 * would: the same verdict as isFailure, and the same first entry as a walk of the list.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { FailureOutcome } from '../../src/config/resolve.js';
import { isFailure } from '../../src/pipeline/circuit-breaker.js';
import { compileOutcomes } from '../../src/pipeline/outcome.js';

const ENTRY = fc.oneof(
  fc.constantFrom('5xx', '4xx', 'gateway-error', 'connect-failure', 'reset', 'timeout', 'unavailable'),
  fc.constantFrom(408, 429, 500, 502, 503, 504, 599, 600, 700),
);
const STATUS = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom(101, 200, 408, 429, 499, 500, 502, 503, 504, 599, 600, 700, 999),
);
const CAUSE = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom('connect-failure', 'reset', 'timeout', 'aborted'),
);

/** The list walked in order: the first entry that names the status or the cause. */
function firstMatch(
  list: readonly (string | number)[],
  status: number | undefined,
  cause: string | undefined,
) {
  for (const r of list) {
    if (typeof r === 'number') {
      if (status === r) return String(r);
    } else if (r === '5xx') {
      if (status !== undefined && status >= 500) return '5xx';
    } else if (r === '4xx') {
      if (status !== undefined && status >= 400 && status < 500) return '4xx';
    } else if (r === 'gateway-error') {
      if (status === 502 || status === 503 || status === 504) return 'gateway-error';
    } else if (r === cause) return r;
  }
  return undefined;
}

describe('compiled outcome lists', () => {
  it('give the verdict of isFailure and the first matching entry, for any list and outcome', () => {
    fc.assert(
      fc.property(fc.array(ENTRY, { maxLength: 6 }), STATUS, CAUSE, (list, status, cause) => {
        const m = compileOutcomes(list);
        // An outcome has a status or a cause (a failure with neither counts as its 502).
        const c = status !== undefined ? undefined : cause;
        expect(m.match(status, c)).toBe(firstMatch(list, status, c));
        expect(m.match(status, c) !== undefined).toBe(
          isFailure(list as readonly FailureOutcome[], status, c),
        );
      }),
      { numRuns: 2000 },
    );
  });

  it('names gRPC statuses by their names only', () => {
    const m = compileOutcomes(['unavailable', '5xx']);
    expect(m.grpcNames.has('unavailable')).toBe(true);
    expect(m.grpcNames.has('5xx')).toBe(false);
    expect(m.match(503, undefined)).toBe('5xx');
    expect(m.match(200, undefined)).toBeUndefined();
  });
});
