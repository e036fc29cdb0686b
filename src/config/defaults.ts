/**
 * Fills in every key the file left out. Pure: the host's facts and the directory that relative
 * paths are relative to come in as arguments. Host-dependent defaults are documented next to
 * each one, and renderDefaultConfig() shows them for the current host.
 */
import path from 'node:path';
import type { HostInfo } from './host.js';
import type { ConfigFile } from './schema.js';
import type { ExtraLayerConfig, ExtraSystem, FerryConfig, GuestSystem, Interpreter, Preset } from './types.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** Plain values that do not depend on the host. */
export const DEFAULTS = {
  memoryBytes: 4 * GiB,
  maxCpus: 4,
  hostname: 'ferry',
  // trixie's Nix is 2.26; bookworm's 2.8 (2022) stays selectable.
  debianSuite: 'trixie',
  stateDiskSizeBytes: 40 * GiB,
  nixCores: 0,
  // No `kvm`: the guest has no nested virtualisation; `nixos-test` needs kvm too.
  nixFeatures: ['benchmark', 'big-parallel'],
  // `builder` is the user the daemon logs in as (issue 3); root for local administration.
  nixTrustedUsers: ['root', 'builder'],
  // 31022, 31122 and 31222 are taken by other Nix builders (nix-darwin's linux-builder et al.).
  port: 31322,
  listen: '127.0.0.1',
  idleTimeoutMs: 30 * 60_000,
  // Generous because tcg (no hardware acceleration) boots take tens of seconds.
  readyTimeoutMs: 5 * 60_000,
  // The daemon connects to the guest's sshd only after FERRY-READY, which stage 2 prints once
  // sshd listens: what is left is a loopback TCP connect, one curve25519 exchange and two ed25519
  // signatures — well under a second even under tcg (a whole warm build through the front takes
  // ~0.9 s there). 20 s (ssh2's own default) leaves room for a guest busy with parallel builds,
  // and a guest whose sshd accepts but never answers fails the session in 20 s, not the 5 min of
  // ready-timeout that used to bound this too.
  sshTimeoutMs: 20_000,
  // A session that comes while the image builds waits for it. A first build on a fresh machine
  // fetches a kernel, Nix and a base system (hundreds of MB): minutes, more on a slow link, so
  // neither ready-timeout (the boot) nor ssh-timeout bounds it.
  imageTimeoutMs: 30 * 60_000,
  // Limits on the SSH front before login: OpenSSH's defaults (LoginGraceTime 120, MaxAuthTries 6,
  // MaxStartups 10:30:100). The host's nix-daemon logs in with one key in well under a second.
  loginGraceTimeMs: 120_000,
  maxAuthTries: 6,
  maxStartups: { start: 10, rate: 30, full: 100 },
} as const;

export interface DefaultsContext {
  readonly host: HostInfo;
  /** Relative paths in the file are relative to this (the config file's directory). */
  readonly baseDir: string;
  /** The config file (absolute), or null when there is none. */
  readonly source: string | null;
}

/** The guest's own architecture follows the host's, so builds run without emulation. */
export function defaultGuestSystem(host: HostInfo): GuestSystem {
  return host.arch === 'arm64' ? 'aarch64-linux' : 'x86_64-linux';
}

/**
 * macOS: nixpkgs (everything substituted by the host's nix, no Linux builder needed to make the
 * first one). Linux: debian (mmdebstrap is at hand and the kernel comes as a .deb).
 */
export function defaultPreset(host: HostInfo): Preset {
  return host.platform === 'darwin' ? 'nixpkgs' : 'debian';
}

/** Whether building for `extra` on a `system` guest needs a binfmt interpreter. */
export function needsInterpreter(system: GuestSystem, extra: ExtraSystem): boolean {
  if (extra === system) return false;
  // An x86_64 kernel runs i686 binaries natively.
  if (system === 'x86_64-linux' && extra === 'i686-linux') return false;
  return true;
}

/** Rosetta where the host has it (an Apple-silicon Mac with an aarch64 guest), qemu-user elsewhere. */
export function defaultInterpreter(host: HostInfo, system: GuestSystem, extraSystems: readonly ExtraSystem[]): Interpreter {
  if (!extraSystems.some((extra) => needsInterpreter(system, extra))) return 'none';
  const rosettaHost = host.platform === 'darwin' && host.arch === 'arm64' && system === 'aarch64-linux';
  return rosettaHost && extraSystems.every((extra) => extra === 'x86_64-linux' || extra === system) ? 'rosetta' : 'qemu-user';
}

/**
 * The guest's Nix collects garbage when the state disk has less than a fifth free, until two
 * fifths are free: a builder's store holds only what builds left behind (their outputs went to
 * the host), so there is nothing to keep. Nix looks at the free space when a build starts and
 * then only every few seconds, so what is left at the start must hold the build in flight: a
 * tenth was measured too little (test/e2e/state-disk.test.ts: the sixth of seven 160 MiB
 * builds on a 1 GiB disk started with 150 MiB free, above a tenth, and ran out).
 */
export const FREE_SPACE = { minFraction: 0.2, maxFraction: 0.4 } as const;

function freeSpace(minFree: number | 'auto' | undefined, maxFree: number | 'auto' | undefined, stateDiskBytes: number): { minFreeBytes: number; maxFreeBytes: number } {
  const fraction = (part: number) => Math.round((stateDiskBytes * part) / MiB) * MiB;
  const minFreeBytes = minFree === undefined || minFree === 'auto' ? fraction(FREE_SPACE.minFraction) : minFree;
  const maxFreeBytes = maxFree === undefined || maxFree === 'auto' ? Math.max(fraction(FREE_SPACE.maxFraction), minFreeBytes) : maxFree;
  return { minFreeBytes, maxFreeBytes };
}

export function applyDefaults(file: ConfigFile, context: DefaultsContext): FerryConfig {
  const { host } = context;
  const guest = file.guest ?? {};
  const nix = guest.nix ?? {};
  const image = file.image ?? {};
  const vm = file.vm ?? {};
  const daemon = file.daemon ?? {};

  const system = guest.system ?? defaultGuestSystem(host);
  const cpus = guest.cpus ?? Math.max(1, Math.min(DEFAULTS.maxCpus, host.cpus));
  const extraSystems = guest['extra-systems'] ?? [];
  const maxJobs = nix['max-jobs'];
  const resolve = (p: string) => resolvePath(p, context.baseDir, host.homeDir);

  return {
    source: context.source,
    guest: {
      system,
      preset: guest.preset ?? defaultPreset(host),
      debianSuite: guest['debian-suite'] ?? DEFAULTS.debianSuite,
      cpus,
      memoryBytes: guest.memory ?? DEFAULTS.memoryBytes,
      hostname: guest.hostname ?? DEFAULTS.hostname,
      stateDiskSizeBytes: guest['state-disk-size'] ?? DEFAULTS.stateDiskSizeBytes,
      extraSystems,
      interpreter: guest.interpreter ?? defaultInterpreter(host, system, extraSystems),
      nix: {
        maxJobs: maxJobs === undefined || maxJobs === 'auto' ? cpus : maxJobs,
        cores: nix.cores ?? DEFAULTS.nixCores,
        features: nix.features ?? [...DEFAULTS.nixFeatures],
        extraConfig: nix['extra-config'] ?? '',
        trustedUsers: nix['trusted-users'] ?? [...DEFAULTS.nixTrustedUsers],
        substituters: nix.substituters ?? 'host',
        trustedPublicKeys: nix['trusted-public-keys'] ?? 'host',
        ...freeSpace(nix['min-free'], nix['max-free'], guest['state-disk-size'] ?? DEFAULTS.stateDiskSizeBytes),
      },
    },
    image: {
      sizeBytes: image.size ?? 'auto',
      layers: (image.layers ?? []).map((layer): ExtraLayerConfig =>
        layer.type === 'nix' ? { type: 'nix', paths: layer.paths.map(resolve) } : { type: layer.type, path: resolve(layer.path) },
      ),
    },
    vm: {
      backend: vm.backend ?? 'auto',
      accel: vm.accel ?? 'auto',
      kernelCmdlineExtra: vm['kernel-cmdline-extra'] ?? '',
    },
    daemon: {
      port: daemon.port ?? DEFAULTS.port,
      listen: (daemon.listen ?? DEFAULTS.listen) as FerryConfig['daemon']['listen'],
      idleTimeoutMs: daemon['idle-timeout'] ?? DEFAULTS.idleTimeoutMs,
      readyTimeoutMs: daemon['ready-timeout'] ?? DEFAULTS.readyTimeoutMs,
      sshTimeoutMs: daemon['ssh-timeout'] ?? DEFAULTS.sshTimeoutMs,
      imageTimeoutMs: daemon['image-timeout'] ?? DEFAULTS.imageTimeoutMs,
      authorizedKeys: (daemon['authorized-keys'] ?? []).map(resolve),
      loginGraceTimeMs: daemon['login-grace-time'] ?? DEFAULTS.loginGraceTimeMs,
      maxAuthTries: daemon['max-auth-tries'] ?? DEFAULTS.maxAuthTries,
      maxStartups: daemon['max-startups'] ?? DEFAULTS.maxStartups,
      logLevel: daemon['log-level'] ?? 'info',
    },
  };
}

/** `~/x` → home; relative → against the config file's directory; absolute stays. */
export function resolvePath(p: string, baseDir: string, homeDir: string): string {
  if (p === '~') return homeDir;
  if (p.startsWith('~/')) return path.join(homeDir, p.slice(2));
  return path.resolve(baseDir, p);
}
