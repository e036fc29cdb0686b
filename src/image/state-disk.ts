/**
 * The state disk (vdb): /nix and everything else that must outlive a reboot or an image rebuild.
 *
 * Created once, empty and sparse, by ferry's own ext4 writer (with a journal, so a hard kill of
 * the VM is recovered by journal replay). Never rebuilt: `ferry image build` does not touch it.
 * A larger configured size grows the file here (truncate up, still sparse) and stage 1 grows the
 * filesystem to fill it (`resize2fs`, online) on the next boot. Shrinking would lose data, so a
 * smaller size is refused.
 */
import { existsSync } from 'node:fs';
import { mkdir, stat, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ExitCode, FerryError } from '../errors.js';
import { writeExt4 } from './ext4/index.js';
import { Tree } from './tree.js';

export const STATE_DISK_LABEL = 'ferry-state';
const BLOCK = 4096;

export interface StateDiskResult {
  path: string;
  sizeBytes: number;
  /** What happened: made now, grown (the guest resizes the filesystem at boot), or left alone. */
  action: 'created' | 'grown' | 'unchanged';
}

export async function ensureStateDisk(path: string, sizeBytes: number): Promise<StateDiskResult> {
  const wanted = Math.floor(sizeBytes / BLOCK) * BLOCK;
  if (!existsSync(path)) {
    await mkdir(dirname(path), { recursive: true });
    // The root directory belongs to root and is world-readable: stage 1 makes /nix under it.
    const tree = new Tree({ perm: 0o755, uid: 0, gid: 0 });
    await writeExt4(tree, path, { sizeBytes: wanted, label: STATE_DISK_LABEL, journal: true, timestamp: Math.floor(Date.now() / 1000) });
    return { path, sizeBytes: (await stat(path)).size, action: 'created' };
  }
  const current = (await stat(path)).size;
  if (wanted < current) {
    throw new FerryError(
      `the state disk ${path} is ${formatGiB(current)}, larger than the configured state-disk-size ${formatGiB(wanted)}; ferry never shrinks it (that would lose /nix)`,
      {
        exitCode: ExitCode.Config,
        hint: `set [guest] state-disk-size to at least ${formatGiB(current)}, or delete ${path} to start over with an empty /nix`,
      },
    );
  }
  if (wanted > current) {
    // Sparse growth: only the new size is recorded; the guest's resize2fs fills in the metadata.
    await truncate(path, wanted);
    return { path, sizeBytes: wanted, action: 'grown' };
  }
  return { path, sizeBytes: current, action: 'unchanged' };
}

function formatGiB(bytes: number): string {
  const gib = bytes / 2 ** 30;
  return Number.isInteger(gib) ? `${gib} GiB` : `${bytes} bytes (${gib.toFixed(2)} GiB)`;
}
