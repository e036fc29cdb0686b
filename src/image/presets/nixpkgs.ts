/**
 * The `nixpkgs` base preset (the macOS default): the guest's kernel, busybox, OpenSSH, Nix,
 * cacert and e2fsprogs for `<arch>-linux`, all substituted from the binary cache by the host's
 * own Nix. Nothing is built anywhere: the host may be a Mac with no Linux builder yet (ferry is
 * about to become that builder), so every path must already be in the cache.
 *
 * Resolution is one command (argv array, never a shell):
 *
 *   nix --extra-experimental-features 'nix-command flakes' build --max-jobs 0 --builders ''
 *       --no-link --print-out-paths FLAKE#legacyPackages.SYSTEM.linux^out …
 *
 *   - `--max-jobs 0` forbids local builds, so a path missing from the cache is an error instead
 *     of an hour-long (or, on a Mac, impossible) build.
 *   - `--builders ''` forbids remote builds too. On a Mac with ferry installed, /etc/nix/machines
 *     names ferry's own guest as the Linux builder: without this, a missing substitute would be
 *     sent to the very guest whose image is being built.
 *   - Each attribute names its output (`^out`, `^bin`), so Nix prints exactly one path per
 *     attribute, in order; each path is then checked for the file ferry needs from it.
 *   - FLAKE is `nixpkgs` from the flake registry, or `FERRY_NIXPKGS` (any flake reference, e.g.
 *     `github:NixOS/nixpkgs/nixos-24.11` or a path) to pin it.
 *
 * The packages, and why each one:
 *   linux              the kernel: `bzImage` (x86_64) / the uncompressed `Image` (aarch64, what
 *                      vfkit needs) and its modules in lib/modules/<version> (NixOS ships them as
 *                      .ko.xz; initramfs/modules.ts reads those). Used on the host only: it is
 *                      not put into the system disk.
 *   pkgsStatic.busybox one static binary for the initramfs (stage 1 needs no libraries), and every
 *                      shell utility stage 2 calls, `ip`, `udhcpc` and `init` included — so no
 *                      coreutils or iproute2 closure in the image.
 *   openssh            sshd (the guest's SSH endpoint) and ssh-keygen.
 *   nix                nix-daemon, nix-store (stage 2 loads the registration with it) and friends.
 *   cacert             /etc/ssl/certs/ca-certificates.crt, for substitution inside the guest.
 *   e2fsprogs (^bin)   resize2fs: stage 2 grows the state disk online when its size grows.
 *
 * The image: a NixLayer of every path but the kernel (closure + registration, loaded once at
 * boot by stage 2), then NixpkgsRootLayer — the root skeleton that makes the store paths look
 * like the filesystem stage 1 and stage 2 expect (/bin/busybox, /bin/sh and the applets,
 * /usr/sbin/sshd, /usr/bin/nix-daemon, /etc/passwd with root and sshd, /var/empty, …).
 *
 * What was verified where. On the Linux machine that wrote this (no route to cache.nixos.org,
 * no nixpkgs checkout): the `nix build` argv for both systems, the error for a missing
 * substitute (fed a Nix error of the real shape), the cache record, and the whole image made from
 * REAL local store paths standing in for the nixpkgs ones (Debian's static busybox, small
 * stand-in sshd/nix-daemon scripts) — written with the ext4 writer, `e2fsck -fn` clean, and every
 * command stage 1 and stage 2 run found and executed through the image's own symlinks in a
 * chroot; and `buildImage` with preset "nixpkgs" going through. Only on a Mac with Nix and the
 * cache: that the attributes are all substitutable for both systems (pkgsStatic.busybox is the
 * one most likely to be missing for some nixpkgs revision; the error then names it), and that
 * the resulting guest boots.
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ExitCode, FerryError } from '../../errors.js';
import { execaRunner, NixLayer, type CommandRunner } from '../layers/nix.js';
import type { Layer } from '../layers/layer.js';
import type { InodeInit, Tree } from '../tree.js';
import type { PresetInputs } from './preset.js';
import { writeFileAtomicSync } from '../../atomic-file.js';

/** The nixpkgs attribute (below legacyPackages.<system>) and output for each input. */
export const NIXPKGS_ATTRIBUTES = {
  kernel: { attribute: 'linux', output: 'out' },
  busybox: { attribute: 'pkgsStatic.busybox', output: 'out' },
  openssh: { attribute: 'openssh', output: 'out' },
  nix: { attribute: 'nix', output: 'out' },
  cacert: { attribute: 'cacert', output: 'out' },
  e2fsprogs: { attribute: 'e2fsprogs', output: 'bin' },
} as const;

export type NixpkgsInput = keyof typeof NIXPKGS_ATTRIBUTES;
/** The resolved store path of each input. */
export type NixpkgsPaths = Record<NixpkgsInput, string>;
const INPUTS = Object.keys(NIXPKGS_ATTRIBUTES) as NixpkgsInput[];

/** The flake that provides nixpkgs: `FERRY_NIXPKGS`, else `nixpkgs` from the flake registry. */
export function nixpkgsFlake(env: NodeJS.ProcessEnv = process.env): string {
  return env.FERRY_NIXPKGS?.trim() || 'nixpkgs';
}

export function nixpkgsInstallable(flake: string, system: string, input: NixpkgsInput): string {
  const { attribute, output } = NIXPKGS_ATTRIBUTES[input];
  return `${flake}#legacyPackages.${system}.${attribute}^${output}`;
}

const NIX_OPTIONS = ['--extra-experimental-features', 'nix-command flakes'];

/** The arguments of the one `nix build` that resolves every input (after the program name). */
export function nixBuildArgv(flake: string, system: string): string[] {
  return [
    ...NIX_OPTIONS,
    'build',
    '--max-jobs', '0',
    '--builders', '',
    '--no-link',
    '--print-out-paths',
    ...INPUTS.map((input) => nixpkgsInstallable(flake, system, input)),
  ];
}

/** The same for one input, without building or fetching: what would Nix have to build? */
export function nixDryRunArgv(flake: string, system: string, input: NixpkgsInput): string[] {
  return [...NIX_OPTIONS, 'build', '--dry-run', '--max-jobs', '0', '--builders', '', '--no-link', nixpkgsInstallable(flake, system, input)];
}

/** Where Nix is commonly installed, for hosts whose PATH lacks it (launchd agents, for one). */
const NIX_CANDIDATES = ['nix', '/nix/var/nix/profiles/default/bin/nix', '/run/current-system/sw/bin/nix'];

export interface NixpkgsResolveOptions {
  flake?: string;
  runner?: CommandRunner;
  /** The `nix` program; default: `nix` on PATH, then the usual install locations. */
  nixBin?: string;
}

/** Nix says this when `--max-jobs 0` (and no builders) meets a derivation it must build. */
const CANNOT_BUILD = /unable to start any build/i;

/**
 * Runs the `nix build` and returns one store path per input. A missing substitute becomes a
 * FerryError naming the attribute(s) Nix would have had to build (found with one `--dry-run`
 * per attribute, only on that failure path) and saying that ferry builds nothing on the host.
 */
export async function resolveNixpkgsPaths(system: string, options: NixpkgsResolveOptions = {}): Promise<NixpkgsPaths> {
  const flake = options.flake ?? nixpkgsFlake();
  const runner = options.runner ?? execaRunner;
  const { bin, result } = await runNix(runner, options.nixBin, nixBuildArgv(flake, system));
  if (result.exitCode !== 0) {
    const stderr = result.stderr.trim() || '(no output on stderr)';
    if (CANNOT_BUILD.test(stderr)) {
      const missing = await attributesNeedingBuilds(runner, bin, flake, system);
      throw new FerryError(
        `the nixpkgs preset needs ${describeMissing(missing, flake, system)} from the binary cache, but ${missing.length === 1 ? 'it is' : 'they are'} not substitutable: ` +
          `Nix would have to build ${missing.length === 1 ? 'it' : 'them'}, and ferry builds nothing on the host (nix build --max-jobs 0 --builders '').\n` +
          `nix said: ${stderr}`,
        {
          exitCode: ExitCode.Unavailable,
          hint:
            'pin a nixpkgs whose binaries are in the cache with FERRY_NIXPKGS (e.g. FERRY_NIXPKGS=github:NixOS/nixpkgs/nixos-unstable), ' +
            'check that cache.nixos.org is among the host\'s substituters and reachable, or use preset = "debian" under [guest]',
        },
      );
    }
    throw new FerryError(`nix build of the nixpkgs preset for ${system} failed (exit code ${result.exitCode}): ${stderr}`, {
      hint: `the command was: ${bin} ${nixBuildArgv(flake, system).map(shellWord).join(' ')}`,
    });
  }
  const lines = result.stdout.split('\n').map((line) => line.trim()).filter(Boolean);
  if (lines.length !== INPUTS.length || !lines.every((line) => /^\/nix\/store\/[^/]+$/.test(line))) {
    throw new FerryError(
      `nix build printed ${JSON.stringify(result.stdout.trim())}; expected ${INPUTS.length} store paths, one per attribute ` +
        `(${INPUTS.map((input) => NIXPKGS_ATTRIBUTES[input].attribute).join(', ')})`,
    );
  }
  const paths = Object.fromEntries(INPUTS.map((input, i) => [input, lines[i]])) as NixpkgsPaths;
  checkPaths(paths, system);
  return paths;
}

async function attributesNeedingBuilds(runner: CommandRunner, bin: string, flake: string, system: string): Promise<NixpkgsInput[]> {
  const missing: NixpkgsInput[] = [];
  for (const input of INPUTS) {
    const result = await runner(bin, nixDryRunArgv(flake, system, input));
    // `--dry-run` lists "will be built" derivations on stderr (and exits 0); fetches are fine.
    if (result.exitCode !== 0 || /will be built/i.test(result.stderr)) missing.push(input);
  }
  return missing;
}

function describeMissing(missing: NixpkgsInput[], flake: string, system: string): string {
  if (missing.length === 0) return `one of ${INPUTS.map((input) => nixpkgsInstallable(flake, system, input)).join(', ')}`;
  return missing.map((input) => nixpkgsInstallable(flake, system, input)).join(', ');
}

async function runNix(runner: CommandRunner, explicit: string | undefined, args: string[]) {
  const candidates = explicit ? [explicit] : NIX_CANDIDATES;
  for (const bin of candidates) {
    try {
      return { bin, result: await runner(bin, args) };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EACCES') throw error;
    }
  }
  throw new FerryError(`the nixpkgs preset needs the host's nix, and none was found (tried ${candidates.join(', ')})`, {
    exitCode: ExitCode.Unavailable,
    hint: 'install Nix (https://nixos.org/download), or use preset = "debian" under [guest]',
  });
}

/** The kernel image file name nixpkgs installs for each system. */
export function kernelFileName(system: string): string {
  return system.startsWith('aarch64') ? 'Image' : 'bzImage';
}

/** What must be in each store path; checked before anything is cached or built. */
function requiredFiles(paths: NixpkgsPaths, system: string): Array<[NixpkgsInput, string]> {
  return [
    ['kernel', join(paths.kernel, kernelFileName(system))],
    ['kernel', join(paths.kernel, 'lib', 'modules')],
    ['busybox', join(paths.busybox, 'bin', 'busybox')],
    ['openssh', join(paths.openssh, 'bin', 'sshd')],
    ['nix', join(paths.nix, 'bin', 'nix-daemon')],
    ['nix', join(paths.nix, 'bin', 'nix-store')],
    ['cacert', join(paths.cacert, CA_BUNDLE)],
    ['e2fsprogs', join(paths.e2fsprogs, 'bin', 'resize2fs')],
  ];
}

const CA_BUNDLE = 'etc/ssl/certs/ca-bundle.crt';

function checkPaths(paths: NixpkgsPaths, system: string): void {
  for (const [input, file] of requiredFiles(paths, system)) {
    if (!existsSync(file)) {
      throw new FerryError(`${NIXPKGS_ATTRIBUTES[input].attribute} for ${system} resolved to ${paths[input]}, which has no ${file.slice(paths[input].length + 1)}`, {
        hint: 'the nixpkgs revision lays this package out differently from what ferry expects; pin another one with FERRY_NIXPKGS',
      });
    }
  }
}

/** The kernel's single lib/modules/<version> directory. */
export function kernelModules(kernelPath: string): { modulesDir: string; version: string } {
  const base = join(kernelPath, 'lib', 'modules');
  const versions = readdirSync(base).filter((name) => lstatSync(join(base, name)).isDirectory());
  if (versions.length !== 1) {
    throw new FerryError(`expected exactly one kernel version directory in ${base}, found ${versions.length === 0 ? 'none' : versions.join(', ')}`);
  }
  return { modulesDir: join(base, versions[0]), version: versions[0] };
}

/** What downloads/nixpkgs-<system>.json records. */
interface NixpkgsRecord {
  flake: string;
  attributes: string[];
  paths: NixpkgsPaths;
}

export interface NixpkgsPresetOptions extends NixpkgsResolveOptions {
  onStep?: (label: string) => void;
  /** Resolve again (a newer nixpkgs from the registry) instead of reusing the recorded paths. */
  refresh?: boolean;
}

/**
 * The preset's inputs. The resolved paths are remembered in downloads/nixpkgs-<system>.json
 * (evaluating nixpkgs takes seconds); the record is reused while the flake and attributes are the
 * same and every path is still in the host store (`--no-link` makes no GC root, so a garbage
 * collection can remove them: they are then simply substituted again).
 */
export async function nixpkgsPreset(downloadsDir: string, system: string, options: NixpkgsPresetOptions = {}): Promise<PresetInputs> {
  const flake = options.flake ?? nixpkgsFlake();
  const attributes = INPUTS.map((input) => nixpkgsInstallable(flake, system, input));
  const record = join(downloadsDir, `nixpkgs-${system}.json`);
  let paths: NixpkgsPaths | undefined;
  if (!options.refresh && existsSync(record)) {
    const saved = JSON.parse(readFileSync(record, 'utf8')) as NixpkgsRecord;
    const same = saved.flake === flake && JSON.stringify(saved.attributes) === JSON.stringify(attributes);
    if (same && INPUTS.every((input) => typeof saved.paths?.[input] === 'string' && existsSync(saved.paths[input]))) paths = saved.paths;
  }
  if (!paths) {
    options.onStep?.(`substituting kernel, busybox, openssh, nix, cacert and e2fsprogs for ${system} from ${flake} (nix build --max-jobs 0)`);
    paths = await resolveNixpkgsPaths(system, { ...options, flake });
    const saved: NixpkgsRecord = { flake, attributes, paths };
    writeFileAtomicSync(record, `${JSON.stringify(saved, null, 2)}\n`);
  }
  return nixpkgsPresetInputs(paths, system, flake);
}

/** PresetInputs from resolved paths (no Nix command runs here). */
export function nixpkgsPresetInputs(paths: NixpkgsPaths, system: string, flake = 'nixpkgs'): PresetInputs {
  checkPaths(paths, system);
  const { modulesDir, version } = kernelModules(paths.kernel);
  return {
    name: 'nixpkgs',
    storePaths: imageStorePaths(paths),
    layers: [new NixpkgsRootLayer(paths)],
    kernel: join(paths.kernel, kernelFileName(system)),
    modulesDir,
    kernelVersion: version,
    busybox: join(paths.busybox, 'bin', 'busybox'),
    // Store paths name their contents, so the paths themselves identify the inputs.
    identity: `nixpkgs:${system}:${flake}:${INPUTS.map((input) => paths[input]).join(':')}`,
  };
}

/** The store paths that go into the system disk: everything but the kernel (host-side only). */
export function imageStorePaths(paths: NixpkgsPaths): string[] {
  return INPUTS.filter((input) => input !== 'kernel').map((input) => paths[input]);
}

/**
 * busybox applets that stage 2 (run by the initramfs's busybox, which stage 1 copies in, and which
 * finds applets through PATH unless built to prefer its own), shutdown, control and the udhcpc
 * script call by name. They are linked even when the busybox store path lists no applet links of
 * its own; pkgsStatic.busybox's default config has every one of them.
 */
export const REQUIRED_APPLETS = [
  'sh', 'ash', 'init', 'mount', 'umount', 'cat', 'cp', 'mkdir', 'ln', 'mv', 'rm', 'hostname', 'date', 'ip', 'sed',
  'head', 'grep', 'chown', 'chgrp', 'chmod', 'dirname', 'setsid', 'sleep', 'kill', 'sync', 'poweroff', 'reboot',
  'udhcpc', 'echo', 'test', '[', 'true', 'false', 'env', 'ls', 'ps', 'id', 'uname', 'nologin', 'tar', 'xz', 'gzip',
] as const;

/** /usr/bin and /usr/sbin entries besides the applets (PATH puts /usr first, so these win). */
function rootSymlinks(paths: NixpkgsPaths): Array<[string, string]> {
  const links: Array<[string, string]> = [
    ['/usr/sbin/sshd', `${paths.openssh}/bin/sshd`],
    ['/usr/sbin/resize2fs', `${paths.e2fsprogs}/bin/resize2fs`],
    ['/usr/sbin/nologin', `${paths.busybox}/bin/busybox`],
    ['/usr/bin/env', `${paths.busybox}/bin/busybox`],
    ['/etc/ssl/certs/ca-certificates.crt', `${paths.cacert}/${CA_BUNDLE}`],
    ['/etc/ssl/certs/ca-bundle.crt', `${paths.cacert}/${CA_BUNDLE}`],
    ['/etc/mtab', '/proc/self/mounts'],
  ];
  // Every program of openssh (ssh, ssh-keygen, scp …) and of nix (nix-daemon, nix-store, nix …).
  for (const pkg of [paths.openssh, paths.nix]) {
    for (const name of listDir(join(pkg, 'bin'))) {
      if (name !== 'sshd') links.push([`/usr/bin/${name}`, `${pkg}/bin/${name}`]);
    }
  }
  return links;
}

/** The applets: the required ones plus every busybox link the store path has in bin/ or sbin/. */
function applets(busybox: string): string[] {
  const names = new Set<string>(REQUIRED_APPLETS);
  for (const dir of ['bin', 'sbin']) {
    for (const name of listDir(join(busybox, dir))) {
      const path = join(busybox, dir, name);
      if (lstatSync(path).isSymbolicLink() && readlinkSync(path).split('/').pop() === 'busybox') names.add(name);
    }
  }
  names.delete('busybox');
  return [...names].sort();
}

function listDir(path: string): string[] {
  return existsSync(path) ? readdirSync(path).sort() : [];
}

/** uid/gid of OpenSSH's privilege separation user (NixOS gives sshd a dynamic id; any fixed one works). */
const SSHD_ID = 74;

const ROOT_FILES: Array<[string, number, string]> = [
  ['/etc/passwd', 0o644,
    'root:x:0:0:root:/root:/bin/sh\n' +
    `sshd:x:${SSHD_ID}:${SSHD_ID}:OpenSSH privilege separation:/var/empty:/usr/sbin/nologin\n` +
    'nobody:x:65534:65534:nobody:/var/empty:/usr/sbin/nologin\n'],
  // gid 5 is the group stage 2 mounts devpts with.
  ['/etc/group', 0o644, `root:x:0:\ntty:x:5:\nsshd:x:${SSHD_ID}:\nnogroup:x:65534:\n`],
  ['/etc/shadow', 0o600, 'root:!:1::::::\nsshd:!:1::::::\nnobody:!:1::::::\n'],
  ['/etc/nsswitch.conf', 0o644, 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n'],
  ['/etc/os-release', 0o644, 'NAME="ferry guest (nixpkgs)"\nID=ferry-nixpkgs\n'],
  ['/etc/shells', 0o644, '/bin/sh\n'],
];

const ROOT_DIRS: Array<[string, number]> = [
  ['/bin', 0o755], ['/sbin', 0o755], ['/usr', 0o755], ['/usr/bin', 0o755], ['/usr/sbin', 0o755],
  ['/usr/lib', 0o755], ['/etc', 0o755], ['/etc/ssh', 0o755], ['/etc/ssl', 0o755], ['/etc/ssl/certs', 0o755],
  ['/etc/nix', 0o755], ['/root', 0o700], ['/home', 0o755], ['/var', 0o755], ['/var/log', 0o755], ['/var/lib', 0o755],
  // sshd's privilege separation directory: must be root's and writable by no one else.
  ['/var/empty', 0o555],
  ['/tmp', 0o1777], ['/run', 0o755], ['/proc', 0o555], ['/sys', 0o555], ['/dev', 0o755], ['/mnt', 0o755],
];

/**
 * The root skeleton around the store paths: directories, the files that define users, and the
 * symlinks that put the store's programs where stage 1 and stage 2 look for them. Applied after
 * the NixLayer; everything is owned by root with mtime 1 (the image is reproducible).
 */
export class NixpkgsRootLayer implements Layer {
  readonly description: string;

  constructor(private readonly paths: NixpkgsPaths) {
    this.description = `nixpkgs root skeleton (${paths.busybox}, ${paths.openssh}, ${paths.nix})`;
  }

  /** Every entry the layer adds, in order (computed from the store paths' listings). */
  entries(): Array<[string, InodeInit]> {
    const meta = { uid: 0, gid: 0, mtime: 1 };
    const out: Array<[string, InodeInit]> = [];
    for (const [path, perm] of ROOT_DIRS) out.push([path, { kind: 'dir', perm, ...meta }]);
    for (const [path, perm, text] of ROOT_FILES) {
      const data = Buffer.from(text);
      out.push([path, { kind: 'file', perm, ...meta, size: data.length, content: { kind: 'bytes', data } }]);
    }
    const busybox = `${this.paths.busybox}/bin/busybox`;
    out.push(['/bin/busybox', { kind: 'symlink', perm: 0o777, ...meta, target: busybox }]);
    for (const name of applets(this.paths.busybox)) out.push([`/bin/${name}`, { kind: 'symlink', perm: 0o777, ...meta, target: busybox }]);
    for (const [path, target] of rootSymlinks(this.paths)) out.push([path, { kind: 'symlink', perm: 0o777, ...meta, target }]);
    return out;
  }

  async fingerprint(): Promise<string> {
    const hash = createHash('sha256').update('ferry-nixpkgs-root-1\n');
    for (const [path, init] of this.entries()) {
      const content = init.content?.kind === 'bytes' ? init.content.data.toString('base64') : '';
      hash.update(`${path}\0${init.kind}\0${init.perm}\0${init.target ?? ''}\0${content}\n`);
    }
    return hash.digest('hex');
  }

  async apply(tree: Tree): Promise<void> {
    for (const [path, init] of this.entries()) tree.add(path, init, { uid: 0, gid: 0, mtime: 1 });
  }
}

function shellWord(word: string): string {
  return /^[\w@%+=:,./#^-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
