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
 *   busybox            every shell utility stage 1 and stage 2 call, `ip`, `udhcpc` and `init`
 *                      included — so no coreutils or iproute2 closure in the image. Dynamically
 *                      linked (glibc): the initramfs carries its loader and libraries at their
 *                      store paths (initramfs/runtime.ts), as NixOS's own stage 1 carries its
 *                      dynamically linked tools. Not `pkgsStatic.busybox`: Hydra builds no
 *                      package of pkgsStatic but its stdenv (pkgs/top-level/release.nix), so it
 *                      is not in the binary cache and `--max-jobs 0` would refuse it.
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
 * REAL local store paths standing in for the nixpkgs ones (Debian's busybox linked the nixpkgs
 * way — loader and RUNPATH in a glibc store path — small stand-in sshd/nix-daemon scripts) —
 * written with the ext4 writer, `e2fsck -fn` clean, and every command stage 1 and stage 2 run
 * found and executed through the image's own symlinks in a chroot, the initramfs's busybox
 * running in a chroot of the initramfs alone; and `buildImage` with preset "nixpkgs" going
 * through. Each attribute and layout below was checked against nixpkgs' own files
 * (docs/nixpkgs-preset.md, scripts/check-nixpkgs-preset.ts, which reads NIXPKGS_ATTRIBUTES and
 * NIXPKGS_LAYOUT from here). Only on a Mac with Nix and the cache: that the attributes are all
 * substitutable for both systems, and that the resulting guest boots.
 */
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../../atomic-file.js';
import { ExitCode, FerryError } from '../../errors.js';
import { shellWord } from '../../process/process-error.js';
import { createExecaRunner, ProcessError, type Runner, type RunResult } from '../../process/runner.js';
import { nixProgramCandidates } from '../layers/nix.js';
import { CA_BUNDLE, NixpkgsRootLayer } from './nixpkgs-root.js';
import type { PresetInputs } from './preset.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';

/** The nixpkgs attribute (below legacyPackages.<system>) and output for each input. */
export const NIXPKGS_ATTRIBUTES = {
  kernel: { attribute: 'linux', output: 'out' },
  busybox: { attribute: 'busybox', output: 'out' },
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

/** What every `nix` command of ferry's needs: the new CLI and flakes, on any Nix that has them. */
export const NIX_OPTIONS = ['--extra-experimental-features', 'nix-command flakes'];

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

export interface NixpkgsResolveOptions {
  flake?: string;
  /** What runs `nix` (default: the real runner). */
  runner?: Runner;
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
  const runner = options.runner ?? createExecaRunner();
  const argv = nixBuildArgv(flake, system);
  const { bin, result } = await runNix(runner, options.nixBin, argv);
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
          cause: new ProcessError(bin, argv, result),
          hint:
            'pin a nixpkgs whose binaries are in the cache with FERRY_NIXPKGS (e.g. FERRY_NIXPKGS=github:NixOS/nixpkgs/nixos-unstable), ' +
            'check that cache.nixos.org is among the host\'s substituters and reachable, or use preset = "debian" under [guest]',
        },
      );
    }
    throw new ProcessError(bin, argv, result, {
      label: `nix build of the nixpkgs preset for ${system}`,
      hint: `the command was: ${[bin, ...argv].map(shellWord).join(' ')}`,
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

async function attributesNeedingBuilds(runner: Runner, bin: string, flake: string, system: string): Promise<NixpkgsInput[]> {
  const missing: NixpkgsInput[] = [];
  for (const input of INPUTS) {
    const result = await runner.run(bin, nixDryRunArgv(flake, system, input));
    // `--dry-run` lists "will be built" derivations on stderr (and exits 0); fetches are fine.
    if (result.exitCode !== 0 || /will be built/i.test(result.stderr)) missing.push(input);
  }
  return missing;
}

function describeMissing(missing: NixpkgsInput[], flake: string, system: string): string {
  if (missing.length === 0) return `one of ${INPUTS.map((input) => nixpkgsInstallable(flake, system, input)).join(', ')}`;
  return missing.map((input) => nixpkgsInstallable(flake, system, input)).join(', ');
}

/** Runs `nix` `args` with the first candidate that can be started. */
export async function runNix(
  runner: Runner,
  explicit: string | undefined,
  args: string[],
  needs: { who: string; otherwise: string } = { who: 'the nixpkgs preset', otherwise: 'use preset = "debian" under [guest]' },
): Promise<{ bin: string; result: RunResult }> {
  const candidates = explicit ? [explicit] : nixProgramCandidates('nix');
  for (const bin of candidates) {
    const result = await runner.run(bin, args);
    if (result.errorCode !== 'ENOENT' && result.errorCode !== 'EACCES') return { bin, result };
  }
  throw new FerryError(`${needs.who} needs the host's nix, and none was found (tried ${candidates.join(', ')})`, {
    exitCode: ExitCode.Unavailable,
    hint: `install Nix (https://nixos.org/download), or ${needs.otherwise}`,
  });
}

/** The kernel image file name nixpkgs installs for each system (vfkit needs arm64's uncompressed `Image`). */
export function kernelFileName(system: string): string {
  return system.startsWith('aarch64') ? 'Image' : 'bzImage';
}

/** One file or directory ferry takes from an input's store path. */
export interface NixpkgsLayoutEntry {
  input: NixpkgsInput;
  /** Relative to the store path (the attribute's named output). */
  path: (system: string) => string;
  kind: 'file' | 'dir';
  /** What ferry does with it. */
  use: string;
}

/**
 * Everything the preset reads from the store paths: checked before anything is cached or built,
 * and the list scripts/check-nixpkgs-preset.ts confirms against nixpkgs' expressions.
 */
export const NIXPKGS_LAYOUT: readonly NixpkgsLayoutEntry[] = [
  { input: 'kernel', path: kernelFileName, kind: 'file', use: 'the kernel the backend boots directly' },
  { input: 'kernel', path: () => 'lib/modules', kind: 'dir', use: 'the modules stage 1 loads, in its one lib/modules/<version>' },
  { input: 'busybox', path: () => 'bin/busybox', kind: 'file', use: 'the initramfs\'s busybox and every applet in the image' },
  { input: 'openssh', path: () => 'bin/sshd', kind: 'file', use: "the guest's SSH endpoint (/usr/sbin/sshd)" },
  { input: 'nix', path: () => 'bin/nix-daemon', kind: 'file', use: 'the nix-daemon the forwarded sessions reach' },
  { input: 'nix', path: () => 'bin/nix-store', kind: 'file', use: "stage 2's nix-store --load-db of the image's registration" },
  { input: 'cacert', path: () => CA_BUNDLE, kind: 'file', use: 'the CA bundle for substitution in the guest' },
  { input: 'e2fsprogs', path: () => 'bin/resize2fs', kind: 'file', use: "stage 2's online growth of the state disk" },
];

function checkPaths(paths: NixpkgsPaths, system: string): void {
  for (const { input, path } of NIXPKGS_LAYOUT) {
    if (!existsSync(join(paths[input], path(system)))) {
      throw new FerryError(`${NIXPKGS_ATTRIBUTES[input].attribute} for ${system} resolved to ${paths[input]}, which has no ${path(system)}`, {
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
  const record = join(downloadsDir, DOWNLOAD_FILES.nixpkgsRecord(system));
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
    // Dynamically linked: the initramfs carries its loader and libraries (initramfs/runtime.ts).
    busybox: join(paths.busybox, 'bin', 'busybox'),
    // Store paths name their contents, so the paths themselves identify the inputs.
    identity: `nixpkgs:${system}:${flake}:${INPUTS.map((input) => paths[input]).join(':')}`,
  };
}

/** The store paths that go into the system disk: everything but the kernel (host-side only). */
export function imageStorePaths(paths: NixpkgsPaths): string[] {
  return INPUTS.filter((input) => input !== 'kernel').map((input) => paths[input]);
}
