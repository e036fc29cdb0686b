/**
 * Debian packages for the `debian` preset, from the guest's suite and architecture (not the
 * host's): apt-get and apt-cache run against a private apt state under the download cache, one
 * per suite and architecture (downloads/apt-<suite>-<arch>: its own sources, lists, cache and an
 * empty dpkg status), so a bookworm host fetches trixie's kernel, an amd64 host arm64's, and the
 * host's apt configuration, lists and dpkg architectures stay as they were. The mirror and key
 * are the host's own (apt-sources.ts).
 *
 * Packages are unpacked (dpkg-deb -x) into the download cache, one directory per package version,
 * written atomically. A new package version (a kernel security update) gets its own directory
 * instead of a stale hit.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { makeStagingDir, publishDirectory, stagingPathIn } from '../../atomic-file.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';
import { FerryError, ExitCode } from '../../errors.js';
import { createExecaRunner, ProcessError, type Runner } from '../../process/runner.js';
import { debianMirror, suiteSources } from './apt-sources.js';
import { runRetrying } from '../../process/retry.js';

export type DebianArch = 'amd64' | 'arm64';

/** What runs apt and dpkg when a caller gives no runner of its own. */
export const hostRunner: Runner = createExecaRunner();

/** One suite and architecture's private apt state. */
export interface AptTarget {
  readonly downloadsDir: string;
  readonly suite: string;
  readonly arch: DebianArch;
  readonly runner: Runner;
}

export function aptTarget(downloadsDir: string, suite: string, arch: DebianArch, runner: Runner = hostRunner): AptTarget {
  return { downloadsDir, suite, arch, runner };
}

export interface PackageInfo {
  name: string;
  arch: DebianArch;
  version: string;
  depends: string;
}

/**
 * The configuration that is the same for every invocation: the host's apt.conf.d is still read
 * (a proxy set there must keep working), then this clears what of it would reach outside the
 * private state — hooks run after `update` (docker-clean removes the host's cache files, appstream
 * refreshes its own) and a Default-Release pin naming the host's suite — and sets the guest's
 * architecture, so apt asks neither dpkg for foreign architectures nor needs `NAME:ARCH`.
 */
function aptConf(arch: DebianArch): string {
  return [
    '#clear APT::Update::Pre-Invoke;',
    '#clear APT::Update::Post-Invoke;',
    '#clear APT::Update::Post-Invoke-Success;',
    '#clear APT::Default-Release;',
    '#clear APT::Architectures;',
    `APT::Architecture "${arch}";`,
    `APT::Architectures { "${arch}"; };`,
    '',
  ].join('\n');
}

/** apt's options for the state in `dir`: paths only by `-o`, so a staging directory can be renamed into place. */
function aptOptions(dir: string): string[] {
  const set = (key: string, value: string) => ['-o', `${key}=${value}`];
  return [
    '-c', join(dir, 'apt.conf'),
    ...set('Dir::State', join(dir, 'state')),
    ...set('Dir::State::status', join(dir, 'status')),
    ...set('Dir::Cache', join(dir, 'cache')),
    ...set('Dir::Etc::SourceList', join(dir, 'sources.list')),
    ...set('Dir::Etc::SourceParts', join(dir, 'sources.list.d')),
    ...set('Dir::Etc::Preferences', join(dir, 'preferences')),
    ...set('Dir::Etc::PreferencesParts', join(dir, 'preferences.d')),
  ];
}

/** The marker written after the first successful `apt-get update`: a state without it is not used. */
const UPDATED = 'updated';

function stateDir(apt: AptTarget): string {
  return join(apt.downloadsDir, DOWNLOAD_FILES.aptState(apt.suite, apt.arch));
}

/** Writes the sources (from the host's current Debian source) and runs `apt-get update` in `dir`. */
async function update(apt: AptTarget, dir: string): Promise<void> {
  for (const sub of ['state/lists/partial', 'cache/archives/partial', 'sources.list.d', 'preferences.d']) await mkdir(join(dir, sub), { recursive: true });
  await writeFile(join(dir, 'apt.conf'), aptConf(apt.arch));
  await writeFile(join(dir, 'status'), '');
  await writeFile(join(dir, 'sources.list'), '');
  await writeFile(join(dir, 'sources.list.d', 'debian.sources'), suiteSources(debianMirror(), apt.suite));
  const args = [...aptOptions(dir), 'update', '-qq'];
  // Another apt holding the lock, a mirror out of reach for a moment: tried again (retry.ts).
  const result = await runRetrying(apt.runner, 'apt-get', args);
  if (result.exitCode !== 0) {
    throw new ProcessError('apt-get', args, result, {
      label: `apt-get update (Debian ${apt.suite} ${apt.arch}, in ${dir})`,
      exitCode: ExitCode.Unavailable,
      hint: `the sources ferry wrote from the host's Debian source: ${join(dir, 'sources.list.d', 'debian.sources')}`,
    });
  }
  await writeFile(join(dir, UPDATED), `${new Date().toISOString()}\n`);
}

/** Per process: the state's first making, and the one `apt-get update` of an existing state. */
const ready = new Map<string, Promise<string>>();
const refreshed = new Map<string, Promise<void>>();

/** The private state's directory, made (and updated once) if it is not there yet. */
function aptState(apt: AptTarget): Promise<string> {
  const dir = stateDir(apt);
  let made = ready.get(dir);
  if (!made) {
    made = (async () => {
      if (existsSync(join(dir, UPDATED))) return dir;
      await mkdir(apt.downloadsDir, { recursive: true });
      // Made beside the cache's other downloads and renamed into place, so an interrupted update
      // never leaves lists that look complete (and the next build removes the staging directory).
      const staging = stagingPathIn(apt.downloadsDir);
      try {
        await update(apt, staging);
        await publishDirectory(staging, dir, join(dir, UPDATED));
        refreshed.set(dir, Promise.resolve()); // just updated: a refresh now would fetch the same lists
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
      return dir;
    })();
    made.catch(() => ready.delete(dir));
    ready.set(dir, made);
  }
  return made;
}

/**
 * `apt-get update` of the private state, once per process (`ferry image build --refresh`, or a
 * package the lists no longer name): new kernel and busybox versions are found only this way.
 */
export async function refreshAptLists(apt: AptTarget): Promise<void> {
  const dir = await aptState(apt);
  let done = refreshed.get(dir);
  if (!done) {
    done = update(apt, dir);
    done.catch(() => refreshed.delete(dir));
    refreshed.set(dir, done);
  }
  return done;
}

async function aptRun(apt: AptTarget, args: readonly string[], cwd?: string) {
  const dir = await aptState(apt);
  // A download cut short, or apt's lock held a moment: tried again (retry.ts).
  return runRetrying(apt.runner, args[0] === 'show' ? 'apt-cache' : 'apt-get', [...aptOptions(dir), ...args], { cwd });
}

/** The candidate version of a package in the target's suite (updating its lists once if it is unknown). */
export async function packageInfo(apt: AptTarget, name: string): Promise<PackageInfo> {
  const show = async () => {
    const result = await aptRun(apt, ['show', '--no-all-versions', name]);
    return result.exitCode === 0 && /^Version:/m.test(result.stdout) ? result.stdout : undefined;
  };
  let text = await show();
  if (text === undefined) {
    await refreshAptLists(apt);
    text = await show();
  }
  if (text === undefined) {
    throw new FerryError(`Debian ${apt.suite} has no package ${name} for ${apt.arch}, even after apt-get update`, { exitCode: ExitCode.Unavailable });
  }
  const field = (key: string) => new RegExp(`^${key}: (.*)$`, 'm').exec(text)?.[1] ?? '';
  return { name, arch: apt.arch, version: field('Version'), depends: field('Depends') };
}

/**
 * `apt-get download NAME=VERSION` into `cwd`; the path of the one .deb it left. Lists that no
 * longer name the version (the mirror moved on) are updated once and the download tried again.
 */
export async function downloadDeb(apt: AptTarget, info: PackageInfo, cwd: string): Promise<string> {
  const spec = `${info.name}=${info.version}`;
  const download = () => aptRun(apt, ['download', '-q', spec], cwd);
  let result = await download();
  if (result.exitCode !== 0) {
    await refreshAptLists(apt);
    result = await download();
  }
  if (result.exitCode !== 0) {
    throw new ProcessError('apt-get', ['download', '-q', spec], result, { label: `apt-get download ${spec} (Debian ${apt.suite} ${apt.arch})`, exitCode: ExitCode.Unavailable });
  }
  const debs = (await readdir(cwd)).filter((f) => f.endsWith('.deb'));
  if (debs.length !== 1) throw new FerryError(`apt-get download ${spec} left ${debs.length} .deb files in ${cwd}`);
  return join(cwd, debs[0]);
}

/** Downloads and unpacks one .deb under `cacheRoot`; a cache hit costs one existsSync. */
export async function unpackedPackage(apt: AptTarget, cacheRoot: string, info: PackageInfo): Promise<string> {
  const dir = join(cacheRoot, `${info.name}_${info.arch}_${info.version.replaceAll(':', '%3a')}`);
  if (existsSync(dir)) return dir;
  await mkdir(cacheRoot, { recursive: true });
  const work = await makeStagingDir(cacheRoot);
  const staging = stagingPathIn(cacheRoot);
  try {
    const deb = await downloadDeb(apt, info, work);
    await apt.runner.check('dpkg-deb', ['-x', deb, staging], { label: `dpkg-deb -x ${deb}` });
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
