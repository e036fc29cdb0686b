/**
 * doctor's look at the state disk (the guest's /nix): how full it is — live from a running
 * guest through the daemon's status, else from its superblock on the host — and whether the
 * configured size still fits it (ferry never shrinks it, so a smaller size stops the next boot).
 */
import { existsSync, statSync } from 'node:fs';
import type { FerryConfig } from '../config/types.js';
import { callDaemon } from '../daemon/control-client.js';
import { humanBytes } from '../format.js';
import { describeUsage, readFilesystemUsage, type StateDiskUsage } from '../image/state-disk-usage.js';

/** A doctor check (doctor.ts's `Check`, restated so that doctor.ts alone imports this file). */
interface StateDiskCheck {
  name: 'state disk';
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  fix?: string;
}

export async function checkStateDisk(file: string, config: FerryConfig, live?: StateDiskUsage): Promise<StateDiskCheck> {
  const name = 'state disk';
  const wanted = config.guest.stateDiskSizeBytes;
  if (!existsSync(file)) return { name, status: 'ok', detail: `${file} is made at the first boot (${humanBytes(wanted)}, sparse)` };
  const fileSize = statSync(file).size;
  if (fileSize > wanted) {
    return {
      name,
      status: 'fail',
      detail: `${file} is ${humanBytes(fileSize)}, guest.state-disk-size says ${humanBytes(wanted)}: ferry never shrinks it (that would lose /nix), so the guest will not boot`,
      fix: `set guest.state-disk-size to at least ${humanBytes(fileSize)}, or delete ${file} to start with an empty /nix`,
    };
  }
  const usage = live ?? (await readFilesystemUsage(file).then((found) => found && { ...found, source: 'superblock' as const }));
  if (usage === undefined) return { name, status: 'fail', detail: `${file} holds no ext4 filesystem`, fix: `delete ${file}: the next boot makes a new, empty one` };
  const where = usage.source === 'guest' ? 'in the running guest' : 'as of the guest’s last stop';
  const detail = `${file}: ${describeUsage(usage, config.guest.nix.minFreeBytes)} (${where})`;
  if (usage.availableBytes < config.guest.nix.minFreeBytes) {
    return { name, status: 'warn', detail: `${detail}; the next build starts with a garbage collection`, fix: `raise guest.state-disk-size (now ${humanBytes(wanted)}) if builds need more room` };
  }
  return { name, status: 'ok', detail };
}

/** The live figures of a running guest, from the daemon's status; undefined when there are none. */
export async function liveStateDiskUsage(controlSocket: string): Promise<StateDiskUsage | undefined> {
  try {
    const status = await callDaemon<{ stateDisk?: StateDiskUsage }>(controlSocket, 'GET', '/status', 5000);
    return status.stateDisk?.source === 'guest' ? status.stateDisk : undefined;
  } catch {
    return undefined; // no daemon: the superblock it is
  }
}
