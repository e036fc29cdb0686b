/**
 * Whole-file writes that readers see either before or after, never half done: the data goes to
 * a temporary file beside the target (same filesystem), which is then renamed over it. Used for
 * every record, manifest, config and key ferry writes; a failed write leaves no temp file.
 * Cache directories (downloads, rootfs tarballs) are filled in a staging directory beside them
 * and published the same way.
 */
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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
