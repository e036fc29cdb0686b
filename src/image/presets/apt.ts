/**
 * Debian packages for the `debian` preset, fetched with the host's apt and unpacked (dpkg-deb -x)
 * into the download cache, one directory per package version, written atomically. A new package
 * version (a kernel security update) gets its own directory instead of a stale hit.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { publishDirectory } from '../../atomic-file.js';
import { FerryError, ExitCode } from '../../errors.js';
import { createExecaRunner, ProcessError, type Runner } from '../../process/runner.js';

export type DebianArch = 'amd64' | 'arm64';

/** What runs apt and dpkg when a caller gives no runner of its own. */
export const hostRunner: Runner = createExecaRunner();

export interface PackageInfo {
  name: string;
  arch: DebianArch;
  version: string;
  depends: string;
}

/** The candidate version of a package, from the local apt lists (updating them once if needed). */
export async function packageInfo(name: string, arch: DebianArch, runner: Runner = hostRunner): Promise<PackageInfo> {
  const spec = await archSpec(name, arch, runner);
  const show = async () => {
    const result = await runner.run('apt-cache', ['show', '--no-all-versions', spec]);
    return result.exitCode === 0 && /^Version:/m.test(result.stdout) ? result.stdout : undefined;
  };
  let text = await show();
  if (text === undefined) {
    await aptUpdateOnce(runner);
    text = await show();
  }
  if (text === undefined) {
    throw new FerryError(`apt knows no package ${spec}, even after apt-get update`, { exitCode: ExitCode.Unavailable });
  }
  const field = (key: string) => new RegExp(`^${key}: (.*)$`, 'm').exec(text!)?.[1] ?? '';
  return { name, arch, version: field('Version'), depends: field('Depends') };
}

let foreignArchAdded = false;
async function archSpec(name: string, arch: DebianArch, runner: Runner): Promise<string> {
  const native = (await runner.check('dpkg', ['--print-architecture'])).stdout.trim();
  if (arch === native) return name;
  if (!foreignArchAdded) {
    const foreign = (await runner.check('dpkg', ['--print-foreign-architectures'])).stdout.split('\n');
    if (!foreign.includes(arch)) {
      await runner.check('dpkg', ['--add-architecture', arch], { label: `dpkg --add-architecture ${arch}` });
      await aptUpdateOnce(runner, true);
    }
    foreignArchAdded = true;
  }
  return `${name}:${arch}`;
}

let updated: Promise<void> | undefined;
function aptUpdateOnce(runner: Runner, force = false): Promise<void> {
  if (!updated || force) updated = runner.check('apt-get', ['update', '-qq'], { label: 'apt-get update', exitCode: ExitCode.Unavailable }).then(() => undefined);
  return updated;
}

/** Downloads and unpacks one .deb under `cacheRoot`; a cache hit costs one existsSync. */
export async function unpackedPackage(cacheRoot: string, info: PackageInfo, runner: Runner = hostRunner): Promise<string> {
  const dir = join(cacheRoot, `${info.name}_${info.arch}_${info.version.replaceAll(':', '%3a')}`);
  if (existsSync(dir)) return dir;
  await mkdir(cacheRoot, { recursive: true });
  const work = await mkdtemp(join(cacheRoot, '.download-'));
  const staging = join(cacheRoot, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const spec = `${await archSpec(info.name, info.arch, runner)}=${info.version}`;
    const download = () => runner.run('apt-get', ['download', '-q', spec], { cwd: work });
    let result = await download();
    if (result.exitCode !== 0) {
      await aptUpdateOnce(runner);
      result = await download();
    }
    if (result.exitCode !== 0) {
      throw new ProcessError('apt-get', ['download', '-q', spec], result, { label: `apt-get download ${spec}`, exitCode: ExitCode.Unavailable });
    }
    const debs = (await readdir(work)).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new FerryError(`apt-get download ${spec} left ${debs.length} .deb files in ${work}`);
    await runner.check('dpkg-deb', ['-x', join(work, debs[0]), staging], { label: `dpkg-deb -x ${debs[0]}` });
    await publishDirectory(staging, dir); // or another process's, if it unpacked the same version first
    return dir;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * One file of a .deb (`./usr/bin/…`) into `dir`, without unpacking the rest:
 * `dpkg-deb --fsys-tarfile DEB | tar -x -C DIR MEMBER`, the two commands piped by ferry (no shell).
 */
export async function extractDebMember(deb: string, dir: string, member: string, runner: Runner = hostRunner): Promise<void> {
  const pipe = new PassThrough();
  const fsys = ['--fsys-tarfile', deb];
  const untar = ['-x', '-C', dir, member];
  const [listed, extracted] = await Promise.all([runner.run('dpkg-deb', fsys, { stdout: pipe }), runner.run('tar', untar, { input: pipe })]);
  // tar first: when it stops early, dpkg-deb's broken pipe is only a consequence.
  if (extracted.exitCode !== 0) throw new ProcessError('tar', untar, extracted, { label: `tar -x ${member}` });
  if (listed.exitCode !== 0) throw new ProcessError('dpkg-deb', fsys, listed, { label: 'dpkg-deb --fsys-tarfile' });
}
