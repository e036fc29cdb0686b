/**
 * The daemon's first build and sessions that come while there is no image (reload.ts): they wait
 * for the build under way, get its error — a tool's failure as one line naming the tool, with
 * its hint — or start a new build when none runs; the first build falls back to the image that
 * ran before. The image build is a stub the test resolves; config, reload queue and errors are real.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { resolvePaths } from '../../src/config/paths.js';
import type { FerryConfig } from '../../src/config/types.js';
import { ConfigReload } from '../../src/daemon/reload.js';
import type { StartImages } from '../../src/daemon/saved-images.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { ProcessError } from '../../src/process/process-error.js';

const builds: Array<{ resolve: (m: ImageManifest) => void; reject: (e: unknown) => void }> = [];
vi.mock('../../src/image/build.js', () => ({
  buildImage: () => new Promise((resolve, reject) => builds.push({ resolve, reject })),
}));
vi.mock('../../src/keys/ferry-keys.js', () => ({ ferryKeys: () => ({}) }));

const image = (id: string) => ({ id, manifestPath: `/images/${id}.json` }) as ImageManifest;
const mmdebstrapFailed = () =>
  new ProcessError('mmdebstrap', ['--quiet', 'trixie'], { exitCode: 1, signal: undefined, stdout: '', stderr: 'I: running\nE: Unable to locate package nix-bin\n', timedOut: false }, { hint: 'check the suite' });
/** Lets the promise callbacks queued so far run. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

let dir: string;
let config: FerryConfig;
let reloader: ConfigReload;
let used: StartImages[];
let swapped: string[];

beforeEach(async () => {
  builds.length = 0;
  used = [];
  swapped = [];
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-reload-start-'));
  const file = path.join(dir, 'ferry.toml');
  writeFileSync(file, '[daemon]\nimage-timeout = "2s"\n');
  const paths = resolvePaths({ configFile: file, stateDir: path.join(dir, 'state'), cacheDir: path.join(dir, 'cache'), logDir: path.join(dir, 'logs'), env: {} });
  config = await loadConfig(file);
  const ignore = () => {};
  reloader = new ConfigReload({
    paths,
    log: { warn: ignore, error: ignore, info: ignore, debug: ignore } as unknown as Logger,
    config: () => config,
    adopt: (next) => (config = next),
    setAuthorizedKeys: ignore,
    clientPublicKey: 'ssh-ed25519 AAAA test',
    swapTo: async (manifest) => {
      swapped.push(manifest.id);
      return { outcome: 'applied-next-boot', imageId: manifest.id };
    },
  });
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('the first build', () => {
  it('sessions wait for it and proceed once its image is in place; status shows the build meanwhile', async () => {
    const start = reloader.start({ current: image('old') }, async (images) => void used.push(images));
    const sessions = [reloader.imageReady(), reloader.imageReady()];
    await settle();
    expect(builds).toHaveLength(1); // the sessions wait for the first build, they start none
    expect(reloader.state.buildingSince).toBeDefined();
    builds[0]!.resolve(image('new'));
    await Promise.all(sessions);
    expect(await start).toEqual({ outcome: 'applied-next-boot', imageId: 'new' });
    expect(used).toEqual([{ current: image('new'), previous: image('old') }]);
    expect(reloader.state).toMatchObject({ buildingSince: undefined, buildError: undefined });
  });

  it("a tool's failure: sessions get it as one line naming the tool, with its hint; a session afterwards builds again", async () => {
    void reloader.start({}, async (images) => void used.push(images));
    const waiting = reloader.imageReady();
    await settle();
    builds[0]!.reject(mmdebstrapFailed());
    await expect(waiting).rejects.toThrow('its image could not be built: mmdebstrap exited with code 1: E: Unable to locate package nix-bin\nhint: check the suite');
    expect(reloader.state.buildError).toBe('mmdebstrap exited with code 1: E: Unable to locate package nix-bin\nhint: check the suite');
    expect(used).toEqual([]); // nothing ran before: no image to fall back on

    // The next session: no build runs, so it starts one (the cause may be gone meanwhile).
    const next = reloader.imageReady();
    await settle();
    expect(builds).toHaveLength(2);
    builds[1]!.resolve(image('fixed'));
    await next;
    expect(swapped).toEqual(['fixed']);
    expect(reloader.state.buildError).toBeUndefined();
  });

  it('a failed first build with an image that ran before: that one is used, the error stays in status', async () => {
    const result = reloader.start({ current: image('old'), previous: image('older') }, async (images) => void used.push(images));
    await settle();
    builds[0]!.reject(new Error('disk full'));
    expect(await result).toEqual({ outcome: 'build-error', error: 'disk full' });
    expect(used).toEqual([{ current: image('old'), previous: image('older') }]);
    expect(reloader.state.buildError).toBe('disk full');
  });

  it('a session waits at most image-timeout, then fails saying so; the build goes on', async () => {
    void reloader.start({}, async (images) => void used.push(images));
    const started = Date.now();
    await expect(reloader.imageReady()).rejects.toThrow('its image is still being built after 2s ([daemon] image-timeout); `ferry status` shows the build');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    builds[0]!.resolve(image('late'));
    await settle();
    expect(used).toEqual([{ current: image('late'), previous: undefined }]);
  });
});
