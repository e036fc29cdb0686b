/**
 * The `debian` base preset (Linux hosts, and the test suite): the root filesystem from
 * mmdebstrap with openssh-server and nix-bin, the kernel from linux-image-cloud-<arch>, busybox
 * from busybox-static, all from one Debian suite (guest.debian-suite: trixie by default, whose Nix
 * is 2.26; bookworm's is 2.8), whatever release the host runs: the packages come through a private
 * apt state for that suite (apt.ts). Everything is fetched once into the download cache.
 */
import { existsSync, readFileSync } from 'node:fs';
import { writeFileAtomicSync } from '../../atomic-file.js';
import { join } from 'node:path';
import { FerryError } from '../../errors.js';
import type { Runner } from '../../process/runner.js';
import type { DebianSuite, GuestConfig } from '../../config/types.js';
import { DEFAULTS } from '../../config/defaults.js';
import { aptTarget, packageInfo, refreshAptLists, unpackedPackage, type AptTarget, type DebianArch } from './apt.js';
import { cachedMmdebstrap } from './mmdebstrap.js';
import { debianArm64RootfsTar, mmdebstrapArm64Argv, qemuX86_64ForArm64 } from './debian-arm64.js';
import type { PresetInputs } from './preset.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';

/** What the guest needs to be a Nix builder, on top of `--variant=essential`. */
export const DEBIAN_PACKAGES = ['openssh-server', 'nix-bin', 'busybox', 'iproute2', 'ca-certificates', 'e2fsprogs'] as const;
/** The suite when the caller names none (config.guest.debianSuite's default). */
export const DEBIAN_SUITE: DebianSuite = DEFAULTS.debianSuite;

export function debianArch(system: string): DebianArch {
  return system.startsWith('aarch64') ? 'arm64' : 'amd64';
}

/** mmdebstrap's arguments: the suite is the last one, so it is part of the rootfs cache's key. */
export function mmdebstrapArgv(arch: DebianArch, suite: DebianSuite = DEBIAN_SUITE): string[] {
  // arm64 on any host: unpacked without maintainer scripts, their work done by a hook (debian-arm64.ts).
  if (arch === 'arm64') return mmdebstrapArm64Argv(suite);
  return ['--variant=essential', `--include=${DEBIAN_PACKAGES.join(',')}`, `--architectures=${arch}`, suite];
}

export async function debianRootfsTar(downloadsDir: string, arch: DebianArch, suite: DebianSuite = DEBIAN_SUITE, runner?: Runner): Promise<string> {
  return cachedMmdebstrap(downloadsDir, mmdebstrapArgv(arch, suite), { runner });
}

/** `dir/usr/PATH` where the package has it: trixie's packages ship merged-/usr paths, bookworm's `dir/PATH`. */
function mergedUsr(dir: string, path: string): string {
  const merged = join(dir, 'usr', path);
  return existsSync(merged) ? merged : join(dir, path);
}

export async function debianKernel(downloadsDir: string, arch: DebianArch, suite: DebianSuite = DEBIAN_SUITE, runner?: Runner) {
  const apt = aptTarget(downloadsDir, suite, arch, runner);
  const meta = await packageInfo(apt, `linux-image-cloud-${arch}`);
  const dependency = /^(linux-image-[0-9][^\s,(]*)/.exec(meta.depends)?.[1];
  if (!dependency) throw new FerryError(`linux-image-cloud-${arch} has no versioned linux-image dependency: ${meta.depends}`);
  const real = await packageInfo(apt, dependency);
  const dir = await unpackedPackage(apt, join(downloadsDir, DOWNLOAD_FILES.kernelDir), real);
  const version = dependency.replace(/^linux-image-/, '');
  const kernel = join(dir, 'boot', `vmlinuz-${version}`);
  const modulesDir = mergedUsr(dir, `lib/modules/${version}`);
  for (const path of [kernel, modulesDir]) {
    if (!existsSync(path)) throw new FerryError(`${real.name} ${real.version} unpacked to ${dir} has no ${path}`);
  }
  return { kernel, modulesDir, version, packageVersion: `${real.name}=${real.version}` };
}

export async function debianBusybox(downloadsDir: string, arch: DebianArch, suite: DebianSuite = DEBIAN_SUITE, runner?: Runner) {
  const apt = aptTarget(downloadsDir, suite, arch, runner);
  const info = await packageInfo(apt, 'busybox-static');
  const dir = await unpackedPackage(apt, join(downloadsDir, DOWNLOAD_FILES.busyboxDir), info);
  const binary = mergedUsr(dir, 'bin/busybox');
  if (!existsSync(binary)) throw new FerryError(`${info.name} ${info.version} unpacked to ${dir} has no bin/busybox or usr/bin/busybox`);
  return { busybox: binary, packageVersion: `${info.name}=${info.version}` };
}

/**
 * The preset's inputs for the guest's system and suite (a bare system string: the default suite).
 * Resolved once (apt lookups take seconds) and remembered in downloads/debian-<suite>-<arch>.json;
 * `refresh` updates the suite's apt lists and looks for newer packages again.
 */
export async function debianPreset(
  downloadsDir: string,
  guest: string | Pick<GuestConfig, 'system' | 'debianSuite'>,
  onStep?: (label: string) => void,
  refresh = false,
  runner?: Runner,
): Promise<PresetInputs> {
  const { system, debianSuite: suite } = typeof guest === 'string' ? { system: guest, debianSuite: DEBIAN_SUITE } : guest;
  const arch = debianArch(system);
  const record = join(downloadsDir, DOWNLOAD_FILES.debianRecord(suite, arch));
  if (!refresh && existsSync(record)) {
    const saved = JSON.parse(readFileSync(record, 'utf8')) as PresetInputs;
    // A changed package list (DEBIAN_PACKAGES) must make a new rootfs, not reuse the recorded one.
    const samePackages = saved.identity.endsWith(`:${mmdebstrapArgv(arch, suite).join(' ')}`);
    if (samePackages && [saved.rootfsTar!, saved.kernel, saved.modulesDir, saved.busybox].every((p) => existsSync(p))) return saved;
  }
  const apt = aptTarget(downloadsDir, suite, arch, runner);
  if (refresh) {
    onStep?.(`updating the apt lists of Debian ${suite} ${arch}`);
    await refreshAptLists(apt);
  }
  const inputs = await resolveDebianPreset(downloadsDir, apt, onStep);
  writeFileAtomicSync(record, JSON.stringify(inputs, null, 2));
  return inputs;
}

async function resolveDebianPreset(downloadsDir: string, apt: AptTarget, onStep?: (label: string) => void): Promise<PresetInputs> {
  const { arch, runner } = apt;
  const suite = apt.suite as DebianSuite;
  onStep?.(`fetching the Debian ${suite} ${arch} kernel`);
  const kernel = await debianKernel(downloadsDir, arch, suite, runner);
  onStep?.(`fetching busybox-static:${arch} (${suite})`);
  const busybox = await debianBusybox(downloadsDir, arch, suite, runner);
  let rootfs: string;
  let extra = '';
  if (arch === 'arm64') {
    onStep?.(`fetching a static qemu-x86_64 for arm64 (${suite})`);
    const qemu = await qemuX86_64ForArm64(apt);
    onStep?.(`making the Debian ${suite} ${arch} root filesystem (mmdebstrap --variant=extract)`);
    rootfs = await debianArm64RootfsTar(downloadsDir, suite, qemu, runner);
    extra = `:${qemu.packageVersion}`;
  } else {
    onStep?.(`making the Debian ${suite} ${arch} root filesystem (mmdebstrap)`);
    rootfs = await debianRootfsTar(downloadsDir, arch, suite, runner);
  }
  return {
    name: 'debian',
    rootfsTar: rootfs,
    kernel: kernel.kernel,
    modulesDir: kernel.modulesDir,
    kernelVersion: kernel.version,
    busybox: busybox.busybox,
    identity: `debian:${suite}:${arch}:${kernel.packageVersion}:${busybox.packageVersion}${extra}:${mmdebstrapArgv(arch, suite).join(' ')}`,
  };
}
