/**
 * The real thing: the Debian rootfs tarball that mmdebstrap makes (the fixture the guest boots
 * too) through `ferry image mkfs`, as a plain tarball, as a zstd tarball and as an extracted
 * directory. Each image must pass `e2fsck -fn`, and debugfs must read back every entry of the
 * source — content, mode, owner, link count, symlink target, device numbers, mtime.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareManifests, e2fsck, manifestFromDir, manifestFromTar, readImage, type Manifest } from '../support/ext4-readback.js';
import { debianRootfs } from '../support/rootfs.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const ferryBin = join(repo, 'bin', 'ferry');
const isRoot = process.getuid?.() === 0;

let work: string;
let rootfsTar: string;
let tarManifest: Manifest;

beforeAll(async () => {
  await execa('npx', ['tsc', '-p', '.'], { cwd: repo });
  rootfsTar = (await debianRootfs()).tar;
  work = mkdtempSync(join(tmpdir(), 'ferry-ext4-rootfs-'));
  tarManifest = await manifestFromTar(rootfsTar);
}, 600_000);
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

async function mkfs(source: string, name: string): Promise<{ image: string; ms: number }> {
  const image = join(work, name);
  const started = performance.now();
  const result = await execa(ferryBin, ['image', 'mkfs', source, '-o', image, '--json'], { reject: false });
  const ms = Math.round(performance.now() - started);
  expect(result.exitCode, result.stderr).toBe(0);
  const fsck = await e2fsck(image);
  expect(fsck.output).not.toMatch(/\bFix\?|Clear\?|Salvage\?|Relocate\?|in the future/);
  expect(fsck.exitCode, fsck.output).toBe(0);
  return { image, ms };
}

describe('the Debian rootfs through ferry image mkfs', () => {
  it('the fixture is a real rootfs: owners, setuid files, hard links, devices, long symlinks', () => {
    const entries = [...tarManifest.entries()];
    expect(entries.length).toBeGreaterThan(5000);
    expect(tarManifest.get('/usr/sbin/sshd')?.kind).toBe('file');
    expect(tarManifest.get('/usr/bin/nix-store')).toBeDefined();
    expect(entries.some(([, e]) => e.gid !== 0), 'a file not owned by group root').toBe(true);
    expect(entries.some(([, e]) => e.kind === 'file' && (e.perm & 0o4000) !== 0), 'a setuid file').toBe(true);
    expect(entries.some(([, e]) => e.kind === 'file' && e.links > 1), 'a hard-linked file').toBe(true);
    expect(entries.some(([, e]) => e.kind === 'chardev'), 'a device node').toBe(true);
    expect(entries.some(([, e]) => e.kind === 'symlink' && Buffer.byteLength(e.target!) >= 60), 'a slow symlink').toBe(true);
  });

  it('the tarball: e2fsck clean, every entry read back equal', async () => {
    const { image, ms } = await mkfs(rootfsTar, 'rootfs-tar.ext4');
    const started = performance.now();
    const problems = compareManifests(tarManifest, await readImage(image));
    console.log(`rootfs.tar: mkfs ${ms} ms, read-back ${Math.round(performance.now() - started)} ms, ${tarManifest.size} entries`);
    expect(problems).toEqual([]);
  });

  it('the same tarball compressed with zstd gives the same tree', async () => {
    const zst = join(work, 'rootfs.tar.zst');
    execFileSync('zstd', ['-q', '-1', '-T2', rootfsTar, '-o', zst]);
    const { image } = await mkfs(zst, 'rootfs-zst.ext4');
    expect(compareManifests(tarManifest, await readImage(image))).toEqual([]);
  });

  it.skipIf(!isRoot)('a directory extracted from it (owners become 0:0): e2fsck clean, read back equal', async () => {
    const dir = join(work, 'extracted');
    mkdirSync(dir);
    // As root, tar restores owners, modes, device nodes and hard links exactly.
    execFileSync('tar', ['-xf', rootfsTar, '-C', dir, '--numeric-owner', '--same-permissions']);
    const { image, ms } = await mkfs(dir, 'rootfs-dir.ext4');
    const expected = await manifestFromDir(dir);
    expect(expected.size).toBe(tarManifest.size);
    const started = performance.now();
    const problems = compareManifests(expected, await readImage(image));
    console.log(`extracted dir: mkfs ${ms} ms, read-back ${Math.round(performance.now() - started)} ms`);
    expect(problems).toEqual([]);
  });
});
