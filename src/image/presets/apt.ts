/**
 * Debian packages for the `debian` preset, fetched with the host's apt and unpacked (dpkg-deb -x)
 * into the download cache, one directory per package version, written atomically. A new package
 * version (a kernel security update) gets its own directory instead of a stale hit.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { publishDirectory } from '../../atomic-file.js';
import { FerryError, ExitCode } from '../../errors.js';

export type DebianArch = 'amd64' | 'arm64';

export interface PackageInfo {
  name: string;
  arch: DebianArch;
  version: string;
  depends: string;
}

/** The candidate version of a package, from the local apt lists (updating them once if needed). */
export async function packageInfo(name: string, arch: DebianArch): Promise<PackageInfo> {
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
  if (text === undefined) {
    throw new FerryError(`apt knows no package ${spec}, even after apt-get update`, { exitCode: ExitCode.Unavailable });
  }
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

/** Downloads and unpacks one .deb under `cacheRoot`; a cache hit costs one existsSync. */
export async function unpackedPackage(cacheRoot: string, info: PackageInfo): Promise<string> {
  const dir = join(cacheRoot, `${info.name}_${info.arch}_${info.version.replaceAll(':', '%3a')}`);
  if (existsSync(dir)) return dir;
  await mkdir(cacheRoot, { recursive: true });
  const work = await mkdtemp(join(cacheRoot, '.download-'));
  const staging = join(cacheRoot, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const spec = `${await archSpec(info.name, info.arch)}=${info.version}`;
    const download = () => execa('apt-get', ['download', '-q', spec], { cwd: work, reject: false });
    let result = await download();
    if (result.exitCode !== 0) {
      await aptUpdateOnce();
      result = await download();
    }
    if (result.exitCode !== 0) {
      throw new FerryError(`apt-get download ${spec} failed:\n${result.stderr}`, { exitCode: ExitCode.Unavailable });
    }
    const debs = (await readdir(work)).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new FerryError(`apt-get download ${spec} left ${debs.length} .deb files in ${work}`);
    await execa('dpkg-deb', ['-x', join(work, debs[0]), staging]);
    await publishDirectory(staging, dir); // or another process's, if it unpacked the same version first
    return dir;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}
