/**
 * The geometry of the filesystem: how many block groups, where the superblock copies sit, how
 * many inodes. Everything the writer places later is allocated around these fixed areas.
 *
 * All groups form one flex group, so every bitmap and inode table is packed near the start of the
 * disk (as flex_bg allows) and file data runs contiguously across group boundaries, broken only by
 * the backup superblocks of sparse_super.
 */
import {
  BLOCK_SIZE,
  BLOCKS_PER_GROUP,
  GROUP_DESC_SIZE,
  INODES_PER_BLOCK,
  INODE_SIZE,
  defaultJournalBlocks,
} from './constants.js';
import { Ext4Error } from './errors.js';

export interface Geometry {
  totalBlocks: number;
  groupCount: number;
  inodesPerGroup: number;
  inodeTableBlocks: number;
  gdtBlocks: number;
  journalBlocks: number;
  logGroupsPerFlex: number;
  /** Groups that carry a superblock + GDT copy (group 0 carries the primary). */
  superblockGroups: number[];
}

export class LayoutError extends Error {}

/** Whether a group holds a superblock copy under sparse_super: 0, 1 and powers of 3, 5 and 7. */
export function hasSuperblockCopy(group: number): boolean {
  if (group <= 1) return true;
  for (const base of [3, 5, 7]) {
    let n = base;
    while (n < group) n *= base;
    if (n === group) return true;
  }
  return false;
}

const MAX_BLOCKS = 2 ** 32 - 1; // no 64bit feature: 32-bit block numbers (16 TiB)
const MIN_LAST_GROUP_BLOCKS = 256;

export function computeGeometry(requestedBlocks: number, inodesWanted: number, withJournal = true): Geometry {
  let totalBlocks = Math.floor(requestedBlocks);
  if (totalBlocks > MAX_BLOCKS) throw new LayoutError(`image too large: at most ${MAX_BLOCKS} blocks of ${BLOCK_SIZE} bytes`);
  if (totalBlocks < 64) throw new LayoutError(`image too small: ${totalBlocks} blocks; at least 64 blocks (256 KiB) are needed`);
  let groupCount = Math.ceil(totalBlocks / BLOCKS_PER_GROUP);
  // A short last group that cannot hold its own superblock copy is dropped, as mke2fs does.
  const lastGroupBlocks = totalBlocks - (groupCount - 1) * BLOCKS_PER_GROUP;
  if (groupCount > 1 && lastGroupBlocks < MIN_LAST_GROUP_BLOCKS) {
    groupCount -= 1;
    totalBlocks = groupCount * BLOCKS_PER_GROUP;
  }
  const maxInodesPerGroup = BLOCKS_PER_GROUP; // one inode bitmap block
  let inodesPerGroup = Math.ceil(inodesWanted / groupCount / INODES_PER_BLOCK) * INODES_PER_BLOCK;
  inodesPerGroup = Math.max(inodesPerGroup, INODES_PER_BLOCK);
  if (inodesPerGroup > maxInodesPerGroup) {
    throw new LayoutError(
      `${inodesWanted} inodes do not fit in ${groupCount} block groups (at most ${maxInodesPerGroup} each): give a larger size`,
    );
  }
  if (inodesPerGroup * groupCount > MAX_BLOCKS) inodesPerGroup = Math.floor(MAX_BLOCKS / groupCount / INODES_PER_BLOCK) * INODES_PER_BLOCK;
  const inodeTableBlocks = (inodesPerGroup * INODE_SIZE) / BLOCK_SIZE;
  const gdtBlocks = Math.ceil((groupCount * GROUP_DESC_SIZE) / BLOCK_SIZE);
  const superblockGroups: number[] = [];
  for (let g = 0; g < groupCount; g++) if (hasSuperblockCopy(g)) superblockGroups.push(g);
  const logGroupsPerFlex = Math.max(4, Math.ceil(Math.log2(groupCount)));
  return {
    totalBlocks,
    groupCount,
    inodesPerGroup,
    inodeTableBlocks,
    gdtBlocks,
    journalBlocks: withJournal ? defaultJournalBlocks(totalBlocks) : 0,
    logGroupsPerFlex,
    superblockGroups,
  };
}

/** Blocks taken by fixed metadata: superblock copies with their GDTs, bitmaps, inode tables. */
export function metadataBlocks(g: Geometry): number {
  return g.superblockGroups.length * (1 + g.gdtBlocks) + g.groupCount * (2 + g.inodeTableBlocks);
}

/** The writer's options that decide the geometry. */
export interface GeometryOptions {
  /** Image size in bytes; automatic (content plus headroom) when omitted. */
  sizeBytes?: number;
  /** Inode count; automatic when omitted. */
  inodes?: number;
  /** Free space to add when sizing automatically, as a fraction of the content (default 0.2). */
  headroom?: number;
  journal?: boolean;
}

/** The geometry for the planned content: of the given size, or the content plus headroom rounded up. */
export function chooseGeometry(plan: { usedInodes: number; estimatedBlocks: number }, options: GeometryOptions): Geometry {
  const usedInodes = plan.usedInodes;
  const withJournal = options.journal ?? true;
  const inodesFor = (blocks: number) =>
    options.inodes ?? Math.max(Math.ceil(usedInodes * 1.1) + 64, Math.floor((blocks * BLOCK_SIZE) / 16384));
  if (options.sizeBytes !== undefined) {
    const blocks = Math.floor(options.sizeBytes / BLOCK_SIZE);
    const geometry = computeGeometry(blocks, inodesFor(blocks), withJournal);
    if (geometry.inodesPerGroup * geometry.groupCount < usedInodes) {
      throw new Ext4Error(`${usedInodes} inodes needed but the image has room for ${geometry.inodesPerGroup * geometry.groupCount}`);
    }
    return geometry;
  }
  const headroom = options.headroom ?? 0.2;
  const content = plan.estimatedBlocks;
  let blocks = Math.ceil(content * (1 + headroom)) + 1024;
  // Metadata and journal depend on the size; two rounds settle it.
  for (let round = 0; round < 3; round++) {
    const g = computeGeometry(Math.max(blocks, 4096), inodesFor(blocks), withJournal);
    blocks = Math.ceil(content * (1 + headroom)) + 1024 + metadataBlocks(g) + g.journalBlocks;
  }
  // Round up to 16 MiB, and keep a last group long enough to keep.
  blocks = Math.ceil(blocks / 4096) * 4096;
  if (blocks % BLOCKS_PER_GROUP !== 0 && blocks % BLOCKS_PER_GROUP < 512) blocks += 512;
  return computeGeometry(blocks, inodesFor(blocks), withJournal);
}
