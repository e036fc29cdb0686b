/**
 * State from the disk, not from memory: whether a guest runs, and which guest holds a disk, is
 * read from pidfiles and lock files whose process is checked to be alive. Stale files (their
 * process is gone: a crash, a reboot) are removed when found.
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { diskLockFile, vmRunFiles } from '../config/paths.js';
import { isProcessAlive } from '../process/existing.js';
import type { VmDisk, VmSpec } from './backend.js';

/** The run files of the VM `spec` describes (their names live in config/paths.ts). */
export const runFilesOf = (spec: Pick<VmSpec, 'runDir' | 'name'>) => vmRunFiles(spec.runDir, spec.name);

/** The pid in `file` if that process is alive; a stale file is removed. */
export async function readLivePidfile(file: string): Promise<number | undefined> {
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const pid = Number.parseInt(text.trim(), 10);
  if (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid)) return pid;
  await unlink(file).catch(() => {});
  return undefined;
}

export interface DiskLockOwner {
  pid: number;
  guest: string;
  runDir: string;
}

/** Who holds `disk` for writing, if that process is alive; a stale lock is removed. */
export async function readDiskLock(disk: VmDisk): Promise<DiskLockOwner | undefined> {
  const file = diskLockFile(disk.path);
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  let owner: DiskLockOwner | undefined;
  try {
    owner = JSON.parse(text) as DiskLockOwner;
  } catch {
    owner = undefined; // a half-written lock from a crash: treat as stale
  }
  if (owner && Number.isInteger(owner.pid) && isProcessAlive(owner.pid)) return owner;
  await unlink(file).catch(() => {});
  return undefined;
}

/**
 * Takes the write lock on each writable disk (read-only disks are shared and take none).
 * Atomic through O_EXCL; on a conflict nothing is left locked and the owner is returned.
 */
export async function acquireDiskLocks(
  spec: VmSpec,
  owner: DiskLockOwner,
): Promise<{ ok: true; release: () => Promise<void>; setPid: (pid: number) => Promise<void> } | { ok: false; disk: VmDisk; owner: DiskLockOwner }> {
  const taken: VmDisk[] = [];
  const releaseAll = async (): Promise<void> => {
    for (const disk of taken.reverse()) await unlink(diskLockFile(disk.path)).catch(() => {});
  };
  for (const disk of spec.disks.filter((d) => !d.readOnly)) {
    for (let attempt = 0; ; attempt++) {
      try {
        await writeFile(diskLockFile(disk.path), JSON.stringify(owner), { flag: 'wx' });
        taken.push(disk);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        const holder = await readDiskLock(disk); // removes it if stale
        if (holder || attempt > 0) {
          await releaseAll();
          return { ok: false, disk, owner: holder ?? owner };
        }
      }
    }
  }
  const mine = [...taken];
  return {
    ok: true,
    release: async () => {
      for (const disk of mine.reverse()) {
        const holder = await readDiskLock(disk);
        if (!holder || holder.guest === owner.guest) await unlink(diskLockFile(disk.path)).catch(() => {});
      }
    },
    setPid: async (pid: number) => {
      for (const disk of mine) {
        const file = diskLockFile(disk.path);
        await writeFile(`${file}.tmp`, JSON.stringify({ ...owner, pid }));
        await rename(`${file}.tmp`, file);
      }
    },
  };
}
