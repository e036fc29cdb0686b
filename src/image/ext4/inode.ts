/** Encoding of one 256-byte ext4 inode. */
import { EXTRA_ISIZE, INODE_SIZE } from './constants.js';

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
  /** The 60 bytes of i_block (extent root, fast symlink target or device number). */
  block: Buffer;
}

/** Seconds since the epoch → the 32-bit field and the epoch bits of the *_extra field. */
function splitTime(time: number): [number, number] {
  const seconds = Math.floor(time);
  const low = ((seconds % 2 ** 32) + 2 ** 32) % 2 ** 32;
  // The extra field's two low bits extend the signed 32-bit seconds: (seconds - low_signed) >> 32.
  const lowSigned = low >= 2 ** 31 ? low - 2 ** 32 : low;
  const epoch = Math.round((seconds - lowSigned) / 2 ** 32) & 3;
  return [low, epoch];
}

export function encodeInode(f: InodeFields, out: Buffer, offset: number): void {
  const b = out.subarray(offset, offset + INODE_SIZE);
  b.fill(0);
  const [time, epoch] = splitTime(f.time);
  const sectors = f.blocks * 8;
  b.writeUInt16LE(f.mode & 0xffff, 0x00);
  b.writeUInt16LE(f.uid & 0xffff, 0x02);
  b.writeUInt32LE(f.size % 2 ** 32, 0x04);
  b.writeUInt32LE(time, 0x08); // atime
  b.writeUInt32LE(time, 0x0c); // ctime
  b.writeUInt32LE(time, 0x10); // mtime
  b.writeUInt16LE(f.gid & 0xffff, 0x18);
  b.writeUInt16LE(f.links, 0x1a);
  b.writeUInt32LE(sectors % 2 ** 32, 0x1c);
  b.writeUInt32LE(f.flags, 0x20);
  f.block.copy(b, 0x28, 0, 60);
  b.writeUInt32LE(Math.floor(f.size / 2 ** 32), 0x6c);
  b.writeUInt16LE(Math.floor(sectors / 2 ** 32) & 0xffff, 0x74);
  b.writeUInt16LE((f.uid >>> 16) & 0xffff, 0x78);
  b.writeUInt16LE((f.gid >>> 16) & 0xffff, 0x7a);
  b.writeUInt16LE(EXTRA_ISIZE, 0x80);
  b.writeUInt32LE(epoch, 0x84); // ctime_extra
  b.writeUInt32LE(epoch, 0x88); // mtime_extra
  b.writeUInt32LE(epoch, 0x8c); // atime_extra
  b.writeUInt32LE(time, 0x90); // crtime
  b.writeUInt32LE(epoch, 0x94); // crtime_extra
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
