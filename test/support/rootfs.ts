/**
 * The Debian root filesystem tarball the issue names, made once with mmdebstrap and cached under
 * ~/.cache/ferry-test/rootfs/<hash of the exact argv>/rootfs.tar, so every test that needs a real
 * rootfs (ext4 read-back, guest boot) uses the same bytes and only the first run pays for it.
 */
import { cachedMmdebstrap } from '../../src/image/presets/mmdebstrap.js';
import { FIXTURE_SUITE, fixtureCacheRoot, type DebianArch } from './fixtures.js';

/** The packages on top of `--variant=essential`: what the guest needs to be a Nix builder. */
export const ROOTFS_PACKAGES = ['openssh-server', 'nix-bin', 'busybox', 'iproute2', 'ca-certificates'] as const;
export const ROOTFS_SUITE = FIXTURE_SUITE;

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
 * Returns the cached rootfs tarball, building it first if needed (30-60 s on amd64), through the
 * debian preset's own cache (`cachedMmdebstrap`: built in a staging directory renamed into place,
 * so an interrupted build never leaves a half-written tarball where a test would trust it).
 */
export async function debianRootfs(options: { arch?: DebianArch } = {}): Promise<RootfsFixture> {
  const argv = rootfsArgv(options.arch ?? 'amd64');
  return { tar: await cachedMmdebstrap(fixtureCacheRoot(), argv), argv };
}
