/**
 * Checks that need more than one key, or the host: a complete config (defaults applied) in, every
 * problem out. A config that is fine on one host can be refused on another (Rosetta on Linux).
 */
import { needsInterpreter } from './defaults.js';
import type { HostInfo } from './host.js';
import type { ConfigProblem } from './problems.js';
import { formatSize } from './units.js';
import type { FerryConfig } from './types.js';
import { BACKEND_FACTS, BACKEND_NAMES, whyBackendCannotRun, type BackendName } from '../vm/facts.js';

export function validateConfig(config: FerryConfig, host: HostInfo, file: string): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const problem = (key: string, message: string) => problems.push({ file, key, message });
  const { guest, vm } = config;
  const hostDescription = `this host is ${host.platform} ${host.arch}`;

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
    const sharing = BACKEND_NAMES.filter((name) => BACKEND_FACTS[name].rosettaOn(host));
    if (sharing.length === 0) {
      problem('guest.interpreter', `"rosetta" needs an Apple-silicon Mac, but ${hostDescription}; use "qemu-user"`);
    } else if (vm.backend !== 'auto' && !sharing.includes(vm.backend)) {
      problem('guest.interpreter', `"rosetta" is provided only by the ${sharing.join(' or ')} backend, but vm.backend is "${vm.backend}"; use "qemu-user" or set vm.backend = "${sharing[0]}"`);
    }
    if (guest.system !== 'aarch64-linux') problem('guest.interpreter', `"rosetta" runs x86_64 binaries on an aarch64-linux guest, but guest.system is "${guest.system}"`);
    for (const extra of foreign.filter((s) => s !== 'x86_64-linux')) {
      problem('guest.extra-systems', `"${extra}" cannot run under Rosetta (it runs x86_64-linux only); use guest.interpreter = "qemu-user"`);
    }
  }

  // --- the VM backend and accelerator this host can run (the backends' facts say which) ---
  const accelerators = (name: BackendName): readonly string[] => BACKEND_FACTS[name].acceleratorsFor(host, guest.system);
  if (vm.backend !== 'auto') {
    const why = whyBackendCannotRun(vm.backend, host, guest.system);
    if (why) problem('vm.backend', why);
    if (vm.accel !== 'auto' && !accelerators(vm.backend).includes(vm.accel)) {
      problem('vm.accel', `"${vm.accel}" is not an accelerator ${vm.backend} can use for an ${guest.system} guest here (${hostDescription}; it can use ${accelerators(vm.backend).join(', ')}); remove it or set it to "auto"`);
    }
  } else if (vm.accel !== 'auto' && !BACKEND_NAMES.some((name) => !whyBackendCannotRun(name, host, guest.system) && accelerators(name).includes(vm.accel))) {
    problem('vm.accel', `"${vm.accel}" cannot run an ${guest.system} guest here (${hostDescription}); use "auto" or "tcg"`);
  }

  // --- resources ---
  const { minFreeBytes, maxFreeBytes } = guest.nix;
  if (minFreeBytes >= guest.stateDiskSizeBytes) {
    problem('guest.nix.min-free', `expected less than guest.state-disk-size (${formatSize(guest.stateDiskSizeBytes)}), got ${formatSize(minFreeBytes)}`);
  } else if (maxFreeBytes < minFreeBytes || maxFreeBytes > guest.stateDiskSizeBytes) {
    problem('guest.nix.max-free', `expected from guest.nix.min-free (${formatSize(minFreeBytes)}) to guest.state-disk-size (${formatSize(guest.stateDiskSizeBytes)}), got ${formatSize(maxFreeBytes)}`);
  }
  if (guest.memoryBytes > host.memoryBytes) {
    problem('guest.memory', `expected at most this host's memory (${formatSize(roundDownToMiB(host.memoryBytes))}), got ${formatSize(guest.memoryBytes)}`);
  }
  return problems;
}

function roundDownToMiB(bytes: number): number {
  return bytes - (bytes % (1024 * 1024));
}
