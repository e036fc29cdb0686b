/**
 * The running guest's record on disk (the vm dir's guest.json): state from the disk, not from
 * memory. `ferry up` may return while the hypervisor keeps running, and `ferry down` is another
 * process: the record says which backend runs which spec under which pid, so any process can
 * take charge of the guest and stop it through the backend's own ladder.
 */
import { readFile, unlink } from 'node:fs/promises';
import type { FerryPaths } from '../../config/paths.js';
import { writeFileAtomic } from '../../atomic-file.js';
import { ExitCode, FerryError } from '../../errors.js';
import { isProcessAlive } from '../../process/existing.js';
import type { VmSpec } from '../backend.js';
import { BACKEND_NAMES, type BackendName } from '../facts.js';

export interface GuestRecord {
  name: string;
  backend: BackendName;
  pid: number;
  /** The spec it was started with: its run files, disks and system, for whoever stops it. */
  spec: VmSpec;
  sshHost: string;
  sshPort: number;
  imageId: string;
  manifestPath: string;
  runDir: string;
  stateDisk: string;
  startedAt: string;
  readyLine: string;
  /** ms from starting the hypervisor to FERRY-READY. */
  readyMs: number;
}

export async function writeGuestRecord(paths: FerryPaths, record: GuestRecord): Promise<void> {
  await writeFileAtomic(paths.guestRecord, `${JSON.stringify(record, null, 2)}\n`, 0o600);
}

export async function removeGuestRecord(paths: FerryPaths): Promise<void> {
  await unlink(paths.guestRecord).catch(() => {});
}

/** The running guest, from its record; a record whose process is gone is removed. */
export async function runningGuest(paths: FerryPaths): Promise<GuestRecord | undefined> {
  const text = await readFile(paths.guestRecord, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const record = parseRecord(text, paths.guestRecord);
  if (isProcessAlive(record.pid) && (await pidIsHypervisor(record.pid))) return record;
  await removeGuestRecord(paths);
  return undefined;
}

function parseRecord(text: string, file: string): GuestRecord {
  let record: Partial<GuestRecord>;
  try {
    record = JSON.parse(text) as Partial<GuestRecord>;
  } catch (error) {
    throw new FerryError(`${file}: not valid JSON (${(error as Error).message})`, {
      exitCode: ExitCode.DataError,
      hint: 'the guest record is damaged; if no guest runs, remove the file',
    });
  }
  if (!Number.isInteger(record.pid) || !BACKEND_NAMES.includes(record.backend as BackendName)) {
    throw new FerryError(`${file}: expected a guest record with a pid and a backend (${BACKEND_NAMES.join(', ')})`, { exitCode: ExitCode.DataError });
  }
  // Records written before they carried the spec: enough of one to find the run files and disks.
  record.spec ??= {
    name: record.name ?? 'ferry',
    system: 'x86_64-linux',
    cpus: 1,
    memoryBytes: 0,
    kernel: '',
    initrd: '',
    cmdline: '',
    disks: record.stateDisk ? [{ path: record.stateDisk, readOnly: false }] : [],
    consoleLog: '',
    runDir: record.runDir ?? '',
  };
  return record as GuestRecord;
}

/** A pid can be reused after a reboot; on Linux check it is still a hypervisor process. */
async function pidIsHypervisor(pid: number): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined);
  return cmdline === undefined || /qemu|hyperkit|vfkit/.test(cmdline);
}

export function requireRunning(record: GuestRecord | undefined): GuestRecord {
  if (!record) throw new FerryError('the guest is not running', { exitCode: ExitCode.Unavailable, hint: 'start it with `ferry up`' });
  return record;
}
