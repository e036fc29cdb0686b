/**
 * A VM backend's binary from nixpkgs, through the host's own Nix — for a Mac with no vfkit, qemu
 * or hyperkit on PATH (no Homebrew needed), the same way the nixpkgs preset takes the guest's
 * parts: one `nix build` (argv array, never a shell) of the attribute the backend table names
 * (facts.ts `nixpkgsAttribute`) for the host's own system, from the same flake (`FERRY_NIXPKGS`,
 * else `nixpkgs` from the flake registry), substitutes only:
 *
 *   nix --extra-experimental-features 'nix-command flakes' build --max-jobs 0 --builders ''
 *       --out-link CACHE/downloads/nix-backend-vfkit --print-out-paths nixpkgs#legacyPackages.aarch64-darwin.vfkit^out
 *
 *   - `--max-jobs 0 --builders ''`: nothing is built — qemu takes ~3 h on 2 cores (nixpkgs'
 *     qemu/default.nix, `requiredSystemFeatures = [ "big-parallel" ]`), and ferry's own guest,
 *     the host's Linux builder, must not be asked for a Darwin program.
 *   - `--out-link` in ferry's cache: a GC root, so a `nix-collect-garbage` does not remove the
 *     hypervisor of a running guest; the next selection reads the link and runs no Nix at all
 *     (evaluating nixpkgs takes seconds). `ferry uninstall --purge` removes the link with the
 *     cache, and Nix drops the dangling root itself.
 *
 * nixpkgs, read file by file: pkgs/by-name/vf/vfkit/package.nix (at 044b684b) builds `cmd/vfkit`
 * for `platforms.darwin` and signs `$out/bin/vfkit` with vfkit's entitlements (Virtualization.
 * framework refuses an unsigned binary); pkgs/applications/virtualization/qemu/default.nix (at
 * 00b0ec49) configures `--enable-hvf` on Darwin and installs every `bin/qemu-system-*`. Nixpkgs
 * 26.05 is the last release that builds x86_64-darwin (its release notes): an Intel Mac pins it
 * with FERRY_NIXPKGS, or Nix's refusal of the platform is what the error shows.
 */
import { existsSync, mkdirSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { DOWNLOAD_FILES } from '../config/paths.js';
import { FerryError } from '../errors.js';
import { NIX_OPTIONS, nixpkgsFlake, runNix } from '../image/presets/nixpkgs.js';
import { ProcessError } from '../process/process-error.js';
import type { Runner } from '../process/types.js';
import type { GuestSystem } from '../config/types.js';
import { BACKEND_FACTS, installHint, type BackendFacts, type BackendName, type HostPlatform } from './facts.js';

export interface HostNixOptions {
  /** Where the out-links go (the cache's downloads dir). */
  downloadsDir: string;
  /** Default: `FERRY_NIXPKGS`, else `nixpkgs`. */
  flake?: string;
  /** The `nix` program; default: `nix` on PATH, then the usual install locations. */
  nixBin?: string;
}

/** A backend's binary as the host's Nix provided it. */
export interface NixBackendBinary {
  backend: BackendName;
  /** The executable, inside the store path. */
  binary: string;
  storePath: string;
  /** What Nix was asked for: `nixpkgs#legacyPackages.aarch64-darwin.vfkit^out`. */
  installable: string;
  /** The out-link (GC root) in ferry's cache. */
  link: string;
}

/** Nix's name for the host's own system (`aarch64-darwin`, `x86_64-darwin`), if it has one. */
export function nixHostSystem(host: HostPlatform): string | undefined {
  const cpu = host.arch === 'arm64' ? 'aarch64' : host.arch === 'x64' ? 'x86_64' : undefined;
  return cpu && (host.platform === 'darwin' || host.platform === 'linux') ? `${cpu}-${host.platform}` : undefined;
}

/** Only a Mac takes its backend from Nix: Linux hosts have their distribution's qemu (Debian: qemu-system-*). */
export function takesBackendFromNix(host: HostPlatform): boolean {
  return host.platform === 'darwin' && nixHostSystem(host) !== undefined;
}

export function nixBackendInstallable(facts: BackendFacts, host: HostPlatform, flake: string): string {
  return `${flake}#legacyPackages.${nixHostSystem(host)}.${facts.nixpkgsAttribute}^out`;
}

/** The arguments of the `nix build` that fetches `facts`' package (after the program name). */
export function nixBackendArgv(facts: BackendFacts, host: HostPlatform, flake: string, link: string): string[] {
  return [...NIX_OPTIONS, 'build', '--max-jobs', '0', '--builders', '', '--out-link', link, '--print-out-paths', nixBackendInstallable(facts, host, flake)];
}

/**
 * The binary of `backend` for a `system` guest from the host's Nix: the out-link's when it is
 * still there, else from one `nix build`. Throws a FerryError saying what Nix said.
 */
export async function backendFromHostNix(backend: BackendName, system: GuestSystem, host: HostPlatform, runner: Runner, options: HostNixOptions): Promise<NixBackendBinary> {
  const facts = BACKEND_FACTS[backend];
  const flake = options.flake ?? nixpkgsFlake();
  const installable = nixBackendInstallable(facts, host, flake);
  const link = path.join(options.downloadsDir, DOWNLOAD_FILES.nixBackend(backend));
  const inside = (storePath: string) => path.join(storePath, 'bin', facts.binary(system));
  if (existsSync(inside(link))) {
    const storePath = realpathSync(link);
    return { backend, binary: inside(storePath), storePath, installable, link };
  }
  mkdirSync(options.downloadsDir, { recursive: true });
  const argv = nixBackendArgv(facts, host, flake, link);
  const { bin, result } = await runNix(runner, options.nixBin, argv, {
    who: `taking ${facts.binary(system)} from nixpkgs (none is on PATH)`,
    otherwise: `install ${facts.binary(system)} (${installHint(facts, host)})`,
  });
  const storePath = result.stdout.trim().split('\n').at(-1) ?? '';
  if (result.exitCode !== 0 || !/^\/nix\/store\/[^/]+$/.test(storePath)) {
    const said = result.stderr.trim().split('\n').slice(-3).join(' | ') || result.stdout.trim() || '(no output)';
    throw new FerryError(`the host's Nix could not provide ${facts.binary(system)} (${installable}, substitutes only): ${said}`, {
      cause: new ProcessError(bin, argv, result),
    });
  }
  return { backend, binary: inside(storePath), storePath, installable, link };
}

/** `runner`, except that `which` finds `binary` where the host's Nix put it. */
export function runnerWithNixBinary(runner: Runner, found: NixBackendBinary): Runner {
  const name = path.basename(found.binary);
  return {
    spawn: (file, args, options) => runner.spawn(file, args, options),
    run: (file, args, options) => runner.run(file, args, options),
    check: (file, args, options) => runner.check(file, args, options),
    which: async (binary) => (path.basename(binary) === name ? found.binary : runner.which(binary)),
  };
}
