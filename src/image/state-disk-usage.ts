/**
 * How full the state disk is, read on the host from its ext4 superblock without booting the
 * guest (what `ferry doctor` and a stopped guest's `ferry status` show). The superblock's free
 * count is exact after a clean unmount; while a guest runs, its kernel keeps the live count in
 * memory and writes it back only now and then, so a running guest is asked instead (`df` in the
 * guest; see the daemon's status report).
 */
import { open } from 'node:fs/promises';
import { humanBytes } from '../format.js';

export interface FilesystemUsage {
  /** The filesystem's size (blocks × block size). */
  sizeBytes: number;
  usedBytes: number;
  freeBytes: number;
  /** Free minus the blocks reserved for root (what a build, run as a build user, can use). */
  availableBytes: number;
}

const SUPERBLOCK_OFFSET = 1024;
const EXT4_MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;

/** The usage in the superblock of the ext4 image at `path`, or undefined when it is not ext4. */
export async function readFilesystemUsage(path: string): Promise<FilesystemUsage | undefined> {
  const handle = await open(path, 'r');
  const sb = Buffer.alloc(1024);
  try {
    const { bytesRead } = await handle.read(sb, 0, sb.length, SUPERBLOCK_OFFSET);
    if (bytesRead < sb.length) return undefined;
  } finally {
    await handle.close();
  }
  if (sb.readUInt16LE(0x38) !== EXT4_MAGIC) return undefined;
  const wide = (sb.readUInt32LE(0x60) & INCOMPAT_64BIT) !== 0;
  const count = (lo: number, hi: number) => sb.readUInt32LE(lo) + (wide ? sb.readUInt32LE(hi) * 2 ** 32 : 0);
  const blockSize = 1024 * 2 ** sb.readUInt32LE(0x18);
  const blocks = count(0x04, 0x150);
  const reserved = count(0x08, 0x154);
  const free = count(0x0c, 0x158);
  return {
    sizeBytes: blocks * blockSize,
    usedBytes: (blocks - free) * blockSize,
    freeBytes: free * blockSize,
    availableBytes: Math.max(0, free - reserved) * blockSize,
  };
}

/** The state disk's use as `ferry status` and `ferry doctor` report it, and where it was read. */
export interface StateDiskUsage extends FilesystemUsage {
  /** 'guest': `df` in the running guest (live); 'superblock': read on the host (as of the last clean stop). */
  readonly source: 'guest' | 'superblock';
}

/** "3.1 GiB of 40.0 GiB used (8%), 36.9 GiB free" and, given min-free, "; garbage collected below 4.0 GiB free". */
export function describeUsage(usage: FilesystemUsage, minFreeBytes?: number): string {
  const percent = usage.sizeBytes > 0 ? Math.round((usage.usedBytes / usage.sizeBytes) * 100) : 0;
  const gc = minFreeBytes === undefined ? '' : `; garbage collected below ${humanBytes(minFreeBytes)} free`;
  return `${humanBytes(usage.usedBytes)} of ${humanBytes(usage.sizeBytes)} used (${percent}%), ${humanBytes(usage.availableBytes)} free${gc}`;
}
