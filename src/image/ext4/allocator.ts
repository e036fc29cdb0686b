/**
 * Block allocation. Blocks are handed out in order from a cursor, stepping over the superblock
 * copies, so file data lands contiguously and the image file is written almost sequentially.
 * The used-block bitmap is exact: it is what the group bitmaps are written from.
 */
import * as c from './constants.js';
import type { ImageFile } from './image-file.js';
import type { Geometry } from './layout.js';
import type { GroupDescriptor } from './superblock.js';

export class OutOfSpaceError extends Error {}

export interface Run {
  start: number;
  length: number;
}

export class BlockAllocator {
  readonly used: Uint8Array;
  private cursor = 0;
  /** Sorted, disjoint [start, end) ranges the cursor must jump over. */
  private readonly reserved: Array<[number, number]> = [];
  private reservedIndex = 0;
  /** Single blocks skipped when a contiguous run did not fit; reused for one-block allocations. */
  private readonly gaps: number[] = [];

  constructor(private readonly geometry: Geometry) {
    this.used = new Uint8Array(Math.ceil(geometry.totalBlocks / 8));
    for (const group of geometry.superblockGroups) {
      const start = group * c.BLOCKS_PER_GROUP;
      const end = Math.min(start + 1 + geometry.gdtBlocks, geometry.totalBlocks);
      this.reserved.push([start, end]);
      this.markUsed(start, end - start);
    }
    this.skipReserved();
  }

  get usedBlocks(): number {
    let count = 0;
    for (const byte of this.used) count += POPCOUNT[byte];
    return count;
  }

  /** The next block the cursor would hand out. */
  get next(): number {
    this.skipReserved();
    return this.cursor;
  }

  /** Blocks left before the next superblock copy (or the end of the disk). */
  contiguousAvailable(): number {
    this.skipReserved();
    const limit = this.reservedIndex < this.reserved.length ? this.reserved[this.reservedIndex][0] : this.geometry.totalBlocks;
    return limit - this.cursor;
  }

  /** Takes up to `maxLength` contiguous blocks at the cursor. */
  allocRun(maxLength: number): Run {
    const available = this.contiguousAvailable();
    if (available <= 0) throw new OutOfSpaceError('no free blocks left');
    const length = Math.min(available, maxLength);
    const run = { start: this.cursor, length };
    this.markUsed(run.start, length);
    this.cursor += length;
    return run;
  }

  /** Takes exactly `length` contiguous blocks, leaving any shorter stretch before it as gaps. */
  allocContiguous(length: number): number {
    while (this.contiguousAvailable() < length) {
      if (this.cursor >= this.geometry.totalBlocks) throw new OutOfSpaceError(`no ${length} contiguous free blocks left`);
      const rest = this.contiguousAvailable();
      for (let i = 0; i < rest; i++) this.gaps.push(this.cursor + i);
      this.cursor += rest;
    }
    return this.allocRun(length).start;
  }

  /** Takes one block, from the gaps first. */
  allocBlock(): number {
    const gap = this.gaps.shift();
    if (gap !== undefined) {
      this.markUsed(gap, 1);
      return gap;
    }
    return this.allocRun(1).start;
  }

  isUsed(block: number): boolean {
    return (this.used[block >> 3] & (1 << (block & 7))) !== 0;
  }

  private markUsed(start: number, length: number): void {
    for (let b = start; b < start + length; b++) this.used[b >> 3] |= 1 << (b & 7);
  }

  private skipReserved(): void {
    while (this.reservedIndex < this.reserved.length) {
      const [start, end] = this.reserved[this.reservedIndex];
      if (this.cursor < start) return;
      if (this.cursor < end) this.cursor = end;
      this.reservedIndex += 1;
    }
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, n) => {
  let c = 0;
  for (let v = n; v; v >>= 1) c += v & 1;
  return c;
});

export interface GroupLocations {
  blockBitmaps: number[];
  inodeBitmaps: number[];
  inodeTables: number[];
}

/** All groups' bitmaps and inode tables, packed together after group 0's GDT (flex_bg). */
export function placeGroupMetadata(allocator: BlockAllocator, g: Geometry): GroupLocations {
  const blockBitmaps: number[] = [];
  const inodeBitmaps: number[] = [];
  const inodeTables: number[] = [];
  for (let i = 0; i < g.groupCount; i++) blockBitmaps.push(allocator.allocBlock());
  for (let i = 0; i < g.groupCount; i++) inodeBitmaps.push(allocator.allocBlock());
  for (let i = 0; i < g.groupCount; i++) inodeTables.push(allocator.allocContiguous(g.inodeTableBlocks));
  return { blockBitmaps, inodeBitmaps, inodeTables };
}

/** Block and inode bitmaps of every group, and each group's free counts in its descriptor. */
export function writeBitmapsAndCounts(
  allocator: BlockAllocator,
  g: Geometry,
  locations: GroupLocations,
  descriptors: GroupDescriptor[],
  lastUsedInode: number,
  image: ImageFile,
): void {
  const blockBitmap = Buffer.alloc(c.BLOCK_SIZE);
  const inodeBitmap = Buffer.alloc(c.BLOCK_SIZE);
  for (let group = 0; group < g.groupCount; group++) {
    const first = group * c.BLOCKS_PER_GROUP;
    const count = Math.min(c.BLOCKS_PER_GROUP, g.totalBlocks - first);
    blockBitmap.fill(0);
    let used = 0;
    for (let i = 0; i < c.BLOCKS_PER_GROUP; i++) {
      // Bits past the end of the disk are set, as the kernel expects.
      if (i >= count || allocator.isUsed(first + i)) {
        blockBitmap[i >> 3] |= 1 << (i & 7);
        if (i < count) used += 1;
      }
    }
    descriptors[group].freeBlocks = count - used;
    image.writeAt(blockBitmap, locations.blockBitmaps[group] * c.BLOCK_SIZE);

    inodeBitmap.fill(0);
    const firstIno = group * g.inodesPerGroup + 1;
    let usedInodes = 0;
    for (let i = 0; i < c.BLOCK_SIZE * 8; i++) {
      if (i >= g.inodesPerGroup || firstIno + i <= lastUsedInode) {
        inodeBitmap[i >> 3] |= 1 << (i & 7);
        if (i < g.inodesPerGroup) usedInodes += 1;
      }
    }
    descriptors[group].freeInodes = g.inodesPerGroup - usedInodes;
    image.writeAt(inodeBitmap, locations.inodeBitmaps[group] * c.BLOCK_SIZE);
  }
}
