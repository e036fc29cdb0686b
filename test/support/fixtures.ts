/**
 * Test fixtures downloaded from Debian's apt repositories: the same code the `debian` preset
 * runs (src/image/presets), with the cache under ~/.cache/ferry-test/<name>/<package>_<version>/,
 * so reruns are offline and fast and a new package version gets its own directory.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { DebianSuite } from '../../src/config/types.js';
import type { DebianArch } from '../../src/image/presets/apt.js';
import { debianBusybox, debianKernel as presetKernel } from '../../src/image/presets/debian.js';

export type { DebianArch } from '../../src/image/presets/apt.js';

export interface KernelFixture {
  /** The compressed kernel image for direct boot (bzImage on amd64, Image on arm64). */
  kernel: string;
  /** /lib/modules/<version> inside the unpacked package. */
  modulesDir: string;
  /** The kernel release, e.g. 6.1.0-57-cloud-amd64. */
  version: string;
  /** The Debian package and version the files came from. */
  package: string;
  packageVersion: string;
}

/**
 * The suite of the kernel, busybox and rootfs (rootfs.ts) fixtures: one release, so the boot tests
 * run one release's kernel with its own userland, whatever the debian preset's default is.
 */
export const FIXTURE_SUITE: DebianSuite = 'bookworm';

export function fixtureCacheRoot(): string {
  return process.env.FERRY_TEST_CACHE ?? join(homedir(), '.cache', 'ferry-test');
}

/** Debian's cloud kernel (the linux-image-cloud-<arch> metapackage's current target), unpacked. */
export async function debianKernel(arch: DebianArch = 'amd64'): Promise<KernelFixture> {
  const kernel = await presetKernel(fixtureCacheRoot(), arch, FIXTURE_SUITE);
  const [name, version] = kernel.packageVersion.split('=');
  return { kernel: kernel.kernel, modulesDir: kernel.modulesDir, version: kernel.version, package: name, packageVersion: version };
}

/** Debian's statically linked busybox; returns the path of the binary. */
export async function busyboxStatic(arch: DebianArch = 'amd64'): Promise<string> {
  return (await debianBusybox(fixtureCacheRoot(), arch, FIXTURE_SUITE)).busybox;
}
