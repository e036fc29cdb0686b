/**
 * Linear directories: ext4_dir_entry_2 records packed into blocks, "." and ".." first. With the
 * dir_index feature on, the kernel turns a directory into a hash tree itself once it grows, so
 * writing linear ones is valid at any size (70,000 entries are ~350 blocks).
 */
import { BLOCK_SIZE } from './constants.js';

export interface DirEntry {
  name: Buffer;
  inode: number;
  fileType: number;
}

function recordLength(nameLength: number): number {
  return (8 + nameLength + 3) & ~3;
}

/** Number of blocks the entries take. */
export function directoryBlocks(nameLengths: Iterable<number>): number {
  let blocks = 1;
  let used = 0;
  for (const length of nameLengths) {
    const rec = recordLength(length);
    if (used + rec > BLOCK_SIZE) {
      blocks += 1;
      used = 0;
    }
    used += rec;
  }
  return blocks;
}

/** Encodes entries into whole blocks; the last record of each block spans to its end. */
export function encodeDirectory(entries: DirEntry[], minBlocks = 1): Buffer[] {
  const blocks: Buffer[] = [];
  let block = Buffer.alloc(BLOCK_SIZE);
  let used = 0;
  let lastOffset = -1;
  const finishBlock = () => {
    if (lastOffset >= 0) block.writeUInt16LE(BLOCK_SIZE - lastOffset, lastOffset + 4);
    blocks.push(block);
    block = Buffer.alloc(BLOCK_SIZE);
    used = 0;
    lastOffset = -1;
  };
  for (const entry of entries) {
    const rec = recordLength(entry.name.length);
    if (used + rec > BLOCK_SIZE) finishBlock();
    block.writeUInt32LE(entry.inode, used);
    block.writeUInt16LE(rec, used + 4);
    block.writeUInt8(entry.name.length, used + 6);
    block.writeUInt8(entry.fileType, used + 7);
    entry.name.copy(block, used + 8);
    lastOffset = used;
    used += rec;
  }
  finishBlock();
  while (blocks.length < minBlocks) {
    // An empty block: one unused record covering all of it.
    const empty = Buffer.alloc(BLOCK_SIZE);
    empty.writeUInt16LE(BLOCK_SIZE, 4);
    blocks.push(empty);
  }
  return blocks;
}
