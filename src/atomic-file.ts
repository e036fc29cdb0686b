/**
 * Whole-file writes that readers see either before or after, never half done: the data goes to
 * a temporary file beside the target (same filesystem), which is then renamed over it. Used for
 * every record, manifest, config and key ferry writes; a failed write leaves no temp file.
 * Cache directories (downloads, rootfs tarballs) are filled in a staging directory beside them
 * and published the same way.
 */
import { existsSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rename, rm, writeFile } from 'node:fs/promises';

function tempPathFor(path: string): string {
  return `${path}.tmp-${process.pid}`;
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temp = tempPathFor(path);
  try {
    await writeFile(temp, data, { mode });
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

export function writeFileAtomicSync(path: string, data: string | Uint8Array, mode = 0o644): void {
  const temp = tempPathFor(path);
  try {
    writeFileSync(temp, data, { mode });
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
}

/**
 * Puts a finished staging directory in place as `dir` (beside it, so one rename). If another
 * process published `dir` first — `proof`, a path inside it, exists — theirs is kept and the
 * staging directory removed; otherwise the rename's error is thrown.
 */
export async function publishDirectory(staging: string, dir: string, proof: string = dir): Promise<void> {
  try {
    await rename(staging, dir);
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    if (!existsSync(proof)) throw error;
  }
}

/**
 * What a process leaves beside its targets while it writes: `NAME.tmp-PID…` (atomic writes, the
 * ext4 and cpio writers), `.staging-PID-…` (published directories). The pid says whose it is.
 */
const TEMPORARY_NAME = /(?:\.tmp-|^\.staging-)(\d+)(?:-[0-9a-f]+)?$/;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, someone else's. Only ESRCH says it is gone.
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Removes the temporary files and staging directories in `dir` whose writer is no longer running
 * (killed mid-build: a system image's temporary file is hundreds of MiB). Those of live processes,
 * this one's included, are left alone. Returns the paths removed; a missing `dir` is nothing to do.
 */
export function removeDeadTemporaries(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const match = TEMPORARY_NAME.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    const path = join(dir, name);
    rmSync(path, { recursive: true, force: true });
    removed.push(path);
  }
  return removed;
}
