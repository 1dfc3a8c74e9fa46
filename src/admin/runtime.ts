/**
 * What the admin endpoints need from the running breakwater (app.ts implements it), apart from the
 * admin listener so that its route plugins and the root do not import each other.
 */
import type { ResolvedConfig } from '../config/resolve.js';
import type { DeferredRuntime } from '../deferred/admin-routes.js';
import type { ReloadStatus } from '../lifecycle/reload.js';
import type { SagaService } from '../sagas/service.js';

/** What the admin endpoints need from the running breakwater. */
export interface AdminRuntime extends DeferredRuntime {
  readonly config: ResolvedConfig;
  readonly configHash: string;
  readonly lastReload: ReloadStatus | undefined;
  reload(trigger: string): Promise<ReloadStatus>;
  state(): unknown;
  forceBreaker(
    upstream: string,
    mode: 'open' | 'close' | 'auto',
  ): { ok: true; state: string } | { ok: false; status: 404 | 409; error: string };
  /** Sagas (src/sagas), when the config has them. */
  sagas?(): SagaService | undefined;
}
