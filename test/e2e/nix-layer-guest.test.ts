/**
 * The nix layer, proven where it matters: store paths from the host's Nix store (with their
 * closure) go onto a store disk, the guest's stage 2 loads their registration at boot, and
 * in the guest `nix-store --verify-path` succeeds for each of them — and `--check-validity` knows
 * them, so the guest's Nix treats them as its own. A path added later comes on a delta stacked
 * over that disk, and the guest knows both after booting again.
 */
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addTextToStore, buildSmallClosure, requisites, type SmallClosure } from '../support/nix.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CACHE = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');

let work: string;
let env: Record<string, string>;
let closure: SmallClosure;
let paths: string[];
const storeDisks: string[] = [];

function ferry(args: string[]) {
  return execa('node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), ...args], { env, reject: false, timeout: 600_000, cwd: ROOT });
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-nix-guest-'));
  // A closure no other test has, so the guest cannot have it from anywhere but this layer.
  closure = await buildSmallClosure(`guest-${process.pid}-${Date.now()}`);
  paths = await requisites([closure.top]);
  env = {
    ...(process.env as Record<string, string>),
    FERRY_CONFIG: path.join(work, 'ferry.toml'),
    FERRY_STATE_DIR: path.join(work, 'state'),
    FERRY_CACHE_DIR: CACHE,
  };
  await writeFile(
    env.FERRY_CONFIG,
    `[guest]\npreset = "debian"\ncpus = 2\nmemory = "1GiB"\nstate-disk-size = "2GiB"\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n\n[[image.layers]]\ntype = "nix"\npaths = ["${closure.top}"]\n`,
  );
  const up = await ferry(['up', '--json']);
  const console = await readFile(path.join(work, 'state', 'logs', 'console.log'), 'utf8').catch(() => '');
  expect(up.exitCode, `ferry up failed:\n${up.stderr}\n${console.slice(-3000)}`).toBe(0);
  const manifest = JSON.parse(await readFile(path.join(CACHE, 'images', 'latest.json'), 'utf8')) as { storeDisks?: Array<{ path: string }> };
  storeDisks.push(...(manifest.storeDisks ?? []).map((disk) => disk.path));
}, 900_000);

afterAll(async () => {
  await ferry(['down', '--hard']);
  await rm(work, { recursive: true, force: true });
  // This test's store disks hold one-off closures: of no use to any later run.
  for (const disk of storeDisks) {
    for (const file of [disk, `${disk}.check`, disk.replace(/\.img$/, '.paths')]) await rm(file, { force: true });
  }
});

describe('nix layer in the guest', () => {
  it('puts the whole closure in the image, and the guest verifies every path after loading the registration', async () => {
    expect(paths.length).toBeGreaterThanOrEqual(3);
    for (const storePath of paths) {
      const verify = await ferry(['exec', '--', 'nix-store', '--verify-path', storePath]);
      expect(verify.exitCode, `${storePath}: ${verify.stderr}`).toBe(0);
      const valid = await ferry(['exec', '--', 'nix-store', '--check-validity', storePath]);
      expect(valid.exitCode, `${storePath} is not valid in the guest: ${valid.stderr}`).toBe(0);
    }
    // The guest knows the references too, so its closure equals the host's.
    const guestClosure = await ferry(['exec', '--', 'nix-store', '--query', '--requisites', closure.top]);
    expect(guestClosure.exitCode, guestClosure.stderr).toBe(0);
    expect(guestClosure.stdout.trim().split('\n').sort()).toEqual([...paths].sort());
  });

  it('a path added to the layer comes on a store delta, and the guest knows it and the rest after booting again', async () => {
    const extra = await addTextToStore(`ferry-guest-extra-${process.pid}-${Date.now()}.txt`, 'added later\n');
    await ferry(['down']);
    const config = await readFile(env.FERRY_CONFIG, 'utf8');
    await writeFile(env.FERRY_CONFIG, config.replace(`paths = ["${closure.top}"]`, `paths = ["${closure.top}", "${extra}"]`));
    const up = await ferry(['up', '--json']);
    expect(up.exitCode, up.stderr).toBe(0);
    const manifest = JSON.parse(await readFile(path.join(CACHE, 'images', 'latest.json'), 'utf8')) as { storeDisks: Array<{ path: string; cacheHit: boolean }> };
    expect(manifest.storeDisks.map((disk) => disk.cacheHit)).toEqual([true, false]);
    storeDisks.push(...manifest.storeDisks.map((disk) => disk.path));
    for (const storePath of [extra, ...paths]) {
      const valid = await ferry(['exec', '--', 'nix-store', '--check-validity', storePath]);
      expect(valid.exitCode, `${storePath} is not valid in the guest: ${valid.stderr}`).toBe(0);
    }
    const verify = await ferry(['exec', '--', 'nix-store', '--verify-path', extra]);
    expect(verify.exitCode, verify.stderr).toBe(0);
  });

  it('a path that is not in the image is not valid in the guest (the check can fail)', async () => {
    const missing = '/nix/store/00000000000000000000000000000000-not-here';
    const valid = await ferry(['exec', '--', 'nix-store', '--check-validity', missing]);
    expect(valid.exitCode).not.toBe(0);
  });
});
