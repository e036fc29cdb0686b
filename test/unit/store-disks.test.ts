/**
 * The store disks against the host's real Nix store: the first build writes a base of the whole
 * closure, a closure that grew by a small path gets the cached base and a delta of that path
 * alone, the same closure again finds both cached, and a closure that lost a path gets a new
 * base. Each disk is checked with e2fsck and read back with debugfs: what it holds, and the
 * registration (the whole closure's) on the top disk.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import { NixLayer } from '../../src/image/layers/nix.js';
import { buildStoreDisks, STORE_REGISTRATION_PATH } from '../../src/image/store-disks.js';
import { addTextToStore, buildSmallClosure, requisites, type SmallClosure } from '../support/nix.js';

let work: string;
let paths: FerryPaths;
let closure: SmallClosure;
let extra: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-store-disks-'));
  paths = resolvePaths({ env: { FERRY_STATE_DIR: join(work, 'state'), FERRY_CACHE_DIR: join(work, 'cache'), HOME: work } });
  await mkdir(paths.imagesDir, { recursive: true });
  closure = await buildSmallClosure('store-disks-test');
  extra = await addTextToStore('ferry-store-disks-extra.txt', 'one small path more\n');
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function e2fsckClean(image: string): Promise<void> {
  const result = await execa('e2fsck', ['-fn', image], { reject: false });
  expect(result.exitCode, `${result.stdout}\n${result.stderr}`).toBe(0);
}

/** The store path names on a disk (debugfs `ls` of /nix/store). */
async function storeNames(image: string): Promise<string[]> {
  const { stdout } = await execa('debugfs', ['-R', 'ls -p /nix/store', image]);
  return stdout
    .split('\n')
    .map((line) => line.split('/')[5])
    .filter((name) => name && name !== '.' && name !== '..')
    .map((name) => `/nix/store/${name}`)
    .sort();
}

async function registrationOf(image: string): Promise<string> {
  return (await execa('debugfs', ['-R', `cat ${STORE_REGISTRATION_PATH}`, image])).stdout;
}

describe('store disks', () => {
  it('a base, then a delta of a new path alone, both found cached again; a closure that lost a path gets a new base', async () => {
    const small = await requisites([closure.top]);
    const first = await buildStoreDisks([new NixLayer({ paths: [closure.top] })], paths);
    expect(first).toHaveLength(1);
    expect(first[0].cacheHit).toBe(false);
    await e2fsckClean(first[0].path);
    expect(await storeNames(first[0].path)).toEqual(small);

    // One path more, in a layer of its own: the base stays, the delta holds just that path.
    const layers = [new NixLayer({ paths: [closure.top] }), new NixLayer({ paths: [extra] })];
    const second = await buildStoreDisks(layers, paths);
    expect(second.map((d) => [d.path, d.cacheHit])).toEqual([
      [first[0].path, true],
      [expect.stringMatching(/store-[0-9a-f]{32}\.img$/), false],
    ]);
    await e2fsckClean(second[1].path);
    expect(await storeNames(second[1].path)).toEqual([extra]);
    // The top disk's registration is the whole closure's, as stage 2 loads it.
    const registration = await registrationOf(second[1].path);
    for (const path of [...small, extra]) expect(registration.split('\n')).toContain(path);

    const again = await buildStoreDisks([new NixLayer({ paths: [closure.top, extra] })], paths);
    expect(again.map((d) => [d.path, d.cacheHit])).toEqual([
      [first[0].path, true],
      [second[1].path, true],
    ]);

    // The extra path alone: the cached base holds paths outside it, so a base of its own.
    const lost = await buildStoreDisks([new NixLayer({ paths: [extra] })], paths);
    expect(lost).toHaveLength(1);
    expect(lost[0].path).not.toBe(first[0].path);
    expect(await storeNames(lost[0].path)).toEqual([extra]);
  }, 120_000);

  it('no nix layers, no store disks', async () => {
    expect(await buildStoreDisks([], paths)).toEqual([]);
  });
});
