/** The superblock, the group descriptor table and the journal superblock. */
import * as c from './constants.js';
import { Ext4Error } from './errors.js';
import type { Geometry } from './layout.js';

export interface SuperblockFields {
  geometry: Geometry;
  freeBlocks: number;
  freeInodes: number;
  uuid: Buffer;
  hashSeed: Buffer;
  label: string;
  time: number;
  /** i_block of the journal inode and its size, backed up in s_jnl_blocks. */
  journalBlock?: Buffer;
  journalSize?: number;
}

export function encodeSuperblock(f: SuperblockFields, groupNumber: number): Buffer {
  const g = f.geometry;
  const b = Buffer.alloc(1024);
  const inodes = g.inodesPerGroup * g.groupCount;
  b.writeUInt32LE(inodes, 0x00);
  b.writeUInt32LE(g.totalBlocks, 0x04);
  b.writeUInt32LE(0, 0x08); // reserved blocks: none, the guest runs builds as a user
  b.writeUInt32LE(f.freeBlocks, 0x0c);
  b.writeUInt32LE(f.freeInodes, 0x10);
  b.writeUInt32LE(0, 0x14); // first data block (0 with 4 KiB blocks)
  b.writeUInt32LE(c.LOG_BLOCK_SIZE, 0x18);
  b.writeUInt32LE(c.LOG_BLOCK_SIZE, 0x1c);
  b.writeUInt32LE(c.BLOCKS_PER_GROUP, 0x20);
  b.writeUInt32LE(c.BLOCKS_PER_GROUP, 0x24);
  b.writeUInt32LE(g.inodesPerGroup, 0x28);
  b.writeUInt32LE(0, 0x2c); // last mount time: never mounted
  b.writeUInt32LE(f.time >>> 0, 0x30); // last write time
  b.writeUInt16LE(0, 0x34); // mount count
  b.writeUInt16LE(0xffff, 0x36); // max mount count: -1, no forced checks
  b.writeUInt16LE(c.EXT4_SUPER_MAGIC, 0x38);
  b.writeUInt16LE(1, 0x3a); // state: cleanly unmounted
  b.writeUInt16LE(1, 0x3c); // errors: continue
  b.writeUInt32LE(f.time >>> 0, 0x40); // last check
  b.writeUInt32LE(0, 0x48); // creator OS: Linux
  b.writeUInt32LE(1, 0x4c); // dynamic revision
  b.writeUInt32LE(c.FIRST_INO, 0x54);
  b.writeUInt16LE(c.INODE_SIZE, 0x58);
  b.writeUInt16LE(groupNumber, 0x5a);
  b.writeUInt32LE((f.journalBlock ? c.COMPAT_HAS_JOURNAL : 0) | c.COMPAT_EXT_ATTR | c.COMPAT_DIR_INDEX, 0x5c);
  b.writeUInt32LE(c.INCOMPAT_FILETYPE | c.INCOMPAT_EXTENTS | c.INCOMPAT_FLEX_BG, 0x60);
  b.writeUInt32LE(
    c.RO_COMPAT_SPARSE_SUPER | c.RO_COMPAT_LARGE_FILE | c.RO_COMPAT_HUGE_FILE | c.RO_COMPAT_DIR_NLINK | c.RO_COMPAT_EXTRA_ISIZE,
    0x64,
  );
  f.uuid.copy(b, 0x68, 0, 16);
  Buffer.from(f.label, 'utf8').subarray(0, 16).copy(b, 0x78);
  if (f.journalBlock) b.writeUInt32LE(c.JOURNAL_INO, 0xe0);
  f.hashSeed.copy(b, 0xec, 0, 16);
  b.writeUInt8(1, 0xfc); // default hash: half_md4
  b.writeUInt16LE(0, 0xfe); // descriptor size: 32 bytes (no 64bit)
  b.writeUInt32LE(0x000c, 0x100); // default mount options: user_xattr, acl
  b.writeUInt32LE(f.time >>> 0, 0x108); // mkfs time
  if (f.journalBlock) {
    f.journalBlock.copy(b, 0x10c, 0, 60);
    b.writeUInt32LE(Math.floor((f.journalSize ?? 0) / 2 ** 32), 0x10c + 60);
    b.writeUInt32LE((f.journalSize ?? 0) % 2 ** 32, 0x10c + 64);
    b.writeUInt8(1, 0xfd); // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
  }
  b.writeUInt16LE(c.EXTRA_ISIZE, 0x15c); // min extra isize
  b.writeUInt16LE(c.EXTRA_ISIZE, 0x15e); // want extra isize
  b.writeUInt32LE(0x0001, 0x160); // flags: signed directory hash, as on x86 and in the kernel's default
  b.writeUInt8(g.logGroupsPerFlex, 0x174);
  return b;
}

export interface GroupDescriptor {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeBlocks: number;
  freeInodes: number;
  usedDirs: number;
}

export function encodeGroupDescriptors(descs: GroupDescriptor[], gdtBlocks: number): Buffer {
  const b = Buffer.alloc(gdtBlocks * c.BLOCK_SIZE);
  descs.forEach((d, i) => {
    const o = i * c.GROUP_DESC_SIZE;
    b.writeUInt32LE(d.blockBitmap, o);
    b.writeUInt32LE(d.inodeBitmap, o + 4);
    b.writeUInt32LE(d.inodeTable, o + 8);
    b.writeUInt16LE(d.freeBlocks, o + 12);
    b.writeUInt16LE(d.freeInodes, o + 14);
    b.writeUInt16LE(d.usedDirs, o + 16);
  });
  return b;
}

/** The jbd2 superblock (big-endian) of an empty, clean journal. */
export function encodeJournalSuperblock(journalBlocks: number, uuid: Buffer): Buffer {
  const b = Buffer.alloc(c.BLOCK_SIZE);
  b.writeUInt32BE(c.JBD2_MAGIC, 0);
  b.writeUInt32BE(c.JBD2_SUPERBLOCK_V2, 4);
  b.writeUInt32BE(0, 8);
  b.writeUInt32BE(c.BLOCK_SIZE, 12);
  b.writeUInt32BE(journalBlocks, 16); // s_maxlen
  b.writeUInt32BE(1, 20); // s_first: first log block
  b.writeUInt32BE(1, 24); // s_sequence
  b.writeUInt32BE(0, 28); // s_start: 0 = nothing to replay
  uuid.copy(b, 48, 0, 16);
  b.writeUInt32BE(1, 64); // s_nr_users
  return b;
}

/** The given UUID, or one derived from a hash of the tree's metadata (so the same inputs give the same bytes). */
export function chooseUuid(metadataHash: Buffer, given: Buffer | string | undefined): Buffer {
  if (Buffer.isBuffer(given)) return given;
  if (typeof given === 'string') {
    const hex = given.replace(/-/g, '');
    if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Ext4Error(`UUID ${JSON.stringify(given)} is not 32 hex digits`);
    return Buffer.from(hex, 'hex');
  }
  const uuid = Buffer.from(metadataHash.subarray(0, 16));
  uuid[6] = (uuid[6] & 0x0f) | 0x50; // name-based (version 5 style), so it is a well-formed UUID
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
  return uuid;
}

export function formatUuid(uuid: Buffer): string {
  const h = uuid.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
