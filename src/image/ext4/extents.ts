/**
 * Extent trees: the map from a file's logical blocks to disk blocks. Up to four extents live in
 * the inode itself; more need index and leaf blocks, as many levels deep as the count requires.
 */
import type { BlockAllocator } from './allocator.js';
import { EXTENT_MAGIC, EXTENTS_IN_INODE, EXTENTS_PER_BLOCK, BLOCK_SIZE, MAX_EXTENT_LEN } from './constants.js';
import type { ImageFile } from './image-file.js';
import type { Geometry } from './layout.js';

export interface Extent {
  logical: number;
  physical: number;
  length: number;
}

/**
 * Appends `count` blocks from `physical` at logical block `logical`, growing the last extent when
 * contiguous, and starting new ones at MAX_EXTENT_LEN.
 */
export function appendBlocks(extents: Extent[], logical: number, physical: number, count: number): void {
  while (count > 0) {
    const last = extents[extents.length - 1];
    if (last && last.logical + last.length === logical && last.physical + last.length === physical && last.length < MAX_EXTENT_LEN) {
      const n = Math.min(count, MAX_EXTENT_LEN - last.length);
      last.length += n;
      logical += n;
      physical += n;
      count -= n;
    } else {
      const n = Math.min(count, MAX_EXTENT_LEN);
      extents.push({ logical, physical, length: n });
      logical += n;
      physical += n;
      count -= n;
    }
  }
}

/** ext4_extent_header: magic, entries in use, capacity, depth (0 = leaves). */
export function writeExtentHeader(out: Buffer, offset: number, entries: number, max: number, depth: number): void {
  out.writeUInt16LE(EXTENT_MAGIC, offset);
  out.writeUInt16LE(entries, offset + 2);
  out.writeUInt16LE(max, offset + 4);
  out.writeUInt16LE(depth, offset + 6);
  out.writeUInt32LE(0, offset + 8);
}

/** ext4_extent: a run of `length` blocks at logical block `logical`, on disk at `physical`. */
export function writeExtent(out: Buffer, offset: number, logical: number, length: number, physical: number): void {
  out.writeUInt32LE(logical, offset);
  out.writeUInt16LE(length, offset + 4);
  out.writeUInt16LE(Math.floor(physical / 2 ** 32), offset + 6);
  out.writeUInt32LE(physical % 2 ** 32, offset + 8);
}

/** Writes up to four extents as the in-inode root (depth 0) at `offset` (the inode's i_block). */
export function writeExtentRoot(extents: Extent[], out: Buffer, offset: number): void {
  if (extents.length > EXTENTS_IN_INODE) throw new Error('internal: more than four extents need a tree');
  writeExtentHeader(out, offset, extents.length, EXTENTS_IN_INODE, 0);
  extents.forEach((e, i) => writeExtent(out, offset + 12 + i * 12, e.logical, e.length, e.physical));
}

/** How many tree blocks (beyond the inode) `count` extents need. */
export function treeBlocksFor(count: number): number {
  let blocks = 0;
  let entries = count;
  while (entries > EXTENTS_IN_INODE) {
    const nodes = Math.ceil(entries / EXTENTS_PER_BLOCK);
    blocks += nodes;
    entries = nodes;
  }
  return blocks;
}

export interface EncodedTree {
  /** The 60 bytes of i_block. */
  root: Buffer;
  /** Tree blocks to write, with their block numbers. */
  blocks: Array<{ block: number; data: Buffer }>;
}

/**
 * Encodes an extent tree. `allocBlock` gives a disk block for each tree node; the tree is built
 * bottom-up, leaves first.
 */
export function encodeExtentTree(extents: Extent[], allocBlock: () => number): EncodedTree {
  const blocks: Array<{ block: number; data: Buffer }> = [];
  // Each level is a list of entries, each entry either an extent (leaf level) or an index.
  type Entry = { firstLogical: number; write: (buf: Buffer, offset: number) => void };
  let entries: Entry[] = extents.map((e) => ({
    firstLogical: e.logical,
    write: (buf, off) => writeExtent(buf, off, e.logical, e.length, e.physical),
  }));
  let depth = 0;
  while (entries.length > EXTENTS_IN_INODE) {
    const next: Entry[] = [];
    for (let i = 0; i < entries.length; i += EXTENTS_PER_BLOCK) {
      const chunk = entries.slice(i, i + EXTENTS_PER_BLOCK);
      const data = Buffer.alloc(BLOCK_SIZE);
      writeNode(data, chunk, EXTENTS_PER_BLOCK, depth);
      const block = allocBlock();
      blocks.push({ block, data });
      next.push({
        firstLogical: chunk[0].firstLogical,
        write: (buf, off) => {
          buf.writeUInt32LE(chunk[0].firstLogical, off);
          buf.writeUInt32LE(block % 2 ** 32, off + 4);
          buf.writeUInt16LE(Math.floor(block / 2 ** 32), off + 8);
          buf.writeUInt16LE(0, off + 10);
        },
      });
    }
    entries = next;
    depth += 1;
  }
  const root = Buffer.alloc(60);
  writeNode(root, entries, EXTENTS_IN_INODE, depth);
  return { root, blocks };

  function writeNode(buf: Buffer, chunk: Entry[], max: number, nodeDepth: number): void {
    writeExtentHeader(buf, 0, chunk.length, max, nodeDepth);
    chunk.forEach((entry, i) => entry.write(buf, 12 + i * 12));
  }
}

/** The journal inode's blocks: contiguous runs from the allocator, and the extent tree over them. */
export interface Journal {
  extents: Extent[];
  root: Buffer;
  treeBlocks: Array<{ block: number; data: Buffer }>;
}

export function placeJournal(allocator: BlockAllocator, g: Geometry): Journal | undefined {
  if (g.journalBlocks === 0) return undefined;
  const extents: Extent[] = [];
  let logical = 0;
  while (logical < g.journalBlocks) {
    const run = allocator.allocRun(Math.min(g.journalBlocks - logical, MAX_EXTENT_LEN));
    extents.push({ logical, physical: run.start, length: run.length });
    logical += run.length;
  }
  const tree = encodeExtentTree(extents, () => allocator.allocBlock());
  return { extents, root: tree.root, treeBlocks: tree.blocks };
}

/** Writes extent tree blocks for nodes with more than four extents; returns their i_block and tree block counts. */
export function writeExtentTrees(lists: Map<number, Extent[]>, allocator: BlockAllocator, image: ImageFile): Map<number, { root: Buffer; treeBlocks: number }> {
  const roots = new Map<number, { root: Buffer; treeBlocks: number }>();
  for (const [ino, extents] of lists) {
    if (extents.length <= EXTENTS_IN_INODE) continue;
    const encoded = encodeExtentTree(extents, () => allocator.allocBlock());
    for (const { block, data } of encoded.blocks) image.writeAt(data, block * BLOCK_SIZE);
    if (encoded.blocks.length !== treeBlocksFor(extents.length)) throw new Error('internal: extent tree size mismatch');
    roots.set(ino, { root: encoded.root, treeBlocks: encoded.blocks.length });
  }
  return roots;
}
