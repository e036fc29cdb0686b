/**
 * Picks the VM backend for this host. `auto`: vfkit on Apple silicon, hyperkit on Intel Macs —
 * each only if installed — else qemu. A backend that cannot run is a FerryError that names the
 * missing binary and how to install it; nothing is started.
 */
import os from 'node:os';
import { ExitCode, FerryError } from '../errors.js';
import type { GuestSystem, VmBackend } from './backend.js';
import { createHyperkitBackend } from './hyperkit.js';
import { createQemuBackend, qemuBinaryFor } from './qemu.js';
import { createExecaRunner, type Runner } from '../process/runner.js';
import { createVfkitBackend } from './vfkit.js';

export type BackendChoice = 'auto' | 'qemu' | 'hyperkit' | 'vfkit';

export interface SelectBackendOptions {
  system: GuestSystem;
  runner?: Runner;
  platform?: NodeJS.Platform;
  arch?: string;
  kernelCacheDir?: string;
}

function installHint(binary: string, platform: NodeJS.Platform): string {
  if (platform === 'darwin') return `brew install ${binary.startsWith('qemu') ? 'qemu' : binary}`;
  if (binary === 'qemu-system-x86_64') return 'apt-get install qemu-system-x86 (or your distribution\'s qemu package)';
  if (binary === 'qemu-system-aarch64') return 'apt-get install qemu-system-arm (or your distribution\'s qemu package)';
  return `${binary} runs on macOS only`;
}

export async function selectBackend(choice: BackendChoice, options: SelectBackendOptions): Promise<VmBackend> {
  const runner = options.runner ?? createExecaRunner();
  const platform = options.platform ?? process.platform;
  const arch = options.arch ?? os.arch();
  const make: Record<Exclude<BackendChoice, 'auto'>, () => VmBackend> = {
    qemu: () => createQemuBackend({ runner, platform, arch }),
    hyperkit: () => createHyperkitBackend({ runner }),
    vfkit: () => createVfkitBackend({ runner, platform, arch, kernelCacheDir: options.kernelCacheDir }),
  };
  const binaryOf = (name: Exclude<BackendChoice, 'auto'>): string => (name === 'qemu' ? qemuBinaryFor(options.system) : name);

  if (choice !== 'auto') {
    const binary = binaryOf(choice);
    if (!(await runner.which(binary))) {
      throw new FerryError(`VM backend '${choice}' needs ${binary}, which is not on PATH`, {
        exitCode: ExitCode.Unavailable,
        hint: `install it: ${installHint(binary, platform)}`,
      });
    }
    return make[choice]();
  }

  const preferred: Array<Exclude<BackendChoice, 'auto'>> = [];
  if (platform === 'darwin' && arch === 'arm64' && options.system === 'aarch64-linux') preferred.push('vfkit');
  if (platform === 'darwin' && arch === 'x64' && options.system === 'x86_64-linux') preferred.push('hyperkit');
  preferred.push('qemu');
  for (const name of preferred) {
    if (await runner.which(binaryOf(name))) return make[name]();
  }
  const wanted = preferred.map((name) => `${binaryOf(name)} (${installHint(binaryOf(name), platform)})`);
  throw new FerryError(`no VM backend for ${options.system} guests is installed: looked for ${preferred.map(binaryOf).join(', ')} on PATH`, {
    exitCode: ExitCode.Unavailable,
    hint: `install one of: ${wanted.join('; ')}`,
  });
}

export type { VmBackend, VmSpec, RunningVm, BackendCapabilities, GuestEndpoint, SpecProblem } from './backend.js';
export { createQemuBackend } from './qemu.js';
export { createHyperkitBackend } from './hyperkit.js';
export { createVfkitBackend } from './vfkit.js';
export { createExecaRunner, RecordingRunner, type Runner } from '../process/runner.js';
export { freePort } from './free-port.js';
