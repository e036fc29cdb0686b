/**
 * Picks the VM backend for this host from the backend facts (facts.ts). `auto` tries the backends
 * `autoOrder` lists for the host that can run the guest (and use the configured accelerator), and
 * takes the first that is installed. A backend that cannot run is a FerryError that names why, or
 * the missing binary and how to install it; nothing is started.
 */
import type { Accelerator as ConfiguredAccel } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { createExecaRunner, type Runner } from '../process/runner.js';
import type { GuestSystem, VmBackend } from './backend.js';
import { BACKEND_FACTS, installHint, candidateBackends, thisHost, whyBackendCannotRun, type BackendName, type HostPlatform } from './facts.js';
import { createHyperkitBackend } from './hyperkit.js';
import { createQemuBackend } from './qemu.js';
import { createVfkitBackend } from './vfkit.js';

export type BackendChoice = 'auto' | BackendName;

export interface BackendContext {
  runner?: Runner;
  /** The host the decisions are made for (default: this one). */
  host?: HostPlatform;
  /** `[vm] accel`. */
  accel?: ConfiguredAccel;
  /** Where vfkit's uncompressed kernels are cached (paths.kernelsDir). */
  kernelCacheDir: string;
}

export { thisHost };

/** The backend `name`, for the host and accelerator in `context`. */
export function createBackend(name: BackendName, context: BackendContext): VmBackend {
  const runner = context.runner ?? createExecaRunner();
  const host = context.host ?? thisHost();
  const make: Record<BackendName, () => VmBackend> = {
    qemu: () => createQemuBackend({ runner, host, accel: context.accel }),
    hyperkit: () => createHyperkitBackend({ runner, host }),
    vfkit: () => createVfkitBackend({ runner, host, kernelCacheDir: context.kernelCacheDir }),
  };
  return make[name]();
}

/** Backends that can use the configured accelerator (`auto`: any). */
function takesAccel(name: BackendName, host: HostPlatform, system: GuestSystem, accel: ConfiguredAccel | undefined): boolean {
  return accel === undefined || accel === 'auto' || (BACKEND_FACTS[name].acceleratorsFor(host, system) as readonly string[]).includes(accel);
}

export async function selectBackend(choice: BackendChoice, system: GuestSystem, context: BackendContext): Promise<VmBackend> {
  const runner = context.runner ?? createExecaRunner();
  const host = context.host ?? thisHost();
  const withRunner = { ...context, runner, host };

  if (choice !== 'auto') {
    const why = whyBackendCannotRun(choice, host, system);
    if (why) throw new FerryError(`VM backend ${why}`, { exitCode: ExitCode.Config, hint: 'set [vm] backend = "auto" to let ferry choose' });
    const binary = BACKEND_FACTS[choice].binary(system);
    if (!(await runner.which(binary))) {
      throw new FerryError(`VM backend '${choice}' needs ${binary}, which is not on PATH`, {
        exitCode: ExitCode.Unavailable,
        hint: `install it: ${installHint(BACKEND_FACTS[choice], host)}`,
      });
    }
    return createBackend(choice, withRunner);
  }

  const candidates = candidateBackends(host, system).filter((name) => takesAccel(name, host, system, context.accel));
  for (const name of candidates) {
    if (await runner.which(BACKEND_FACTS[name].binary(system))) return createBackend(name, withRunner);
  }
  const binaries = candidates.map((name) => BACKEND_FACTS[name].binary(system));
  const wanted = candidates.map((name) => `${BACKEND_FACTS[name].binary(system)} (${installHint(BACKEND_FACTS[name], host)})`);
  throw new FerryError(`no VM backend for ${system} guests is installed: looked for ${binaries.join(', ') || 'nothing (no backend runs this guest here)'} on PATH`, {
    exitCode: ExitCode.Unavailable,
    hint: wanted.length ? `install one of: ${wanted.join('; ')}` : undefined,
  });
}

export type { VmBackend, VmSpec, RunningVm, GuestEndpoint, SpecProblem } from './backend.js';
export { BACKEND_FACTS, type BackendName, type HostPlatform } from './facts.js';
export { createQemuBackend } from './qemu.js';
export { createHyperkitBackend } from './hyperkit.js';
export { createVfkitBackend } from './vfkit.js';
export { freePort } from './free-port.js';
