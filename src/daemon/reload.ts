/**
 * What the daemon does when ferry.toml changes (or `ferry rebuild` asks): load the config → give
 * new logins its authorized keys → build its image → swap the guest to it. One reload at a time,
 * in order, the daemon's first build first. A config that does not load, or an image that does
 * not build, leaves the running guest serving and is reported in status; while there is no
 * image at all, sessions wait for the build under way and get its error (imageReady).
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { watch } from 'chokidar';
import { loadConfig } from '../config/load.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { buildImage } from '../image/build.js';
import type { ImageManifest } from '../image/manifest.js';
import { ExitCode, FerryError } from '../errors.js';
import { ferryKeys } from '../keys/ferry-keys.js';
import { formatDuration } from '../config/units.js';
import { startImages, type StartImages } from './saved-images.js';
import type { SwapResult } from './supervisor.js';

/** What the last reload left behind, for status. */
export interface ReloadState {
  /** Why the last change of ferry.toml was refused (the guest keeps its previous config). */
  configError?: string;
  /** Why the last image build failed (the guest keeps its previous image; without one, sessions get this error). */
  buildError?: string;
  lastReloadAt?: string;
  /** While an image is being built: since when (ISO date). */
  buildingSince?: string;
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
  /** The newest reload queued, until it ends: what a session without an image waits for. */
  #last: Promise<ReloadResult> | undefined;
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
    return this.#enqueue(() => this.#run(reason));
  }

  /**
   * The daemon's first build, the image of the config it started with; `use` gets the images to
   * boot: that one (what ran before becomes the one to roll back to) or, when it fails, what ran
   * before, if anything did. Sessions wait for it instead of booting an image about to be replaced.
   */
  start(saved: Partial<StartImages>, use: (images: StartImages) => Promise<void>): Promise<ReloadResult> {
    return this.#enqueue(async () => {
      const built = await this.#build(this.deps.config(), 'daemon start');
      const images = startImages(saved, built);
      if (images !== undefined) await use(images);
      if (built !== undefined) return { outcome: 'applied-next-boot', imageId: built.id };
      if (images !== undefined) this.deps.log.warn({ image: images.current.id }, `using the image that ran before (${images.current.id}) until a build succeeds`);
      return { outcome: 'build-error', error: this.state.buildError ?? 'the image build failed' };
    });
  }

  /**
   * For a session while the guest has no image: waits for the reload under way (the first build,
   * a change of ferry.toml) or starts one — the cause may be gone, or `ferry image build` made
   * the image meanwhile (a cache hit then) — for at most `[daemon] image-timeout`. Rejects,
   * saying why, when there is still no image.
   */
  async imageReady(): Promise<void> {
    const run = this.#last ?? this.reload('a session is waiting for an image');
    const timeoutMs = this.deps.config().daemon.imageTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new FerryError(`its image is still being built after ${formatDuration(timeoutMs)} ([daemon] image-timeout); \`ferry status\` shows the build`, { exitCode: ExitCode.TempFail })),
        timeoutMs,
      );
    });
    const result = await Promise.race([run, timedOut]).finally(() => clearTimeout(timer));
    if (result.outcome === 'config-error') throw new FerryError(`its config is not valid: ${result.error}`, { exitCode: ExitCode.Config });
    if (result.outcome === 'build-error') throw new FerryError(`its image could not be built: ${result.error}`, { exitCode: ExitCode.Unavailable });
  }

  #enqueue(work: () => Promise<ReloadResult>): Promise<ReloadResult> {
    const run = this.#queue.then(work);
    this.#queue = run.catch(() => {});
    this.#last = run;
    const forget = () => {
      if (this.#last === run) this.#last = undefined;
    };
    run.then(forget, forget);
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
    const manifest = await this.#build(next, reason);
    if (manifest === undefined) return { outcome: 'build-error', error: state.buildError ?? 'the image build failed' };
    return deps.swapTo(manifest);
  }

  /** The image of `config`, or undefined when its build failed (`state.buildError` says why). */
  async #build(config: FerryConfig, reason: string): Promise<ImageManifest | undefined> {
    const { deps, state } = this;
    deps.log.info({ reason }, 'building the image (a cache hit when nothing changed)');
    state.buildingSince = new Date().toISOString();
    try {
      const manifest = await buildImage({ config, paths: deps.paths, keys: ferryKeys(deps.paths), onStep: (step) => deps.log.info(step) });
      state.buildError = undefined;
      deps.log.info({ image: manifest.id }, 'image ready');
      return manifest;
    } catch (error) {
      state.buildError = failureText(error);
      deps.log.error({ err: error }, 'the image build failed; a running guest keeps serving, sessions without one get this error');
      return undefined;
    } finally {
      state.buildingSince = undefined;
    }
  }
}

/**
 * What a failed build says to sessions and status: its message — for a tool ferry ran (a
 * ProcessError) one line naming it and what it said — and a FerryError's hint on the next line
 * (e.g. `apt-get install mmdebstrap`). Never a stack trace: the log has that.
 */
export function failureText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  return error instanceof FerryError && error.hint ? `${error.message}\nhint: ${error.hint}` : error.message;
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

/**
 * Calls `onChange` with the file and the event 300 ms after one of `files` last changed (editors
 * write in several steps): ferry.toml, and the host's nix.conf with what it includes, whose binary
 * caches the guest follows (guest.nix.substituters = "host").
 */
export function watchConfigFiles(files: readonly string[], onChange: (file: string, event: string) => void): { close(): Promise<void> } {
  const watcher = watch([...files], { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
  let debounce: NodeJS.Timeout | undefined;
  watcher.on('all', (event, file) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => onChange(file, event), 300);
  });
  return {
    close: () => {
      clearTimeout(debounce);
      return watcher.close();
    },
  };
}
