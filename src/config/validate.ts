/**
 * Checks that need more than one key, or the host: a complete config (defaults applied) in, every
 * problem out. A config that is fine on one host can be refused on another (Rosetta on Linux).
 */
import { needsInterpreter } from './defaults.js';
import type { HostInfo } from './host.js';
import type { ConfigProblem } from './problems.js';
import { formatSize } from './units.js';
import type { FerryConfig, GuestSystem } from './types.js';

export function validateConfig(config: FerryConfig, host: HostInfo, file: string): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const problem = (key: string, message: string) => problems.push({ file, key, message });
  const { guest, vm } = config;
  const hostDescription = `this host is ${host.platform} ${host.arch}`;
  const hostSystem = hostGuestSystem(host);

  // --- extra systems and their interpreter ---
  const seen = new Set<string>();
  for (const extra of guest.extraSystems) {
    if (extra === guest.system) problem('guest.extra-systems', `lists "${extra}", which is already the guest's own system (guest.system)`);
    else if (seen.has(extra)) problem('guest.extra-systems', `lists "${extra}" twice`);
    seen.add(extra);
  }
  const foreign = guest.extraSystems.filter((extra) => needsInterpreter(guest.system, extra));
  if (foreign.length > 0 && guest.interpreter === 'none') {
    problem('guest.interpreter', `expected "rosetta" or "qemu-user" to run ${foreign.join(', ')} builds on an ${guest.system} guest, got "none" (string)`);
  }
  if (foreign.length === 0 && guest.interpreter !== 'none') {
    problem('guest.interpreter', `"${guest.interpreter}" has nothing to run: guest.extra-systems lists no system foreign to ${guest.system} (add e.g. "${guest.system === 'aarch64-linux' ? 'x86_64-linux' : 'aarch64-linux'}")`);
  }
  if (guest.interpreter === 'rosetta') {
    if (host.platform !== 'darwin' || host.arch !== 'arm64') {
      problem('guest.interpreter', `"rosetta" needs an Apple-silicon Mac, but ${hostDescription}; use "qemu-user"`);
    } else if (vm.backend !== 'vfkit' && vm.backend !== 'auto') {
      problem('guest.interpreter', `"rosetta" is provided only by the vfkit backend, but vm.backend is "${vm.backend}"; use "qemu-user" or set vm.backend = "vfkit"`);
    }
    if (guest.system !== 'aarch64-linux') problem('guest.interpreter', `"rosetta" runs x86_64 binaries on an aarch64-linux guest, but guest.system is "${guest.system}"`);
    for (const extra of foreign.filter((s) => s !== 'x86_64-linux')) {
      problem('guest.extra-systems', `"${extra}" cannot run under Rosetta (it runs x86_64-linux only); use guest.interpreter = "qemu-user"`);
    }
  }

  // --- the VM backend and accelerator this host can run ---
  if (vm.backend === 'hyperkit') {
    if (host.platform !== 'darwin' || host.arch !== 'x64') problem('vm.backend', `"hyperkit" runs only on Intel Macs, but ${hostDescription}`);
    if (guest.system !== 'x86_64-linux') problem('vm.backend', `"hyperkit" boots only x86_64-linux guests, but guest.system is "${guest.system}"`);
  }
  if (vm.backend === 'vfkit') {
    if (host.platform !== 'darwin') problem('vm.backend', `"vfkit" runs only on macOS, but ${hostDescription}`);
    else if (hostSystem !== guest.system) problem('vm.backend', `"vfkit" cannot emulate: an ${guest.system} guest needs an ${guest.system.split('-')[0]} host, but ${hostDescription}; use vm.backend = "qemu"`);
  }
  if (vm.accel !== 'auto' && (vm.backend === 'hyperkit' || vm.backend === 'vfkit')) {
    problem('vm.accel', `applies only to the qemu backend, but vm.backend is "${vm.backend}"; remove it or set it to "auto"`);
  }
  if (vm.accel === 'hvf' || vm.accel === 'kvm') {
    const platform = vm.accel === 'hvf' ? 'darwin' : 'linux';
    if (host.platform !== platform) problem('vm.accel', `"${vm.accel}" is available only on ${platform === 'darwin' ? 'macOS' : 'Linux'}, but ${hostDescription}; use "auto" or "tcg"`);
    else if (hostSystem !== guest.system) problem('vm.accel', `"${vm.accel}" runs only guests of the host's architecture, but guest.system is "${guest.system}" and ${hostDescription}; use "tcg"`);
  }

  // --- resources ---
  if (guest.memoryBytes > host.memoryBytes) {
    problem('guest.memory', `expected at most this host's memory (${formatSize(roundDownToMiB(host.memoryBytes))}), got ${formatSize(guest.memoryBytes)}`);
  }
  return problems;
}

function hostGuestSystem(host: HostInfo): GuestSystem | undefined {
  if (host.arch === 'arm64') return 'aarch64-linux';
  if (host.arch === 'x64') return 'x86_64-linux';
  return undefined;
}

function roundDownToMiB(bytes: number): number {
  return bytes - (bytes % (1024 * 1024));
}
