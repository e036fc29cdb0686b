/**
 * The Debian root filesystem tarball the issue names, made once with mmdebstrap and cached under
 * ~/.cache/ferry-test/rootfs/<hash of the exact argv>/rootfs.tar, so every test that needs a real
 * rootfs (ext4 read-back, guest boot) uses the same bytes and only the first run pays for it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureCacheRoot, type DebianArch } from './fixtures.js';

/** The packages on top of `--variant=essential`: what the guest needs to be a Nix builder. */
export const ROOTFS_PACKAGES = ['openssh-server', 'nix-bin', 'busybox', 'iproute2', 'ca-certificates'] as const;
export const ROOTFS_SUITE = 'bookworm';

export interface RootfsFixture {
  /** The uncompressed tarball mmdebstrap wrote. */
  tar: string;
  /** The mmdebstrap arguments (without the output path) that made it; the cache key hashes these. */
  argv: string[];
}

/** mmdebstrap's arguments for `arch`, without the output path. */
export function rootfsArgv(arch: DebianArch = 'amd64'): string[] {
  return [
    '--variant=essential',
    `--include=${ROOTFS_PACKAGES.join(',')}`,
    `--architectures=${arch}`,
    ROOTFS_SUITE,
  ];
}

/**
 * Returns the cached rootfs tarball, building it first if needed (30-60 s on amd64). The build
 * happens in a staging directory that is renamed into place, so an interrupted build never
 * leaves a half-written tarball where a test would trust it.
 */
export async function debianRootfs(options: { arch?: DebianArch } = {}): Promise<RootfsFixture> {
  const argv = rootfsArgv(options.arch ?? 'amd64');
  const key = createHash('sha256').update(JSON.stringify(['mmdebstrap', ...argv])).digest('hex').slice(0, 16);
  const root = join(fixtureCacheRoot(), 'rootfs');
  const dir = join(root, key);
  const tar = join(dir, 'rootfs.tar');
  if (existsSync(tar)) return { tar, argv };

  await mkdir(root, { recursive: true });
  const staging = join(root, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(staging);
  try {
    const result = await execa('mmdebstrap', ['--quiet', ...argv, join(staging, 'rootfs.tar')], { reject: false, all: true });
    if (result.exitCode !== 0) throw new Error(`mmdebstrap ${argv.join(' ')} failed (exit ${result.exitCode}):\n${result.all}`);
    try {
      await rename(staging, dir);
    } catch (error) {
      // Another test process built the same rootfs first: use theirs.
      if (!existsSync(tar)) throw error;
    }
    return { tar, argv };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
