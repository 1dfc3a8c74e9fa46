/**
 * Route matching: the routes of a listener are tried in order; the first that matches wins.
 * A route matches when every condition it names holds: path prefix (segment-aware), host (exact or
 * `*.suffix`, port ignored, case-insensitive), method, and exact header values.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { RouteModel } from '../config/resolve.js';

export function hostOf(hostHeader: string | undefined): string {
  if (!hostHeader) return '';
  // [v6]:port or host:port
  const end = hostHeader.startsWith('[') ? hostHeader.indexOf(']') + 1 : hostHeader.lastIndexOf(':');
  return (end > 0 ? hostHeader.slice(0, end) : hostHeader).toLowerCase();
}

/** Segment-aware prefix test: `/api` matches `/api`, `/api/`, `/api/x`, not `/apix`. */
export function pathHasPrefix(path: string, prefix: string): boolean {
  if (!path.startsWith(prefix)) return false;
  if (path.length === prefix.length || prefix.endsWith('/')) return true;
  return path.charCodeAt(prefix.length) === 47; /* '/' */
}

export function matches(
  route: RouteModel,
  method: string,
  path: string,
  headers: IncomingHttpHeaders,
): boolean {
  const m = route.match;
  if (m.pathPrefix !== undefined && !pathHasPrefix(path, m.pathPrefix)) return false;
  if (m.methods !== undefined && !m.methods.has(method)) return false;
  if (m.host !== undefined || m.hostSuffix !== undefined) {
    const host = hostOf(headers.host);
    if (m.host !== undefined && host !== m.host) return false;
    if (m.hostSuffix !== undefined && !(host.endsWith(m.hostSuffix) && host.length > m.hostSuffix.length))
      return false;
  }
  for (const [name, value] of m.headers) {
    const v = headers[name];
    if (Array.isArray(v) ? !v.includes(value) : v !== value) return false;
  }
  return true;
}

/** Up to this many routes are tried one by one; beyond, through the candidate lists. */
const LINEAR_ROUTES = 8;
/** Candidate lists kept (one per host and first path segment seen); all dropped when full. */
const MAX_CANDIDATE_LISTS = 1024;

/** The first segment of a path (`/api/v1` -> `api`; `/` -> ``). */
function firstSegment(path: string): string {
  const end = path.indexOf('/', 1);
  return path.slice(1, end < 0 ? path.length : end);
}

/**
 * Whether a route can match a request for `host` whose path's first segment is `segment`: its host
 * condition holds, and its path prefix (if any) lies in that first segment. A superset of the
 * routes that match (methods, headers and the prefix itself are checked by `matches`).
 */
function couldMatch(route: RouteModel, host: string, segment: string): boolean {
  const m = route.match;
  if (m.host !== undefined && host !== m.host) return false;
  if (m.hostSuffix !== undefined && !(host.endsWith(m.hostSuffix) && host.length > m.hostSuffix.length))
    return false;
  const prefix = m.pathPrefix;
  if (prefix === undefined || prefix.charCodeAt(0) !== 47 || prefix.length === 1) return true;
  // The prefix's first segment, whole (`/api`, `/api/`, `/api/v1`) or begun (a prefix is matched
  // segment-aware, so `/ap` matches only the segment `ap`).
  return firstSegment(prefix) === segment;
}

/**
 * The routes of a listener in order; the first that matches wins. With more than a few routes,
 * a request is tried only against the routes that can match its host and the first segment of its
 * path (kept per host and segment), so routing costs the same with 1 route or 1000.
 */
export class Router {
  /** Host -> first path segment -> the routes that can match, in order. */
  private readonly candidates = new Map<string, Map<string, readonly RouteModel[]>>();
  private lists = 0;
  /** Whether any route has a host condition, or a path prefix: otherwise that key is not read. */
  private readonly byHost: boolean;
  private readonly byPath: boolean;

  constructor(private readonly routes: readonly RouteModel[]) {
    this.byHost = routes.some((r) => r.match.host !== undefined || r.match.hostSuffix !== undefined);
    this.byPath = routes.some((r) => r.match.pathPrefix !== undefined);
  }

  match(method: string, path: string, headers: IncomingHttpHeaders): RouteModel | undefined {
    const routes = this.routes.length <= LINEAR_ROUTES ? this.routes : this.candidatesFor(path, headers);
    for (const r of routes) if (matches(r, method, path, headers)) return r;
    return undefined;
  }

  private candidatesFor(path: string, headers: IncomingHttpHeaders): readonly RouteModel[] {
    const host = this.byHost ? hostOf(headers.host) : '';
    const segment = this.byPath ? firstSegment(path) : '';
    let bySegment = this.candidates.get(host);
    let list = bySegment?.get(segment);
    if (list !== undefined) return list;
    list = this.routes.filter((r) => couldMatch(r, host, segment));
    // Hosts and paths come from clients: the lists kept are bounded.
    if (this.lists >= MAX_CANDIDATE_LISTS) {
      this.candidates.clear();
      this.lists = 0;
      bySegment = undefined;
    }
    if (bySegment === undefined) {
      bySegment = new Map();
      this.candidates.set(host, bySegment);
    }
    bySegment.set(segment, list);
    this.lists++;
    return list;
  }
}

/** The path sent upstream after strip_prefix; `url` includes the query string. */
export function upstreamPath(url: string, pathLength: number, strip: string | undefined): string {
  if (strip === undefined) return url;
  const rest = url.slice(Math.min(strip.length, pathLength));
  if (rest === '' || rest.charCodeAt(0) === 63 /* ? */) return `/${rest}`;
  return rest.charCodeAt(0) === 47 ? rest : `/${rest}`;
}

/** The origin-form of an absolute-form target for `host`; 'foreign' for another host; undefined if not absolute. */
export function absoluteTarget(url: string, host: string | undefined): string | 'foreign' | undefined {
  // An origin-form target (nearly every request) starts with '/': no regular expression run.
  if (url.charCodeAt(0) === 47 || !/^https?:\/\//i.test(url)) return undefined;
  try {
    const u = new URL(url);
    if (host === undefined || u.host.toLowerCase() !== host.toLowerCase()) return 'foreign';
    return `${u.pathname}${u.search}`;
  } catch {
    return 'foreign';
  }
}

const ENCODED_DOT = /%2e/i;
const ENCODED_DOTS = /%2e/gi;
const ENCODED_BACKSLASH = /%5c/i;

/**
 * The one way paths are read, for matching and for the upstream alike (as Envoy's normalize_path
 * and merge_slashes): `.` and `..` segments, written plainly or as `%2e`, are resolved, and `//` is
 * one slash. Every other byte stays as it came, percent-encodings (`%2F`, `%0D%0A`, ...) included.
 * A backslash (raw or `%5C`), or a `..` that climbs above the root, makes the path invalid:
 * undefined (the listener answers 400).
 */
export function normalizePath(path: string): string | undefined {
  if (path.charCodeAt(0) !== 47 /* / */) return undefined;
  // The percent-encoded forms are looked for only in a path that has a '%' at all.
  const encoded = path.includes('%');
  if (path.includes('\\') || (encoded && ENCODED_BACKSLASH.test(path))) return undefined;
  if (!path.includes('/.') && !(encoded && ENCODED_DOT.test(path)) && !path.includes('//')) return path;
  const out: string[] = [];
  const segments = path.split('/');
  const last = segments.length - 1;
  for (let i = 1; i <= last; i++) {
    const seg = segments[i] as string;
    if (seg === '' && i < last) continue; // '//' -> '/'
    const dots = seg.length <= 6 ? seg.replace(ENCODED_DOTS, '.') : seg;
    if (dots === '.') {
      if (i === last) out.push('');
      continue;
    }
    if (dots === '..') {
      if (out.length === 0) return undefined;
      out.pop();
      if (i === last) out.push('');
      continue;
    }
    out.push(seg);
  }
  return `/${out.join('/')}`;
}
