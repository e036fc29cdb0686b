/**
 * The daemon's calls into src/vm's guest lifecycle, all in this one spot: how the supervisor
 * boots and stops the guest, and the stop of a guest an earlier daemon left running. Nothing else
 * in src/daemon boots or stops a VM.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { ensureStateDisk } from '../image/state-disk.js';
import { bootGuest, runningGuest, stopGuest } from '../vm/guest.js';
import type { SupervisorDeps } from './supervisor.js';

/** A guest left running by a daemon that died is not ours to adopt: stop it cleanly. */
export async function stopLeftoverGuest(paths: FerryPaths, log: Logger): Promise<void> {
  if (!(await runningGuest(paths))) return;
  log.warn('a guest from an earlier daemon is still running; stopping it');
  await stopGuest(paths).catch((error) => log.error({ err: error }, 'could not stop the old guest'));
}

/**
 * The supervisor's VM dependencies. `config` is asked at each boot (a reload may have changed
 * it); `onBooted` runs once a guest is up (it sets its clock from the command line at boot).
 */
export function guestVmDeps(paths: FerryPaths, config: () => FerryConfig, onBooted: () => void): Pick<SupervisorDeps, 'boot' | 'stop' | 'guestHostKey'> {
  return {
    boot: async (manifest) => {
      await ensureStateDisk(paths.stateDisk, config().guest.stateDiskSizeBytes);
      const guest = await bootGuest({ manifest, config: config(), paths, detached: false });
      onBooted();
      return guest;
    },
    stop: ({ hard }) => stopGuest(paths, { hard }),
    guestHostKey: () => readFileSync(`${paths.guestHostKey}.pub`, 'utf8').trim(),
  };
}
