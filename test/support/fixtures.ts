/**
 * Test fixtures downloaded from Debian's apt repositories and cached under
 * ~/.cache/ferry-test/<name>/<package>_<version>/, so reruns are offline and fast and a new
 * package version (a kernel security update) gets its own directory instead of a stale hit.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export type DebianArch = 'amd64' | 'arm64';

export interface KernelFixture {
  /** The compressed kernel image for direct boot (bzImage on amd64, vmlinuz on arm64). */
  kernel: string;
  /** /lib/modules/<version> inside the unpacked package. */
  modulesDir: string;
  /** The kernel release, e.g. 6.1.0-57-cloud-amd64. */
  version: string;
  /** The Debian package and version the files came from. */
  package: string;
  packageVersion: string;
}

export function fixtureCacheRoot(): string {
  return process.env.FERRY_TEST_CACHE ?? join(homedir(), '.cache', 'ferry-test');
}

/** Debian's cloud kernel (the linux-image-cloud-<arch> metapackage's current target), unpacked. */
export async function debianKernel(arch: DebianArch = 'amd64'): Promise<KernelFixture> {
  const meta = await packageInfo(`linux-image-cloud-${arch}`, arch);
  const dependency = /^(linux-image-[0-9][^\s,(]*)/.exec(meta.depends)?.[1];
  if (!dependency) throw new Error(`linux-image-cloud-${arch} has no versioned linux-image dependency: ${meta.depends}`);
  const real = await packageInfo(dependency, arch);
  const dir = await unpackedPackage('kernel', real);
  const version = dependency.replace(/^linux-image-/, '');
  const kernel = join(dir, 'boot', `vmlinuz-${version}`);
  const modulesDir = join(dir, 'lib', 'modules', version);
  for (const path of [kernel, modulesDir]) {
    if (!existsSync(path)) throw new Error(`${real.name} ${real.version} unpacked to ${dir} has no ${path}`);
  }
  return { kernel, modulesDir, version, package: real.name, packageVersion: real.version };
}

/** Debian's statically linked busybox; returns the path of the binary. */
export async function busyboxStatic(arch: DebianArch = 'amd64'): Promise<string> {
  const info = await packageInfo('busybox-static', arch);
  const dir = await unpackedPackage('busybox-static', info);
  const binary = join(dir, 'bin', 'busybox');
  if (!existsSync(binary)) throw new Error(`${info.name} ${info.version} unpacked to ${dir} has no bin/busybox`);
  return binary;
}

interface PackageInfo {
  name: string;
  arch: DebianArch;
  version: string;
  depends: string;
}

/** The candidate version of a package, from the local apt lists (updating them once if needed). */
async function packageInfo(name: string, arch: DebianArch): Promise<PackageInfo> {
  const spec = await archSpec(name, arch);
  const show = async () => {
    const result = await execa('apt-cache', ['show', '--no-all-versions', spec], { reject: false });
    return result.exitCode === 0 && /^Version:/m.test(result.stdout) ? result.stdout : undefined;
  };
  let text = await show();
  if (text === undefined) {
    await aptUpdateOnce();
    text = await show();
  }
  if (text === undefined) throw new Error(`apt knows no package ${spec}, even after apt-get update`);
  const field = (key: string) => new RegExp(`^${key}: (.*)$`, 'm').exec(text!)?.[1] ?? '';
  return { name, arch, version: field('Version'), depends: field('Depends') };
}

let foreignArchAdded = false;
async function archSpec(name: string, arch: DebianArch): Promise<string> {
  const native = (await execa('dpkg', ['--print-architecture'])).stdout.trim();
  if (arch === native) return name;
  if (!foreignArchAdded) {
    const foreign = (await execa('dpkg', ['--print-foreign-architectures'])).stdout.split('\n');
    if (!foreign.includes(arch)) {
      await execa('dpkg', ['--add-architecture', arch]);
      await aptUpdateOnce(true);
    }
    foreignArchAdded = true;
  }
  return `${name}:${arch}`;
}

let updated: Promise<void> | undefined;
function aptUpdateOnce(force = false): Promise<void> {
  if (!updated || force) updated = execa('apt-get', ['update', '-qq']).then(() => undefined);
  return updated;
}

/** Downloads and unpacks one .deb into the cache, atomically; a cache hit costs one existsSync. */
async function unpackedPackage(cacheName: string, info: PackageInfo): Promise<string> {
  const root = join(fixtureCacheRoot(), cacheName);
  const dir = join(root, `${info.name}_${info.arch}_${info.version.replaceAll(':', '%3a')}`);
  if (existsSync(dir)) return dir;

  await mkdir(root, { recursive: true });
  const work = await mkdtemp(join(tmpdir(), 'ferry-fixture-'));
  const staging = join(root, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const spec = `${await archSpec(info.name, info.arch)}=${info.version}`;
    const download = () => execa('apt-get', ['download', '-q', spec], { cwd: work, reject: false });
    let result = await download();
    if (result.exitCode !== 0) {
      await aptUpdateOnce();
      result = await download();
    }
    if (result.exitCode !== 0) throw new Error(`apt-get download ${spec} failed:\n${result.stderr}`);
    const debs = (await readdir(work)).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new Error(`apt-get download ${spec} left ${debs.length} .deb files in ${work}`);
    await execa('dpkg-deb', ['-x', join(work, debs[0]), staging]);
    try {
      await rename(staging, dir);
    } catch (error) {
      // Another test process unpacked the same version first: use theirs.
      if (!existsSync(dir)) throw error;
    }
    return dir;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}
