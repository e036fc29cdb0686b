/**
 * The `debian` base preset (Linux hosts, and the test suite): the root filesystem from
 * mmdebstrap with openssh-server and nix-bin, the kernel from linux-image-cloud-<arch>, busybox
 * from busybox-static. Everything is fetched once into the download cache.
 */
import { existsSync, readFileSync } from 'node:fs';
import { writeFileAtomicSync } from '../../atomic-file.js';
import { join } from 'node:path';
import { FerryError } from '../../errors.js';
import type { Runner } from '../../process/runner.js';
import { packageInfo, unpackedPackage, type DebianArch } from './apt.js';
import { cachedMmdebstrap } from './mmdebstrap.js';
import { debianArm64RootfsTar, mmdebstrapArm64Argv, qemuX86_64ForArm64 } from './debian-arm64.js';
import type { PresetInputs } from './preset.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';

/** What the guest needs to be a Nix builder, on top of `--variant=essential`. */
export const DEBIAN_PACKAGES = ['openssh-server', 'nix-bin', 'busybox', 'iproute2', 'ca-certificates', 'e2fsprogs'] as const;
export const DEBIAN_SUITE = 'bookworm';

export function debianArch(system: string): DebianArch {
  return system.startsWith('aarch64') ? 'arm64' : 'amd64';
}

export function mmdebstrapArgv(arch: DebianArch): string[] {
  // arm64 on any host: unpacked without maintainer scripts, their work done by a hook (debian-arm64.ts).
  if (arch === 'arm64') return mmdebstrapArm64Argv(DEBIAN_SUITE);
  return ['--variant=essential', `--include=${DEBIAN_PACKAGES.join(',')}`, `--architectures=${arch}`, DEBIAN_SUITE];
}

export async function debianRootfsTar(downloadsDir: string, arch: DebianArch, runner?: Runner): Promise<string> {
  return cachedMmdebstrap(downloadsDir, mmdebstrapArgv(arch), { runner });
}

export async function debianKernel(downloadsDir: string, arch: DebianArch, runner?: Runner) {
  const meta = await packageInfo(`linux-image-cloud-${arch}`, arch, runner);
  const dependency = /^(linux-image-[0-9][^\s,(]*)/.exec(meta.depends)?.[1];
  if (!dependency) throw new FerryError(`linux-image-cloud-${arch} has no versioned linux-image dependency: ${meta.depends}`);
  const real = await packageInfo(dependency, arch, runner);
  const dir = await unpackedPackage(join(downloadsDir, DOWNLOAD_FILES.kernelDir), real, runner);
  const version = dependency.replace(/^linux-image-/, '');
  const kernel = join(dir, 'boot', `vmlinuz-${version}`);
  const modulesDir = join(dir, 'lib', 'modules', version);
  for (const path of [kernel, modulesDir]) {
    if (!existsSync(path)) throw new FerryError(`${real.name} ${real.version} unpacked to ${dir} has no ${path}`);
  }
  return { kernel, modulesDir, version, packageVersion: `${real.name}=${real.version}` };
}

export async function debianBusybox(downloadsDir: string, arch: DebianArch, runner?: Runner) {
  const info = await packageInfo('busybox-static', arch, runner);
  const dir = await unpackedPackage(join(downloadsDir, DOWNLOAD_FILES.busyboxDir), info, runner);
  const binary = join(dir, 'bin', 'busybox');
  if (!existsSync(binary)) throw new FerryError(`${info.name} ${info.version} unpacked to ${dir} has no bin/busybox`);
  return { busybox: binary, packageVersion: `${info.name}=${info.version}` };
}

/**
 * The preset's inputs. Resolved once (apt lookups take seconds) and remembered in
 * downloads/debian-<arch>.json; `refresh` looks for newer packages again.
 */
export async function debianPreset(
  downloadsDir: string,
  system: string,
  onStep?: (label: string) => void,
  refresh = false,
  runner?: Runner,
): Promise<PresetInputs> {
  const arch = debianArch(system);
  const record = join(downloadsDir, DOWNLOAD_FILES.debianRecord(arch));
  if (!refresh && existsSync(record)) {
    const saved = JSON.parse(readFileSync(record, 'utf8')) as PresetInputs;
    // A changed package list (DEBIAN_PACKAGES) must make a new rootfs, not reuse the recorded one.
    const samePackages = saved.identity.endsWith(`:${mmdebstrapArgv(arch).join(' ')}`);
    if (samePackages && [saved.rootfsTar!, saved.kernel, saved.modulesDir, saved.busybox].every((p) => existsSync(p))) return saved;
  }
  const inputs = await resolveDebianPreset(downloadsDir, arch, onStep, runner);
  writeFileAtomicSync(record, JSON.stringify(inputs, null, 2));
  return inputs;
}

async function resolveDebianPreset(downloadsDir: string, arch: DebianArch, onStep?: (label: string) => void, runner?: Runner): Promise<PresetInputs> {
  onStep?.(`fetching the Debian ${arch} kernel`);
  const kernel = await debianKernel(downloadsDir, arch, runner);
  onStep?.(`fetching busybox-static:${arch}`);
  const busybox = await debianBusybox(downloadsDir, arch, runner);
  let rootfs: string;
  let extra = '';
  if (arch === 'arm64') {
    onStep?.('fetching qemu-x86_64-static from qemu-user-static:arm64');
    const qemu = await qemuX86_64ForArm64(downloadsDir, runner);
    onStep?.(`making the Debian ${DEBIAN_SUITE} ${arch} root filesystem (mmdebstrap --variant=extract)`);
    rootfs = await debianArm64RootfsTar(downloadsDir, DEBIAN_SUITE, qemu, runner);
    extra = `:${qemu.packageVersion}`;
  } else {
    onStep?.(`making the Debian ${DEBIAN_SUITE} ${arch} root filesystem (mmdebstrap)`);
    rootfs = await debianRootfsTar(downloadsDir, arch, runner);
  }
  return {
    name: 'debian',
    rootfsTar: rootfs,
    kernel: kernel.kernel,
    modulesDir: kernel.modulesDir,
    kernelVersion: kernel.version,
    busybox: busybox.busybox,
    identity: `debian:${DEBIAN_SUITE}:${arch}:${kernel.packageVersion}:${busybox.packageVersion}${extra}:${mmdebstrapArgv(arch).join(' ')}`,
  };
}
