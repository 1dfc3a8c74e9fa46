/**
 * Watches the config file's directory (a Kubernetes ConfigMap swaps its `..data` symlink) and asks
 * for a reload when the file's content changed.
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from '../observability/logger.js';

export interface WatchDeps {
  readonly file: string;
  /** The hash of the running config (16 hex digits of its SHA-256). */
  readonly runningHash: () => string;
  /** Whether the last reload failed (a file back to the running version is validated again). */
  readonly lastFailed: () => boolean;
  readonly reload: (trigger: string) => Promise<unknown>;
  readonly logger: Logger;
}

export function watchConfigFile(deps: WatchDeps, debounceMs: number): FSWatcher {
  const dir = dirname(deps.file);
  const base = basename(deps.file);
  let timer: NodeJS.Timeout | undefined;
  // The hash of the file as last seen. It starts from the running config's hash, known at once,
  // not from a read of the file at start: such a read can finish after the file changed, and the
  // change would then pass unseen. An unchanged file therefore never reloads, and an edit made
  // right after start is not mistaken for the file the running config came from.
  let lastSeen = deps.runningHash();
  const check = async () => {
    try {
      const text = await readFile(deps.file, 'utf8');
      const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
      if (hash === lastSeen) return;
      lastSeen = hash;
      // A file back to the running version changes nothing, but after a failed reload it is
      // validated again so that /config/status stops showing the failure.
      if (hash !== deps.runningHash() || deps.lastFailed()) await deps.reload('file change');
    } catch {
      // the file is being replaced; the next event will tell
    }
  };
  const watcher = watch(dir, (_event, name) => {
    if (name !== null && name !== base && !name.startsWith('..')) return;
    clearTimeout(timer);
    timer = setTimeout(() => void check(), debounceMs);
  });
  watcher.on('error', (err) =>
    deps.logger.warn({ err }, 'config watch failed; SIGHUP and POST /config/reload still work'),
  );
  return watcher;
}
