/**
 * Booting ferry's guest: the backend the config and the host choose, the VM spec, the wait for
 * FERRY-READY (or FERRY-FAILED), the ssh config and the record — and on any failure, nothing
 * left running. The VM it returns stops through the one stop ladder, the guest's own power-off
 * first.
 */
import { mkdir } from 'node:fs/promises';
import type { FerryConfig } from '../../config/types.js';
import type { FerryPaths } from '../../config/paths.js';
import { FerryError } from '../../errors.js';
import type { ImageManifest } from '../../image/manifest.js';
import { createDetachedRunner } from '../../process/detached.js';
import { createExecaRunner, type Runner } from '../../process/runner.js';
import type { GuestEndpoint, RunningVm, VmBackend } from '../backend.js';
import type { HostPlatform } from '../facts.js';
import { freePort } from '../free-port.js';
import { selectBackend, type BackendContext } from '../index.js';
import { writeGuestRecord, type GuestRecord } from './record.js';
import { guestVmSpec } from './spec.js';
import { guestPowerOff, writeGuestSshConfig } from './ssh.js';

export interface BootOptions {
  manifest: ImageManifest;
  config: FerryConfig;
  paths: FerryPaths;
  /** Keep the hypervisor running after this process exits. */
  detached: boolean;
  readyTimeoutMs?: number;
  onConsoleLine?: (line: string) => void;
  /** Tests: a backend to use instead of the configured one, or a runner to find and start it with. */
  backend?: VmBackend;
  runner?: Runner;
  /** The host the backend is chosen for (default: this one). */
  host?: HostPlatform;
  /** Told when a guest whose kernel crashed while booting is booted once more. */
  onRetry?: (error: Error) => void;
}

export interface BootedGuest {
  vm: RunningVm;
  endpoint: GuestEndpoint;
  record: GuestRecord;
}

const FAILED_LINE = /\bFERRY-FAILED\b.*$/;

/** What `[vm] backend` and `[vm] accel` choose from, for the guest's system on this host (`ferry doctor` asks the same). */
export function backendContext(config: FerryConfig, paths: FerryPaths, runner?: Runner, host?: HostPlatform): BackendContext {
  // A Mac with no backend on PATH takes one from nixpkgs through its own Nix (vm/host-nix.ts).
  return { runner, host, accel: config.vm.accel, kernelCacheDir: paths.kernelsDir, fromHostNix: { downloadsDir: paths.downloadsDir } };
}

/** The backend `[vm] backend` and `[vm] accel` choose for the guest's system on this host. */
export function chooseBackend(config: FerryConfig, paths: FerryPaths, runner?: Runner, host?: HostPlatform): Promise<VmBackend> {
  return selectBackend(config.vm.backend, config.guest.system, backendContext(config, paths, runner, host));
}

/** What the kernel prints when it crashes (a panic, an oops): not the guest refusing to come up. */
const KERNEL_CRASH = /Kernel panic - not syncing|\bOops: |BUG: unable to handle/;

/** A boot that ended in a kernel crash (the console says so), as opposed to FERRY-FAILED or a timeout. */
class GuestCrashedWhileBooting extends FerryError {}

/**
 * Boots `manifest`, waits for FERRY-READY, records the guest. On any failure nothing is left
 * running. A guest whose kernel crashed while booting is booted once more: seen under emulation
 * (tcg: one panic in an interrupt in a few dozen boots of Debian 13's kernel), where a second
 * boot comes up; a guest that says FERRY-FAILED, or never gets ready, fails at once.
 */
export async function bootGuest(options: BootOptions): Promise<BootedGuest> {
  try {
    return await bootGuestOnce(options);
  } catch (error) {
    if (!(error instanceof GuestCrashedWhileBooting)) throw error;
    options.onRetry?.(error);
    return bootGuestOnce(options);
  }
}

async function bootGuestOnce(options: BootOptions): Promise<BootedGuest> {
  const { manifest, config, paths } = options;
  await mkdir(paths.vmDir, { recursive: true, mode: 0o700 });
  await mkdir(paths.logDir, { recursive: true });
  const runner = options.runner ?? (options.detached ? createDetachedRunner(paths.hypervisorLog) : undefined);
  const backend = options.backend ?? (await chooseBackend(config, paths, runner, options.host));
  const { facts } = backend;
  const sshPort = facts.reach === 'forwarded-port' ? await freePort() : undefined;
  const spec = guestVmSpec({ manifest, config, paths, facts, sshPort });

  const started = performance.now();
  const vm = await backend.start(spec, { powerOffGuest: guestPowerOff(paths, createExecaRunner()) });
  const unsubscribe = options.onConsoleLine ? vm.console.onLine(options.onConsoleLine) : undefined;
  let endpoint: GuestEndpoint;
  try {
    endpoint = await waitReady(vm, options.readyTimeoutMs ?? config.daemon.readyTimeoutMs);
  } catch (error) {
    await vm.stop({ hard: true });
    const history = vm.console.history();
    const tail = history.slice(-15).join('\n');
    const Failure = history.some((line) => KERNEL_CRASH.test(line)) ? GuestCrashedWhileBooting : FerryError;
    throw new Failure(`guest '${spec.name}' did not become ready: ${(error as Error).message}`, {
      cause: error,
      hint: tail ? `the last console lines (${spec.consoleLog}):\n${tail}` : `see ${spec.consoleLog}`,
    });
  } finally {
    unsubscribe?.();
  }
  const record: GuestRecord = {
    name: spec.name,
    backend: facts.name,
    pid: vm.pid,
    spec,
    sshHost: endpoint.host,
    sshPort: endpoint.port,
    imageId: manifest.id,
    manifestPath: manifest.manifestPath,
    runDir: spec.runDir,
    stateDisk: paths.stateDisk,
    startedAt: new Date().toISOString(),
    readyLine: endpoint.readyLine,
    readyMs: Math.round(performance.now() - started),
  };
  await writeGuestSshConfig(paths, record);
  await writeGuestRecord(paths, record);
  return { vm, endpoint, record };
}

function waitReady(vm: RunningVm, timeoutMs: number): Promise<GuestEndpoint> {
  return Promise.race([
    vm.ready(timeoutMs),
    vm.waitForLine(FAILED_LINE, timeoutMs + 1000).then(([line]) => {
      throw new FerryError(`the guest failed to boot: ${line}`);
    }),
  ]);
}
