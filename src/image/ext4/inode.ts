/**
 * Encoding of one 256-byte ext4 inode, straight into the inode table buffer. The caller writes
 * i_block (extent root, fast symlink target or device number) at offset 0x28 afterwards.
 */
import { EXTRA_ISIZE } from './constants.js';

export interface InodeFields {
  mode: number; // file type bits | permission bits
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch, used for atime, ctime, mtime and crtime alike. */
  time: number;
  links: number;
  /** Blocks used (data + extent tree), in filesystem blocks. */
  blocks: number;
  flags: number;
}

/** Seconds since the epoch → the 32-bit time field. */
function timeLow(time: number): number {
  const seconds = Math.floor(time);
  return ((seconds % 2 ** 32) + 2 ** 32) % 2 ** 32;
}

/** The epoch bits of the *_extra field: they extend the signed 32-bit seconds past 2038. */
function timeEpoch(time: number): number {
  const seconds = Math.floor(time);
  const low = timeLow(seconds);
  const lowSigned = low >= 2 ** 31 ? low - 2 ** 32 : low;
  return Math.round((seconds - lowSigned) / 2 ** 32) & 3;
}

export function encodeInode(f: InodeFields, out: Buffer, offset: number): void {
  writeInodeFields(out, offset, f.mode, f.uid, f.gid, f.size, f.time, f.links, f.blocks, f.flags);
}

/**
 * The same with plain arguments, writing at absolute offsets: called once per inode, it
 * allocates nothing. An object or a view per inode adds up, on large trees, to a hundred
 * megabytes of short-lived garbage that V8 promotes instead of freeing.
 */
export function writeInodeFields(
  out: Buffer,
  o: number,
  mode: number,
  uid: number,
  gid: number,
  size: number,
  seconds: number,
  links: number,
  blocks: number,
  flags: number,
): void {
  const time = timeLow(seconds);
  const epoch = timeEpoch(seconds);
  const sectors = blocks * 8;
  out.writeUInt16LE(mode & 0xffff, o + 0x00);
  out.writeUInt16LE(uid & 0xffff, o + 0x02);
  out.writeUInt32LE(size % 2 ** 32, o + 0x04);
  out.writeUInt32LE(time, o + 0x08); // atime
  out.writeUInt32LE(time, o + 0x0c); // ctime
  out.writeUInt32LE(time, o + 0x10); // mtime
  out.writeUInt16LE(gid & 0xffff, o + 0x18);
  out.writeUInt16LE(links, o + 0x1a);
  out.writeUInt32LE(sectors % 2 ** 32, o + 0x1c);
  out.writeUInt32LE(flags, o + 0x20);
  out.writeUInt32LE(Math.floor(size / 2 ** 32), o + 0x6c);
  out.writeUInt16LE(Math.floor(sectors / 2 ** 32) & 0xffff, o + 0x74);
  out.writeUInt16LE((uid >>> 16) & 0xffff, o + 0x78);
  out.writeUInt16LE((gid >>> 16) & 0xffff, o + 0x7a);
  out.writeUInt16LE(EXTRA_ISIZE, o + 0x80);
  out.writeUInt32LE(epoch, o + 0x84); // ctime_extra
  out.writeUInt32LE(epoch, o + 0x88); // mtime_extra
  out.writeUInt32LE(epoch, o + 0x8c); // atime_extra
  out.writeUInt32LE(time, o + 0x90); // crtime
  out.writeUInt32LE(epoch, o + 0x94); // crtime_extra
}

/** i_block for a device node, in the kernel's old 16-bit or new 32-bit encoding. */
export function deviceBlock(major: number, minor: number): Buffer {
  const block = Buffer.alloc(60);
  if (major < 256 && minor < 256) {
    block.writeUInt32LE((major << 8) | minor, 0);
  } else {
    block.writeUInt32LE(((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0, 4);
  }
  return block;
}
