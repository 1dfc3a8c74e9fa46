/**
 * Units used in the YAML file: durations, ratios and percentages.
 *
 * Durations: `250ms`, `2s`, `1.5m`, `1h`, or a bare number of seconds (`60`, `"60"`, `0.25`).
 * Ratios: `50%` or a number in [0, 1] (`0.5`).
 * Percentages (keys named `*_percent`, as Envoy writes them): `50` or `50%`; a bare number is a
 * percent, so `0.5` is half of one percent.
 */

export const DURATION_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h)?\\s*$';
const DURATION_RE = new RegExp(DURATION_PATTERN);
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration into milliseconds; `undefined` if it is not one. */
export function parseDuration(value: number | string): number | undefined {
  if (typeof value === 'number') {
    return Number.isFinite(value) && value >= 0 ? Math.round(value * 1000) : undefined;
  }
  const m = DURATION_RE.exec(value);
  if (!m) return undefined;
  const unit = value.trim().match(/(ms|s|m|h)\s*$/)?.[1] ?? 's';
  const n = Number.parseFloat(value);
  return Math.round(n * (UNIT_MS[unit] ?? 1000));
}

export const RATIO_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*%\\s*$';
const RATIO_RE = new RegExp(RATIO_PATTERN);

/** Parses a ratio into [0, 1]; `undefined` if it is not one. */
export function parseRatio(value: number | string): number | undefined {
  if (typeof value === 'number') return value >= 0 && value <= 1 ? value : undefined;
  if (RATIO_RE.test(value)) {
    const n = Number.parseFloat(value) / 100;
    return n >= 0 && n <= 1 ? n : undefined;
  }
  const n = Number(value);
  return value.trim() !== '' && Number.isFinite(n) && n >= 0 && n <= 1 ? n : undefined;
}

/** Parses a percentage (`50`, `"50"`, `"50%"`) into [0, 1]; `undefined` if it is not one. */
export function parsePercent(value: number | string): number | undefined {
  const n =
    typeof value === 'number'
      ? value
      : /^\s*\d+(\.\d+)?\s*%?\s*$/.test(value)
        ? Number.parseFloat(value)
        : Number.NaN;
  return Number.isFinite(n) && n >= 0 && n <= 100 ? n / 100 : undefined;
}
