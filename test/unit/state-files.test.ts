/**
 * The files ferry keeps between runs, damaged: each reader names the file in a FerryError (no
 * stack trace), and the daemon's readers carry on from what can be rebuilt. The daemon itself is
 * not started here (it builds an image and boots a guest); its start-up readers are tested one by
 * one — saved-images.ts's loader, the leftover-guest check — and the pid file rule of `ferry daemon`.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import { loadSavedImages } from '../../src/daemon/saved-images.js';
import { stopLeftoverGuest } from '../../src/daemon/guest-vm.js';
import { removeOwnPidFile } from '../../src/commands/daemon.js';
import { ExitCode, FerryError } from '../../src/errors.js';
import { latestManifest, latestManifestFile, readManifest, type ImageManifest } from '../../src/image/manifest.js';
import { runningGuest } from '../../src/vm/instance/record.js';

let dir: string;
let paths: FerryPaths;
let warnings: string[];

/** A logger that keeps the messages of warn and error calls. */
function recordingLogger(): Logger {
  const keep = (...args: unknown[]) => warnings.push(String(args.find((a) => typeof a === 'string')));
  const ignore = () => {};
  return { warn: keep, error: keep, info: ignore, debug: ignore, trace: ignore } as unknown as Logger;
}

function manifest(file: string, id: string): ImageManifest {
  const part = (name: string) => ({ path: path.join(dir, name), key: name, sizeBytes: 1, cacheHit: true });
  return {
    id,
    system: 'x86_64-linux',
    preset: 'debian',
    systemDisk: part('system.img'),
    initramfs: part('initramfs'),
    config: part('config'),
    initrd: part('initrd'),
    kernel: { path: path.join(dir, 'vmlinuz'), version: '6.1' },
    cmdline: 'quiet',
    manifestPath: file,
    timings: {},
  };
}

async function rejection(promise: Promise<unknown>): Promise<FerryError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FerryError);
  return error as FerryError;
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-state-files-'));
  paths = resolvePaths({ stateDir: path.join(dir, 'state'), cacheDir: path.join(dir, 'cache'), logDir: path.join(dir, 'logs'), env: {}, homeDir: dir });
  mkdirSync(paths.vmDir, { recursive: true });
  mkdirSync(paths.imagesDir, { recursive: true });
  warnings = [];
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('image manifests (latest.json, build-<id>.json)', () => {
  it('latest.json: missing is none; not JSON, or not a manifest, is a FerryError naming it (exit 65)', async () => {
    expect(await latestManifest(paths)).toBeUndefined();
    const file = latestManifestFile(paths);
    writeFileSync(file, '{"id": "abc", ');
    let error = await rejection(latestManifest(paths));
    expect(error.exitCode).toBe(ExitCode.DataError);
    expect(error.message).toMatch(new RegExp(`^the image manifest ${file} is damaged: not valid JSON`));
    writeFileSync(file, '{"id": "abc"}\n');
    error = await rejection(latestManifest(paths));
    expect(error.message).toBe(
      `the image manifest ${file} is damaged: expected an image manifest, but system, cmdline, manifestPath, systemDisk.path, initramfs.path, config.path, initrd.path, kernel.path are missing or of the wrong type`,
    );
    writeFileSync(file, 'null');
    expect((await rejection(latestManifest(paths))).message).toMatch(/is damaged: expected an image manifest/);
  });

  it('a good manifest reads back; a missing one named on purpose is exit 66', async () => {
    const file = path.join(paths.imagesDir, 'build-abc.json');
    writeFileSync(file, JSON.stringify(manifest(file, 'abc')));
    expect((await readManifest(file)).id).toBe('abc');
    const error = await rejection(readManifest(path.join(paths.imagesDir, 'build-gone.json')));
    expect(error.exitCode).toBe(ExitCode.NoInput);
    expect(error.message).toMatch(/build-gone\.json: no such file$/);
  });
});

describe('current-image.json: the daemon starts from what it can rebuild', () => {
  it.each([
    ['truncated JSON', '{"current": "/x/build-a.json", '],
    ['not an object', '[]'],
    ['no current manifest', '{"previous": "/x/build-a.json"}'],
    ['empty', ''],
  ])('%s: a warning naming the file, and no saved images (a fresh build)', async (_, text) => {
    writeFileSync(paths.currentImage, text);
    expect(await loadSavedImages(paths, recordingLogger())).toEqual({});
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`${paths.currentImage} is damaged`);
    expect(warnings[0]).toContain('starting from a fresh build');
  });

  it('a saved manifest that is damaged is left out with a warning naming it; the other still loads', async () => {
    const good = path.join(paths.imagesDir, 'build-good.json');
    const bad = path.join(paths.imagesDir, 'build-bad.json');
    writeFileSync(good, JSON.stringify(manifest(good, 'good')));
    writeFileSync(bad, '{');
    writeFileSync(paths.currentImage, JSON.stringify({ current: bad, previous: good }));
    const saved = await loadSavedImages(paths, recordingLogger());
    expect(saved.current).toBeUndefined();
    expect(saved.previous?.id).toBe('good');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`the image manifest ${bad} is damaged`);
  });

  it('none saved, or both good: no warning', async () => {
    expect(await loadSavedImages(paths, recordingLogger())).toEqual({});
    const a = path.join(paths.imagesDir, 'build-a.json');
    writeFileSync(a, JSON.stringify(manifest(a, 'a')));
    writeFileSync(paths.currentImage, JSON.stringify({ current: a }));
    expect((await loadSavedImages(paths, recordingLogger())).current?.id).toBe('a');
    expect(warnings).toEqual([]);
  });
});

describe('the guest record', () => {
  it('damaged: the reader refuses it naming the file; the daemon warns and carries on', async () => {
    writeFileSync(paths.guestRecord, '{"pid": ');
    const error = await rejection(runningGuest(paths));
    expect(error.message).toMatch(new RegExp(`^${paths.guestRecord}: not valid JSON`));
    await expect(stopLeftoverGuest(paths, recordingLogger())).resolves.toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`${paths.guestRecord}: not valid JSON`);
    expect(warnings[0]).toContain('not stopping a guest from an earlier daemon');
  });
});

describe('the pid file of `ferry daemon`', () => {
  it('`ferry daemon` failing after it wrote its pid file removes it', async () => {
    // The keys directory is a file: the daemon fails making its keys, right after writing its pid.
    mkdirSync(paths.stateDir, { recursive: true });
    writeFileSync(paths.keysDir, 'not a directory');
    const saved = { ...process.env };
    Object.assign(process.env, { FERRY_STATE_DIR: paths.stateDir, FERRY_CACHE_DIR: paths.cacheDir, FERRY_LOG_DIR: paths.logDir, FERRY_CONFIG: path.join(dir, 'ferry.toml') });
    writeFileSync(path.join(dir, 'ferry.toml'), '[daemon]\nlog-level = "error"\n');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const { main } = await import('../../src/program.js');
      expect(await main(['node', 'ferry', 'daemon', '--json-logs'])).not.toBe(0);
    } finally {
      stderr.mockRestore();
      process.env = saved;
    }
    expect(existsSync(paths.daemonLog)).toBe(true); // it got as far as its log, so past the pid file
    expect(existsSync(paths.daemonPid)).toBe(false);
  });


  it('a daemon ending on an error removes its own pid file, never another daemon\'s', () => {
    const file = path.join(dir, 'daemon.pid');
    writeFileSync(file, `${process.pid + 1}\n`);
    removeOwnPidFile(file);
    expect(readFileSync(file, 'utf8')).toBe(`${process.pid + 1}\n`);
    writeFileSync(file, `${process.pid}\n`);
    removeOwnPidFile(file);
    expect(existsSync(file)).toBe(false);
    expect(() => removeOwnPidFile(file)).not.toThrow();
  });
});
