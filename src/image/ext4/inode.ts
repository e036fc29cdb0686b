/**
 * Inodes: the encoding of one 256-byte ext4 inode straight into the inode table buffer, then
 * i_block (extent root, fast symlink target or device number) at offset 0x28; and the inode
 * tables of all groups, written from the plan one group's table at a time.
 */
import type { Inode } from '../tree.js';
import type { GroupLocations } from './allocator.js';
import * as c from './constants.js';
import { writeExtent, writeExtentHeader, writeExtentRoot as writeExtentRootList, type Journal } from './extents.js';
import type { ImageFile } from './image-file.js';
import type { Geometry } from './layout.js';
import type { Plan } from './plan.js';
import type { GroupDescriptor } from './superblock.js';

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
  out.writeUInt16LE(c.EXTRA_ISIZE, o + 0x80);
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

/** Every inode table, group by group (the journal inode, then the tree's nodes); returns the group descriptors with their directory counts. */
export function writeInodeTables(
  plan: Plan,
  g: Geometry,
  locations: GroupLocations,
  extentRoots: Map<number, { root: Buffer; treeBlocks: number }>,
  journal: Journal | undefined,
  time: number,
  image: ImageFile,
): GroupDescriptor[] {
  const descriptors: GroupDescriptor[] = [];
  for (let i = 0; i < g.groupCount; i++) {
    descriptors.push({ blockBitmap: locations.blockBitmaps[i], inodeBitmap: locations.inodeBitmaps[i], inodeTable: locations.inodeTables[i], freeBlocks: 0, freeInodes: 0, usedDirs: 0 });
  }
  const tableBytes = g.inodesPerGroup * c.INODE_SIZE;
  const table = Buffer.alloc(tableBytes);
  let tableGroup = 0;
  let dirty = false;
  const flush = () => {
    if (dirty) image.writeAt(table, locations.inodeTables[tableGroup] * c.BLOCK_SIZE);
    table.fill(0);
    dirty = false;
  };
  const slot = (ino: number): number => {
    const group = Math.floor((ino - 1) / g.inodesPerGroup);
    if (group !== tableGroup) {
      flush();
      tableGroup = group;
    }
    dirty = true;
    return ((ino - 1) % g.inodesPerGroup) * c.INODE_SIZE;
  };

  if (journal) {
    for (const { block, data } of journal.treeBlocks) image.writeAt(data, block * c.BLOCK_SIZE);
    const offset = slot(c.JOURNAL_INO);
    encodeInode(
      { mode: c.S_IFREG | 0o600, uid: 0, gid: 0, size: g.journalBlocks * c.BLOCK_SIZE, time, links: 1, blocks: g.journalBlocks + journal.treeBlocks.length, flags: c.INODE_FLAG_EXTENTS },
      table,
      offset,
    );
    journal.root.copy(table, offset + I_BLOCK);
  }
  for (let ino = 1; ino < plan.end; ino++) {
    const node = plan.nodes[ino];
    if (!node) continue;
    if (node.kind === 'dir') descriptors[Math.floor((ino - 1) / g.inodesPerGroup)].usedDirs += 1;
    writeInode(plan, ino, node, extentRoots.get(ino), table, slot(ino));
  }
  flush();
  return descriptors;
}

/** Offset of i_block within an inode. */
const I_BLOCK = 0x28;

function writeInode(plan: Plan, ino: number, node: Inode, tree: { root: Buffer; treeBlocks: number } | undefined, table: Buffer, o: number): void {
  const links = plan.links[ino];
  const extentBlocks = plan.dataBlocks[ino] + (tree?.treeBlocks ?? 0);
  const root = () => {
    if (tree) tree.root.copy(table, o + I_BLOCK);
    else writeExtentRoot(plan, ino, table, o + I_BLOCK);
  };
  switch (node.kind) {
    case 'dir': {
      const subdirs = plan.subdirs[ino];
      const dirLinks = subdirs + 2 > c.MAX_LINK_COUNT ? 1 : subdirs + 2;
      writeInodeFields(table, o, c.S_IFDIR | node.perm, node.uid, node.gid, plan.sizes[ino], node.mtime, dirLinks, extentBlocks, c.INODE_FLAG_EXTENTS);
      return root();
    }
    case 'file':
      writeInodeFields(table, o, c.S_IFREG | node.perm, node.uid, node.gid, node.size, node.mtime, links, extentBlocks, c.INODE_FLAG_EXTENTS);
      return root();
    case 'symlink': {
      const size = plan.sizes[ino];
      if (size <= c.FAST_SYMLINK_MAX) {
        writeInodeFields(table, o, c.S_IFLNK | node.perm, node.uid, node.gid, size, node.mtime, links, 0, 0);
        table.write(node.target ?? '', o + I_BLOCK, 'utf8');
        return;
      }
      writeInodeFields(table, o, c.S_IFLNK | node.perm, node.uid, node.gid, size, node.mtime, links, extentBlocks, c.INODE_FLAG_EXTENTS);
      return root();
    }
    case 'chardev':
    case 'blockdev':
      writeInodeFields(table, o, (node.kind === 'chardev' ? c.S_IFCHR : c.S_IFBLK) | node.perm, node.uid, node.gid, 0, node.mtime, links, 0, 0);
      deviceBlock(node.rdevMajor ?? 0, node.rdevMinor ?? 0).copy(table, o + I_BLOCK);
      return;
    case 'fifo':
    case 'socket':
      writeInodeFields(table, o, (node.kind === 'fifo' ? c.S_IFIFO : c.S_IFSOCK) | node.perm, node.uid, node.gid, 0, node.mtime, links, 0, 0);
      return;
  }
}

/** The in-inode extent root (depth 0) from the plan, without building an extent list. */
function writeExtentRoot(plan: Plan, ino: number, out: Buffer, o: number): void {
  const list = plan.extentLists.get(ino);
  if (list) return writeExtentRootList(list, out, o);
  const length = plan.singleLength[ino];
  writeExtentHeader(out, o, length > 0 ? 1 : 0, c.EXTENTS_IN_INODE, 0);
  if (length > 0) writeExtent(out, o + 12, 0, length, plan.singlePhysical[ino]);
}
