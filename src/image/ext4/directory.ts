/**
 * Linear directories: ext4_dir_entry_2 records packed into blocks, "." and ".." first. With the
 * dir_index feature on, the kernel turns a directory into a hash tree itself once it grows, so
 * writing linear ones is valid at any size (70,000 entries are ~350 blocks).
 */
import type { Inode } from '../tree.js';
import { BLOCK_SIZE, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_FIFO, FT_REG, FT_SOCK, FT_SYMLINK } from './constants.js';

export interface DirEntry {
  /** The name as a string (UTF-8 on disk), so no buffer is made per entry. */
  name: string;
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

/**
 * Encodes entries into whole blocks, handing each block to `emit` as soon as it is full (one
 * block buffer is reused); the last record of each block spans to its end. Returns the number
 * of blocks.
 */
export function encodeDirectory(entries: Iterable<DirEntry>, emit: (block: Buffer) => void, minBlocks = 1): number {
  const block = Buffer.alloc(BLOCK_SIZE);
  let blocks = 0;
  let used = 0;
  let lastOffset = -1;
  const finishBlock = () => {
    if (lastOffset >= 0) block.writeUInt16LE(BLOCK_SIZE - lastOffset, lastOffset + 4);
    emit(block);
    block.fill(0);
    blocks += 1;
    used = 0;
    lastOffset = -1;
  };
  for (const entry of entries) {
    const nameLength = Buffer.byteLength(entry.name);
    const rec = recordLength(nameLength);
    if (used + rec > BLOCK_SIZE) finishBlock();
    block.writeUInt32LE(entry.inode, used);
    block.writeUInt16LE(rec, used + 4);
    block.writeUInt8(nameLength, used + 6);
    block.writeUInt8(entry.fileType, used + 7);
    block.write(entry.name, used + 8, 'utf8');
    lastOffset = used;
    used += rec;
  }
  finishBlock();
  while (blocks < minBlocks) {
    // An empty block: one unused record covering all of it.
    block.writeUInt16LE(BLOCK_SIZE, 4);
    emit(block);
    block.fill(0);
    blocks += 1;
  }
  return blocks;
}

/** The file_type byte of a directory entry for a node of this kind. */
export function fileType(kind: Inode['kind']): number {
  switch (kind) {
    case 'file':
      return FT_REG;
    case 'dir':
      return FT_DIR;
    case 'symlink':
      return FT_SYMLINK;
    case 'chardev':
      return FT_CHRDEV;
    case 'blockdev':
      return FT_BLKDEV;
    case 'fifo':
      return FT_FIFO;
    case 'socket':
      return FT_SOCK;
  }
}
