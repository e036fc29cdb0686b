/**
 * ferry's guest as a VM spec: one built image (kernel, initrd, system and store disks read-only) with the
 * state disk read-write, and the kernel arguments of this boot (the clock, the network mode the
 * backend's facts name). The backend adds its own arguments (`console=`) when it boots it.
 */
import type { FerryConfig } from '../../config/types.js';
import type { FerryPaths } from '../../config/paths.js';
import { imageCmdline, type ImageManifest } from '../../image/manifest.js';
import type { VmSpec } from '../backend.js';
import type { BackendFacts } from '../facts.js';

/** The guest's name in pidfiles and sockets; one guest per state dir. */
export const GUEST_NAME = 'ferry';

/** The image's arguments, then this boot's: the clock (the guest has no RTC to trust) and its network. */
export function guestCmdline(manifest: ImageManifest, config: FerryConfig, net: BackendFacts['guestNet'], now: number): string {
  const parts = [imageCmdline(manifest), `ferry.time=${now}`, `ferry.net=${net}`];
  if (config.vm.kernelCmdlineExtra.trim()) parts.push(config.vm.kernelCmdlineExtra.trim());
  return parts.join(' ');
}

export interface GuestSpecInput {
  manifest: ImageManifest;
  config: FerryConfig;
  paths: FerryPaths;
  /** The backend that will boot it: how the host reaches the guest decides its network. */
  facts: BackendFacts;
  /** The loopback port forwarded to the guest's sshd, for a backend whose facts say `forwarded-port`. */
  sshPort?: number;
  /** Seconds since the epoch, for the guest's clock. */
  now?: number;
}

export function guestVmSpec(input: GuestSpecInput): VmSpec {
  const { manifest, config, paths, facts } = input;
  return {
    name: GUEST_NAME,
    system: config.guest.system,
    cpus: config.guest.cpus,
    memoryBytes: config.guest.memoryBytes,
    kernel: manifest.kernel.path,
    initrd: manifest.initrd.path,
    cmdline: guestCmdline(manifest, config, facts.guestNet, input.now ?? Math.floor(Date.now() / 1000)),
    disks: [
      { path: manifest.systemDisk.path, readOnly: true },
      { path: paths.stateDisk, readOnly: false },
      // After the state disk, so vda and vdb stay what they were; stage 1 finds them by ferry.stores=N.
      ...(manifest.storeDisks ?? []).map((disk) => ({ path: disk.path, readOnly: true })),
    ],
    sshPortOnHost: facts.reach === 'forwarded-port' ? input.sshPort : undefined,
    // vfkit shares Rosetta with the guest (virtiofs tag `rosetta`); stage 2 registers it with binfmt_misc.
    rosetta: config.guest.interpreter === 'rosetta',
    consoleLog: paths.consoleLog,
    runDir: paths.vmDir,
  };
}
