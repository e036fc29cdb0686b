/**
 * The configuration as the rest of ferry sees it: complete (every default filled in), checked,
 * in camelCase, with sizes in bytes, durations in milliseconds and paths absolute. Frozen.
 */
import type {
  ACCELERATORS,
  BACKENDS,
  DEBIAN_SUITES,
  EXTRA_SYSTEMS,
  GUEST_SYSTEMS,
  INTERPRETERS,
  LOG_LEVELS,
  LOOPBACK_ADDRESSES,
  PRESETS,
} from './schema.js';

export type GuestSystem = (typeof GUEST_SYSTEMS)[number];
export type ExtraSystem = (typeof EXTRA_SYSTEMS)[number];
export type Preset = (typeof PRESETS)[number];
export type DebianSuite = (typeof DEBIAN_SUITES)[number];
export type Interpreter = (typeof INTERPRETERS)[number];
export type Backend = (typeof BACKENDS)[number];
export type Accelerator = (typeof ACCELERATORS)[number];
export type LoopbackAddress = (typeof LOOPBACK_ADDRESSES)[number];
export type LogLevel = (typeof LOG_LEVELS)[number];

/** An extra image layer from `[[image.layers]]`, applied after the preset's base layers. */
export type ExtraLayerConfig =
  | { readonly type: 'tar'; readonly path: string }
  | { readonly type: 'dir'; readonly path: string }
  | { readonly type: 'nix'; readonly paths: readonly string[] };

export interface GuestNixConfig {
  /** nix.conf `max-jobs` in the guest, and the machines line's max jobs ("auto" = guest cpus). */
  readonly maxJobs: number;
  /** nix.conf `cores` (0 = all of the guest's). */
  readonly cores: number;
  /** Supported features, for nix.conf `system-features` and the machines line. */
  readonly features: readonly string[];
  /** Appended verbatim to the guest's nix.conf. */
  readonly extraConfig: string;
  readonly trustedUsers: readonly string[];
  /** nix.conf `min-free`: below this much free space on the state disk, Nix collects garbage… */
  readonly minFreeBytes: number;
  /** …until this much is free (`max-free`). */
  readonly maxFreeBytes: number;
  /**
   * nix.conf `substituters` and `trusted-public-keys`: 'host' follows the host's Nix (its
   * nix.conf, read when the image is built), or exactly these.
   */
  readonly substituters: readonly string[] | 'host';
  readonly trustedPublicKeys: readonly string[] | 'host';
}

export interface GuestConfig {
  readonly system: GuestSystem;
  readonly preset: Preset;
  /** The Debian release the debian preset builds the guest from (its kernel, busybox and Nix too). */
  readonly debianSuite: DebianSuite;
  readonly cpus: number;
  readonly memoryBytes: number;
  readonly hostname: string;
  readonly stateDiskSizeBytes: number;
  /** Systems built in the same guest besides `system` (nix.conf `extra-platforms`). */
  readonly extraSystems: readonly ExtraSystem[];
  /** How foreign binaries run in the guest; 'none' when no extra system needs one. */
  readonly interpreter: Interpreter;
  readonly nix: GuestNixConfig;
}

export interface ImageConfig {
  /** System disk size in bytes, or 'auto' (from the content, with headroom). */
  readonly sizeBytes: number | 'auto';
  readonly layers: readonly ExtraLayerConfig[];
}

export interface VmConfig {
  /** 'auto' is resolved by src/vm (it needs probes): vfkit on Apple silicon, hyperkit on Intel Macs, qemu elsewhere. */
  readonly backend: Backend;
  /** qemu only; 'auto' = hvf on macOS, kvm where /dev/kvm works, else tcg. */
  readonly accel: Accelerator;
  /** Appended to the guest kernel's command line. */
  readonly kernelCmdlineExtra: string;
}

export interface DaemonConfig {
  readonly port: number;
  readonly listen: LoopbackAddress;
  /** Stop the guest after this long without sessions; 0 = never. */
  readonly idleTimeoutMs: number;
  /** How long to wait for FERRY-READY after starting a guest before giving up (or rolling back). */
  readonly readyTimeoutMs: number;
  /** How long the SSH handshake with the guest's sshd (after FERRY-READY) may take before the session fails. */
  readonly sshTimeoutMs: number;
  /** How long a session waits for the guest's image to be built (the first build: minutes) before it fails; the build goes on. */
  readonly imageTimeoutMs: number;
  /** Public-key files accepted by the SSH front, besides the key `ferry install` generated. */
  readonly authorizedKeys: readonly string[];
  /** Close a connection that has not logged in after this long; 0 = never (OpenSSH's LoginGraceTime). */
  readonly loginGraceTimeMs: number;
  /** Close a connection after this many failed login attempts (OpenSSH's MaxAuthTries). */
  readonly maxAuthTries: number;
  /** How many connections may wait to log in at once (OpenSSH's MaxStartups). */
  readonly maxStartups: MaxStartups;
  readonly logLevel: LogLevel;
}

/**
 * Below `start` connections waiting to log in, every new one is accepted; from `start` on, a new
 * one is refused with probability `rate`%, rising linearly to 100% at `full` (OpenSSH's random
 * early drop).
 */
export interface MaxStartups {
  readonly start: number;
  readonly rate: number;
  readonly full: number;
}

export interface FerryConfig {
  /** The file this came from (absolute), or null when there was no file and only defaults apply. */
  readonly source: string | null;
  readonly guest: GuestConfig;
  readonly image: ImageConfig;
  readonly vm: VmConfig;
  readonly daemon: DaemonConfig;
}
