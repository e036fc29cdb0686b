/**
 * Picks the VM backend for this host from the backend facts (facts.ts). `auto` tries the backends
 * `autoOrder` lists for the host that can run the guest (and use the configured accelerator), and
 * takes the first that is installed — on a Mac with none installed, the first the host's Nix can
 * provide (host-nix.ts). A backend that cannot run is a FerryError that names why, or the missing
 * binary and how to install it; nothing is started.
 */
import type { Accelerator as ConfiguredAccel } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { createExecaRunner, type Runner } from '../process/runner.js';
import type { GuestSystem, VmBackend } from './backend.js';
import { BACKEND_FACTS, installHint, candidateBackends, thisHost, whyBackendCannotRun, type BackendName, type HostPlatform } from './facts.js';
import { createHyperkitBackend } from './hyperkit.js';
import { backendFromHostNix, runnerWithNixBinary, takesBackendFromNix, type HostNixOptions, type NixBackendBinary } from './host-nix.js';
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
  /** On a Mac with no backend on PATH, take one from nixpkgs through the host's Nix (host-nix.ts). */
  fromHostNix?: HostNixOptions;
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

/** Where the chosen backend's binary is: on PATH, or from the host's Nix (a Mac with none on PATH). */
export interface LocatedBackend {
  name: BackendName;
  /** The executable's absolute path. */
  binary: string;
  fromNix?: NixBackendBinary;
}

/**
 * The backend `choice` picks for a `system` guest, and its binary: the first candidate on PATH;
 * on a Mac with none on PATH (and `fromHostNix` given), the first the host's Nix provides from
 * nixpkgs (host-nix.ts). A FerryError names what was looked for and how to install it.
 */
export async function locateBackend(choice: BackendChoice, system: GuestSystem, context: BackendContext): Promise<LocatedBackend> {
  const runner = context.runner ?? createExecaRunner();
  const host = context.host ?? thisHost();
  if (choice !== 'auto') {
    const why = whyBackendCannotRun(choice, host, system);
    if (why) throw new FerryError(`VM backend ${why}`, { exitCode: ExitCode.Config, hint: 'set [vm] backend = "auto" to let ferry choose' });
  }
  const candidates = choice === 'auto' ? candidateBackends(host, system).filter((name) => takesAccel(name, host, system, context.accel)) : [choice];
  for (const name of candidates) {
    const binary = await runner.which(BACKEND_FACTS[name].binary(system));
    if (binary) return { name, binary };
  }
  const fromNix: string[] = [];
  if (context.fromHostNix && takesBackendFromNix(host)) {
    for (const name of candidates) {
      try {
        const found = await backendFromHostNix(name, system, host, runner, context.fromHostNix);
        return { name, binary: found.binary, fromNix: found };
      } catch (error) {
        if (!(error instanceof FerryError)) throw error;
        fromNix.push(error.message);
        if (error.exitCode === ExitCode.Unavailable) break; // no Nix on this host at all
      }
    }
  }
  const also = fromNix.length ? `; ${fromNix.join('; ')}` : '';
  if (choice !== 'auto') {
    throw new FerryError(`VM backend '${choice}' needs ${BACKEND_FACTS[choice].binary(system)}, which is not on PATH${also}`, {
      exitCode: ExitCode.Unavailable,
      hint: `install it: ${installHint(BACKEND_FACTS[choice], host)}`,
    });
  }
  const binaries = candidates.map((name) => BACKEND_FACTS[name].binary(system));
  const wanted = candidates.map((name) => `${BACKEND_FACTS[name].binary(system)} (${installHint(BACKEND_FACTS[name], host)})`);
  throw new FerryError(`no VM backend for ${system} guests is installed: looked for ${binaries.join(', ') || 'nothing (no backend runs this guest here)'} on PATH${also}`, {
    exitCode: ExitCode.Unavailable,
    hint: wanted.length ? `install one of: ${wanted.join('; ')}` : undefined,
  });
}

/** The backend `choice` picks (locateBackend), made to run its binary from wherever it was found. */
export async function selectBackend(choice: BackendChoice, system: GuestSystem, context: BackendContext): Promise<VmBackend> {
  const runner = context.runner ?? createExecaRunner();
  const host = context.host ?? thisHost();
  const located = await locateBackend(choice, system, { ...context, runner, host });
  return createBackend(located.name, { ...context, host, runner: located.fromNix ? runnerWithNixBinary(runner, located.fromNix) : runner });
}

export type { VmBackend, VmSpec, RunningVm, GuestEndpoint, SpecProblem } from './backend.js';
export { BACKEND_FACTS, type BackendName, type HostPlatform } from './facts.js';
export { createQemuBackend } from './qemu.js';
export { createHyperkitBackend } from './hyperkit.js';
export { createVfkitBackend } from './vfkit.js';
export { freePort } from './free-port.js';
