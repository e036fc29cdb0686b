/**
 * Stopping the recorded guest from any process (`ferry down`, a daemon that finds a guest an
 * earlier one left): the backend named in the record takes charge of the hypervisor and stops it
 * with the same ladder as the process that started it — the guest's control command, the
 * backend's own stop, its hard stop, SIGTERM, SIGKILL.
 */
import type { FerryPaths } from '../../config/paths.js';
import { createExecaRunner, type Runner } from '../../process/runner.js';
import type { StopOptions, StopResult } from '../backend.js';
import { createBackend } from '../index.js';
import { readDiskLock } from '../run-files.js';
import { removeGuestRecord, runningGuest } from './record.js';
import { guestPowerOff } from './ssh.js';

export type StopGuestResult = { how: 'not-running'; ms: number } | Pick<StopResult, 'how' | 'ms'>;

export async function stopRecordedGuest(paths: FerryPaths, options: StopOptions & { runner?: Runner } = {}): Promise<StopGuestResult> {
  const started = performance.now();
  const record = await runningGuest(paths);
  if (!record) {
    // Nothing runs: what a crash left (a lock whose owner is gone) is removed.
    await readDiskLock({ path: paths.stateDisk, readOnly: false });
    return { how: 'not-running', ms: Math.round(performance.now() - started) };
  }
  const runner = options.runner ?? createExecaRunner();
  const backend = createBackend(record.backend, { runner, kernelCacheDir: paths.kernelsDir });
  const vm = backend.attach({ spec: record.spec, pid: record.pid }, { powerOffGuest: guestPowerOff(paths, runner) });
  const result = await vm.stop(options);
  await removeGuestRecord(paths);
  return { how: result.how, ms: Math.round(performance.now() - started) };
}
