/**
 * The daemon's calls into src/vm's guest lifecycle, all in this one spot: how the supervisor
 * boots and stops the guest, and the stop of a guest an earlier daemon left running. Nothing else
 * in src/daemon boots or stops a VM.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { FerryError } from '../errors.js';
import { ensureStateDisk } from '../image/state-disk.js';
import { bootGuest, type BootedGuest } from '../vm/instance/boot.js';
import { removeGuestRecord, runningGuest } from '../vm/instance/record.js';
import { stopRecordedGuest } from '../vm/instance/stop.js';
import type { SupervisorDeps } from './supervisor-deps.js';

/**
 * A guest left running by a daemon that died is not ours to adopt: stop it cleanly. A damaged
 * guest record names no process to stop: it is logged, and the daemon carries on (its first boot
 * writes a new record over it).
 */
export async function stopLeftoverGuest(paths: FerryPaths, log: Logger): Promise<void> {
  let leftover: Awaited<ReturnType<typeof runningGuest>>;
  try {
    leftover = await runningGuest(paths);
  } catch (error) {
    if (!(error instanceof FerryError)) throw error;
    log.warn({ err: error, file: paths.guestRecord }, `${error.message}; not stopping a guest from an earlier daemon (if one still runs, stop its process by hand)`);
    return;
  }
  if (!leftover) return;
  log.warn('a guest from an earlier daemon is still running; stopping it');
  await stopRecordedGuest(paths).then(
    (result) => log.info({ how: result.how, ms: result.ms }, 'stopped the old guest'),
    (error: unknown) => log.error({ err: error }, 'could not stop the old guest'),
  );
}

/**
 * The supervisor's VM dependencies. `config` is asked at each boot (a reload may have changed
 * it); `onBooted` runs once a guest is up (it sets its clock from the command line at boot).
 */
export function guestVmDeps(paths: FerryPaths, config: () => FerryConfig, onBooted: () => void, log?: Logger): Pick<SupervisorDeps, 'boot' | 'stop' | 'guestHostKey'> {
  // The guest this daemon booted: it is stopped through its own VM (the one stop ladder), which
  // also knows when it has already exited.
  let booted: BootedGuest | undefined;
  return {
    boot: async (manifest) => {
      await ensureStateDisk(paths.stateDisk, config().guest.stateDiskSizeBytes);
      booted = await bootGuest({ manifest, config: config(), paths, detached: false, onRetry: (error) => log?.warn({ err: error }, 'the guest crashed while booting; booting it once more') });
      onBooted();
      return booted;
    },
    stop: async ({ hard }) => {
      if (!booted) return stopRecordedGuest(paths, { hard });
      const result = await booted.vm.stop({ hard });
      await removeGuestRecord(paths);
      return result;
    },
    guestHostKey: () => readFileSync(`${paths.guestHostKey}.pub`, 'utf8').trim(),
  };
}
