/**
 * What each VM backend is, as data: the one place that knows which hosts a backend runs on, which
 * guests it runs there, its console, how the host reaches the guest, how it stops one, its binary
 * and where Nix has it. Config validation, backend selection, `ferry doctor`, the boot command
 * line and status read this table; nothing outside a backend's own module branches on its name
 * (Lima's driver features as data; Apple Containerization's VM side owning `console=`).
 *
 * Sources: qemu's `-serial` attaches to the machine's first UART — 8250 `ttyS0` on q35, PL011
 * `ttyAMA0` on virt (qemu docs, "system/arm/virt"); vfkit's `virtio-serial,logFilePath=` is a
 * virtio console, `hvc0` in the guest (crc-org/vfkit doc/usage.md); hyperkit's `-l com1` is an
 * 8250 UART, `ttyS0` (moby/hyperkit src/lib/uart_emul.c).
 */
import { currentHost } from '../config/host.js';
import type { GuestSystem } from '../config/types.js';

export type BackendName = 'qemu' | 'hyperkit' | 'vfkit';
export const BACKEND_NAMES = ['qemu', 'hyperkit', 'vfkit'] as const satisfies readonly BackendName[];

/** The host as node names it: `process.platform` and `process.arch`. */
export interface HostPlatform {
  readonly platform: NodeJS.Platform;
  readonly arch: string;
}

/** qemu's accelerators, as `[vm] accel` names them; the other backends have one each. */
export type QemuAccelerator = 'hvf' | 'kvm' | 'tcg';
export type Accelerator = QemuAccelerator | 'virtualization.framework' | 'hypervisor.framework';

export interface BackendFacts {
  readonly name: BackendName;
  /** The guest systems this backend runs on `host` (empty: it does not run there at all). */
  systemsOn(host: HostPlatform): readonly GuestSystem[];
  /** Where it runs, for messages: "Intel Macs", "macOS", … */
  readonly hosts: string;
  /** Linux's name for the console the backend logs; the backend puts `console=` first on the command line. */
  readonly console: Readonly<Record<GuestSystem, string>>;
  /** How the host reaches the guest's sshd: a port forwarded on loopback, or the address the guest announces. */
  readonly reach: 'forwarded-port' | 'announced-ip';
  /** The guest's network, as stage 2 sets it up (`ferry.net=` on the command line). */
  readonly guestNet: 'user' | 'dhcp';
  /** Apple's Rosetta for Linux can be shared with an aarch64 guest on this host. */
  rosettaOn(host: HostPlatform): boolean;
  /** What the backend may accelerate a `system` guest with on `host`, best first. */
  acceleratorsFor(host: HostPlatform, system: GuestSystem): readonly Accelerator[];
  /** The executable that runs a `system` guest. */
  binary(system: GuestSystem): string;
  /** Arguments that make the binary print its version and exit. */
  readonly versionArgs: readonly string[];
  /** The nixpkgs attribute that provides the binary (so it can come from the host's Nix). */
  readonly nixpkgsAttribute: string;
  /** Homebrew's formula for the binary, where Homebrew ships it. */
  readonly brewFormula?: string;
  /** Debian's packages for the binary, where Debian ships it. */
  readonly debianPackages?: string;
  /** The backend's own way to stop a guest, after the guest's control command and before signals (doctor names it). */
  readonly stop: 'QMP system_powerdown' | "vfkit's REST Stop" | 'the ACPI power button';
  /** The kernel must be an uncompressed arm64 `Image` for an aarch64 guest (Virtualization.framework). */
  readonly needsUncompressedArm64Kernel: boolean;
}

/** This host as ferry's platform decisions see it: FERRY_PLATFORM may report another (config/host.ts). */
export function thisHost(): HostPlatform {
  const { platform, arch } = currentHost();
  return { platform, arch };
}

const isMac = (host: HostPlatform): boolean => host.platform === 'darwin';
const appleSilicon = (host: HostPlatform): boolean => isMac(host) && host.arch === 'arm64';
const intelMac = (host: HostPlatform): boolean => isMac(host) && host.arch === 'x64';

/** The guest system a host runs without emulation, if any. */
export function nativeSystem(host: HostPlatform): GuestSystem | undefined {
  if (host.arch === 'arm64') return 'aarch64-linux';
  if (host.arch === 'x64') return 'x86_64-linux';
  return undefined;
}

const qemu: BackendFacts = {
  name: 'qemu',
  systemsOn: (host) => (host.platform === 'darwin' || host.platform === 'linux' ? ['x86_64-linux', 'aarch64-linux'] : []),
  hosts: 'macOS and Linux',
  console: { 'x86_64-linux': 'ttyS0', 'aarch64-linux': 'ttyAMA0' },
  reach: 'forwarded-port',
  guestNet: 'user',
  rosettaOn: () => false,
  acceleratorsFor(host, system) {
    if (nativeSystem(host) !== system) return ['tcg'];
    if (isMac(host)) return ['hvf', 'tcg'];
    if (host.platform === 'linux') return ['kvm', 'tcg'];
    return ['tcg'];
  },
  binary: (system) => (system === 'x86_64-linux' ? 'qemu-system-x86_64' : 'qemu-system-aarch64'),
  versionArgs: ['--version'],
  nixpkgsAttribute: 'qemu',
  brewFormula: 'qemu',
  debianPackages: 'qemu-system-x86 qemu-system-arm',
  stop: 'QMP system_powerdown',
  needsUncompressedArm64Kernel: false,
};

const vfkit: BackendFacts = {
  name: 'vfkit',
  // Virtualization.framework runs guests of the host's own architecture only: aarch64 on Apple
  // silicon, x86_64 on Intel Macs (macOS 11+).
  systemsOn: (host) => (appleSilicon(host) ? ['aarch64-linux'] : intelMac(host) ? ['x86_64-linux'] : []),
  hosts: 'macOS',
  console: { 'x86_64-linux': 'hvc0', 'aarch64-linux': 'hvc0' },
  reach: 'announced-ip',
  guestNet: 'dhcp',
  rosettaOn: appleSilicon,
  acceleratorsFor: () => ['virtualization.framework'],
  binary: () => 'vfkit',
  versionArgs: ['--version'],
  nixpkgsAttribute: 'vfkit',
  brewFormula: 'vfkit',
  stop: "vfkit's REST Stop",
  needsUncompressedArm64Kernel: true,
};

const hyperkit: BackendFacts = {
  name: 'hyperkit',
  systemsOn: (host) => (intelMac(host) ? ['x86_64-linux'] : []),
  hosts: 'Intel Macs',
  console: { 'x86_64-linux': 'ttyS0', 'aarch64-linux': 'ttyS0' },
  reach: 'announced-ip',
  guestNet: 'dhcp',
  rosettaOn: () => false,
  acceleratorsFor: () => ['hypervisor.framework'],
  binary: () => 'hyperkit',
  versionArgs: ['-v'],
  nixpkgsAttribute: 'hyperkit',
  // Homebrew disabled its formula in 2025; nixpkgs still builds it for x86_64-darwin.
  // -A gives the guest ACPI; SIGTERM to hyperkit presses its power button.
  stop: 'the ACPI power button',
  needsUncompressedArm64Kernel: false,
};

export const BACKEND_FACTS: Readonly<Record<BackendName, BackendFacts>> = { qemu, vfkit, hyperkit };

/** How to install a backend's binary on `host`: Homebrew or Debian where they ship it, else the host's Nix. */
export function installHint(facts: BackendFacts, host: HostPlatform): string {
  if (facts.systemsOn(host).length === 0) return `${facts.name} runs only on ${facts.hosts}`;
  const fromNix = `\`nix profile install nixpkgs#${facts.nixpkgsAttribute}\``;
  if (isMac(host)) return facts.brewFormula ? `\`brew install ${facts.brewFormula}\`, or ${fromNix}` : `${fromNix} (Homebrew no longer ships it)`;
  return facts.debianPackages ? `\`apt-get install ${facts.debianPackages}\`, or ${fromNix}` : fromNix;
}

/**
 * What `backend = "auto"` tries on a host, in order; the first whose binary is installed and that
 * runs the guest wins. On every Mac Virtualization.framework comes first: it runs x86_64 guests
 * on Intel Macs too, Apple maintains it, and HyperKit is legacy (Homebrew disabled it in 2025) —
 * so HyperKit is only a last resort there, after qemu with hvf.
 */
export function autoOrder(host: HostPlatform): readonly BackendName[] {
  return isMac(host) ? ['vfkit', 'qemu', 'hyperkit'] : ['qemu'];
}

/** Why `backend` cannot run a `system` guest on `host`, or undefined if it can. */
export function whyBackendCannotRun(backend: BackendName, host: HostPlatform, system: GuestSystem): string | undefined {
  const facts = BACKEND_FACTS[backend];
  const systems = facts.systemsOn(host);
  if (systems.includes(system)) return undefined;
  if (systems.length === 0) return `"${backend}" runs only on ${facts.hosts}, but this host is ${host.platform} ${host.arch}`;
  return `"${backend}" runs only ${systems.join(' and ')} guests on this host (it cannot emulate), but guest.system is "${system}"`;
}

/** The backends that can run a `system` guest on `host`, in the order `auto` tries them. */
export function candidateBackends(host: HostPlatform, system: GuestSystem): BackendName[] {
  return autoOrder(host).filter((name) => whyBackendCannotRun(name, host, system) === undefined);
}
