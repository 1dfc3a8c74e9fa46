/**
 * Fallbacks written in place (an upstream's `fallback: { type: ... }`, a fallback's
 * `then: { type: ... }`) become named fallbacks like those of `fallbacks`, so everything after
 * the schema (checks, resolve, the fallback chain) deals with names only. An inline fallback is
 * named after where it is written: `payments/fallback`, `payments/fallback/then`, `busy/then`
 * (a `/` cannot appear in a name of the file, so it never collides with one).
 */
import type { Config, FallbackInput } from './schema.js';

type Path = (string | number)[];

/** A fallback whose `then` is a name. */
export type FlatFallback = FallbackInput extends infer F
  ? F extends { then?: unknown }
    ? Omit<F, 'then'> & { readonly then?: string }
    : never
  : never;

export interface FlatFallbacks {
  /** Named and inline fallbacks, by name. */
  readonly fallbacks: Readonly<Record<string, FlatFallback>>;
  /** Where each fallback is written in the file. */
  readonly paths: Readonly<Record<string, Path>>;
  /** Each upstream's own fallback (`upstreams.<name>.fallback`), by name. */
  readonly upstreamFallback: Readonly<Record<string, string>>;
}

export function flattenFallbacks(cfg: Pick<Config, 'fallbacks' | 'upstreams'>): FlatFallbacks {
  const fallbacks: Record<string, FlatFallback> = {};
  const paths: Record<string, Path> = {};
  const add = (name: string, f: FallbackInput, path: Path): void => {
    let then: string | undefined;
    if (typeof f.then === 'string') then = f.then;
    else if (f.then !== undefined) {
      then = `${name}/then`;
      add(then, f.then, [...path, 'then']);
    }
    fallbacks[name] = { ...f, then } as FlatFallback;
    paths[name] = path;
  };
  for (const [name, f] of Object.entries(cfg.fallbacks)) add(name, f, ['fallbacks', name]);
  const upstreamFallback: Record<string, string> = {};
  for (const [un, u] of Object.entries(cfg.upstreams)) {
    if (typeof u.fallback === 'string') upstreamFallback[un] = u.fallback;
    else if (u.fallback !== undefined) {
      upstreamFallback[un] = `${un}/fallback`;
      add(`${un}/fallback`, u.fallback, ['upstreams', un, 'fallback']);
    }
  }
  return { fallbacks, paths, upstreamFallback };
}
