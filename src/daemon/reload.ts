/**
 * What the daemon does when ferry.toml changes (or `ferry rebuild` asks): load the config → give
 * new logins its authorized keys → build its image → swap the guest to it. One reload at a time,
 * in order. A config that does not load, or an image that does not build, leaves the running
 * guest serving and is reported in status.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { watch } from 'chokidar';
import { loadConfig } from '../config/load.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { buildImage } from '../image/build.js';
import type { ImageManifest } from '../image/manifest.js';
import { ferryKeys } from '../keys/ferry-keys.js';
import type { SwapResult } from './supervisor.js';

/** What the last reload left behind, for status. */
export interface ReloadState {
  /** Why the last change of ferry.toml was refused (the guest keeps its previous config). */
  configError?: string;
  /** Why the last image build failed (the guest keeps its previous image). */
  buildError?: string;
  lastReloadAt?: string;
}

export type ReloadResult = SwapResult | { outcome: 'config-error' | 'build-error'; error: string };

export interface ReloadDeps {
  readonly paths: FerryPaths;
  readonly log: Logger;
  /** The config in force; `adopt` replaces it with one that loaded. */
  config(): FerryConfig;
  adopt(next: FerryConfig): void;
  /** New logins use these OpenSSH public key lines; throws on a line that is not one. */
  setAuthorizedKeys(lines: string[]): void;
  /** The daemon's own client public key, always allowed. */
  readonly clientPublicKey: string;
  swapTo(manifest: ImageManifest): Promise<SwapResult>;
}

/** Settings the running front cannot change: they take effect when the daemon restarts. */
const AT_RESTART = ['port', 'listen'] as const;

export class ConfigReload {
  readonly state: ReloadState = {};
  #queue: Promise<unknown> = Promise.resolve();
  /**
   * What the front listens with: the config in force when the reloader is made (the daemon makes
   * it once the front listens). A reload compares with these, not with the config before it —
   * else a file removed (defaults) and restored warns about the port the front already has.
   */
  readonly #running: Pick<FerryConfig['daemon'], (typeof AT_RESTART)[number]>;

  constructor(private readonly deps: ReloadDeps) {
    const { port, listen } = deps.config().daemon;
    this.#running = { port, listen };
  }

  /** Queues a reload after the ones already asked for; resolves with its outcome. */
  reload(reason: string): Promise<ReloadResult> {
    const run = this.#queue.then(() => this.#run(reason));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #run(reason: string): Promise<ReloadResult> {
    const { deps, state } = this;
    state.lastReloadAt = new Date().toISOString();
    let next: FerryConfig;
    try {
      next = await loadConfig(deps.paths.configFile);
      state.configError = undefined;
    } catch (error) {
      state.configError = (error as Error).message;
      deps.log.error({ err: error, file: deps.paths.configFile }, 'the changed config is not valid; the running guest keeps serving with the previous one');
      return { outcome: 'config-error', error: state.configError };
    }
    for (const key of AT_RESTART) {
      // Once per new value: a reload that keeps it (another key changed) says nothing again.
      const changed = next.daemon[key] !== this.#running[key] && next.daemon[key] !== deps.config().daemon[key];
      if (changed) deps.log.warn({ [key]: next.daemon[key], running: this.#running[key] }, `a new ${key} takes effect when the daemon restarts`);
    }
    deps.adopt(next);
    // New logins use the new config's keys at once, whatever becomes of the image build.
    try {
      deps.setAuthorizedKeys(authorizedKeyLines(next, deps.clientPublicKey, deps.log));
    } catch (error) {
      deps.log.error({ err: error }, 'the changed config names an authorized key that is not valid; logins keep the previous keys');
    }
    deps.log.info({ reason }, 'building the image for the new config');
    let manifest: ImageManifest;
    try {
      manifest = await buildImage({ config: next, paths: deps.paths, keys: ferryKeys(deps.paths) });
      state.buildError = undefined;
    } catch (error) {
      state.buildError = (error as Error).message;
      deps.log.error({ err: error }, 'the image build failed; the running guest keeps serving');
      return { outcome: 'build-error', error: state.buildError };
    }
    return deps.swapTo(manifest);
  }
}

/** The public key lines the front accepts: the daemon's client key and those of `[daemon] authorized-keys`. */
export function authorizedKeyLines(config: FerryConfig, clientPublicKey: string, log: Logger): string[] {
  const keys = [clientPublicKey];
  for (const file of config.daemon.authorizedKeys) {
    try {
      keys.push(...readFileSync(file, 'utf8').split('\n').filter((line) => line.trim() && !line.startsWith('#')));
    } catch (error) {
      log.warn({ file, err: error }, 'cannot read an authorized-keys file from the config; skipping it');
    }
  }
  return keys;
}

/** Calls `onChange` 300 ms after ferry.toml last changed (editors write in several steps). */
export function watchConfigFile(file: string, onChange: (event: string) => void): { close(): Promise<void> } {
  const watcher = watch(file, { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
  let debounce: NodeJS.Timeout | undefined;
  watcher.on('all', (event) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => onChange(event), 300);
  });
  return {
    close: () => {
      clearTimeout(debounce);
      return watcher.close();
    },
  };
}
