/**
 * ferry's ext4 writer: turns a Tree into an ext4 image in one pass over the contents, with no
 * staging copy, no root and no external tool.
 *
 * Steps: plan (number inodes, estimate blocks) → fix the geometry → place bitmaps, inode tables
 * and the journal → stream file contents, then directories and long symlinks, through the data
 * sink → extent tree blocks → inode tables, bitmaps, group descriptors, superblocks.
 *
 * The image is written to a temporary file beside the output and renamed into place only when
 * complete, so a failure never leaves a half-written image where an image is expected.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Inode, StreamSource, Tree } from '../tree.js';
import { BlockAllocator, OutOfSpaceError } from './allocator.js';
import * as c from './constants.js';
import { DataSink } from './data-sink.js';
import { encodeDirectory, type DirEntry } from './directory.js';
import { encodeExtentTree, treeBlocksFor, writeExtent, writeExtentHeader, writeExtentRoot as writeExtentRootList, type Extent } from './extents.js';
import { ImageFile } from './image-file.js';
import { deviceBlock, encodeInode, writeInodeFields } from './inode.js';
import { computeGeometry, metadataBlocks, type Geometry } from './layout.js';
import { planTree, type Plan } from './plan.js';
import { humanBytes } from '../../format.js';
import { encodeGroupDescriptors, encodeJournalSuperblock, encodeSuperblock, type GroupDescriptor } from './superblock.js';

export interface Ext4Progress {
  phase: 'plan' | 'data' | 'metadata' | 'done';
  done: number;
  total: number;
}

export interface Ext4Options {
  /** Image size in bytes; automatic (content plus headroom) when omitted. */
  sizeBytes?: number;
  /** Volume label, at most 16 bytes. */
  label?: string;
  /** 16 bytes or 32 hex digits; derived from the tree's metadata when omitted. */
  uuid?: Buffer | string;
  /** Superblock timestamps; the newest mtime in the tree (but not later than now) when omitted. */
  timestamp?: number;
  /** Inode count; automatic when omitted. */
  inodes?: number;
  /** Free space to add when sizing automatically, as a fraction of the content (default 0.2). */
  headroom?: number;
  journal?: boolean;
  onProgress?: (progress: Ext4Progress) => void;
}

export interface Ext4Result {
  path: string;
  sizeBytes: number;
  blocks: number;
  usedBlocks: number;
  inodes: number;
  usedInodes: number;
  uuid: string;
  fileBytes: number;
}

export class Ext4Error extends Error {}

export async function writeExt4(tree: Tree, outputPath: string, options: Ext4Options = {}): Promise<Ext4Result> {
  const label = options.label ?? '';
  if (Buffer.byteLength(label) > 16) throw new Ext4Error(`label ${JSON.stringify(label)} is longer than 16 bytes`);
  options.onProgress?.({ phase: 'plan', done: 0, total: 1 });
  const plan = planTree(tree);
  const geometry = chooseGeometry(plan, options);
  const uuid = chooseUuid(plan, options.uuid);
  // e2fsck flags a superblock written "in the future"; a source file dated ahead must not cause that.
  const time = options.timestamp ?? Math.min(plan.maxMtime, Math.floor(Date.now() / 1000));

  const tempPath = join(dirname(outputPath), `.${basename(outputPath)}.tmp-${process.pid}`);
  rmSync(tempPath, { force: true });
  const image = new ImageFile(tempPath, geometry.totalBlocks * c.BLOCK_SIZE);
  try {
    const result = await writeImage(image, tree, plan, geometry, uuid, label, time, options);
    image.close();
    renameSync(tempPath, outputPath);
    options.onProgress?.({ phase: 'done', done: 1, total: 1 });
    return { ...result, path: outputPath };
  } catch (error) {
    image.close();
    rmSync(tempPath, { force: true });
    if (error instanceof OutOfSpaceError) {
      throw new Ext4Error(
        `the content does not fit in ${humanBytes(geometry.totalBlocks * c.BLOCK_SIZE)} (${error.message}); give a larger size or leave it automatic`,
      );
    }
    throw error;
  }
}

function chooseGeometry(plan: Plan, options: Ext4Options): Geometry {
  const usedInodes = plan.usedInodes;
  const withJournal = options.journal ?? true;
  const inodesFor = (blocks: number) =>
    options.inodes ?? Math.max(Math.ceil(usedInodes * 1.1) + 64, Math.floor((blocks * c.BLOCK_SIZE) / 16384));
  if (options.sizeBytes !== undefined) {
    const blocks = Math.floor(options.sizeBytes / c.BLOCK_SIZE);
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
  if (blocks % c.BLOCKS_PER_GROUP !== 0 && blocks % c.BLOCKS_PER_GROUP < 512) blocks += 512;
  return computeGeometry(blocks, inodesFor(blocks), withJournal);
}

function chooseUuid(plan: Plan, given: Buffer | string | undefined): Buffer {
  if (Buffer.isBuffer(given)) return given;
  if (typeof given === 'string') {
    const hex = given.replace(/-/g, '');
    if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Ext4Error(`UUID ${JSON.stringify(given)} is not 32 hex digits`);
    return Buffer.from(hex, 'hex');
  }
  const uuid = Buffer.from(plan.metadataHash.subarray(0, 16));
  uuid[6] = (uuid[6] & 0x0f) | 0x50; // name-based (version 5 style), so it is a well-formed UUID
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
  return uuid;
}

interface GroupLocations {
  blockBitmaps: number[];
  inodeBitmaps: number[];
  inodeTables: number[];
}

async function writeImage(
  image: ImageFile,
  tree: Tree,
  plan: Plan,
  geometry: Geometry,
  uuid: Buffer,
  label: string,
  time: number,
  options: Ext4Options,
): Promise<Omit<Ext4Result, 'path'>> {
  const allocator = new BlockAllocator(geometry);
  const locations = placeGroupMetadata(allocator, geometry);
  const journal = placeJournal(allocator, geometry);

  const sink = new DataSink(image, allocator);
  const progress = throttle(options.onProgress, plan.totalFileBytes);
  await writeFileContents(plan, sink, progress);
  writeSymlinkBlocks(plan, sink);
  writeDirectories(plan, sink);
  sink.flush();

  const inodeBlocks = writeExtentTrees(plan, allocator, image);
  options.onProgress?.({ phase: 'metadata', done: 0, total: 1 });

  if (journal) image.writeAt(encodeJournalSuperblock(geometry.journalBlocks, uuid), journal.extents[0].physical * c.BLOCK_SIZE);
  const usedInodes = plan.end - 1;
  const descriptors = writeInodeTables(plan, geometry, locations, inodeBlocks, journal, time, image);
  writeBitmapsAndCounts(allocator, geometry, locations, descriptors, usedInodes, image);

  const freeBlocks = descriptors.reduce((sum, d) => sum + d.freeBlocks, 0);
  const freeInodes = descriptors.reduce((sum, d) => sum + d.freeInodes, 0);
  const hashSeed = createHash('sha256').update(uuid).update('dir-hash-seed').digest().subarray(0, 16);
  const gdt = encodeGroupDescriptors(descriptors, geometry.gdtBlocks);
  for (const group of geometry.superblockGroups) {
    const sb = encodeSuperblock(
      { geometry, freeBlocks, freeInodes, uuid, hashSeed, label, time, journalBlock: journal?.root, journalSize: geometry.journalBlocks * c.BLOCK_SIZE },
      group,
    );
    const groupStart = group * c.BLOCKS_PER_GROUP * c.BLOCK_SIZE;
    image.writeAt(sb, group === 0 ? c.SUPERBLOCK_OFFSET : groupStart);
    image.writeAt(gdt, groupStart + c.BLOCK_SIZE);
  }
  return {
    sizeBytes: geometry.totalBlocks * c.BLOCK_SIZE,
    blocks: geometry.totalBlocks,
    usedBlocks: geometry.totalBlocks - freeBlocks,
    inodes: geometry.inodesPerGroup * geometry.groupCount,
    usedInodes: plan.usedInodes,
    uuid: formatUuid(uuid),
    fileBytes: plan.totalFileBytes,
  };
}

/** All groups' bitmaps and inode tables, packed together after group 0's GDT (flex_bg). */
function placeGroupMetadata(allocator: BlockAllocator, g: Geometry): GroupLocations {
  const blockBitmaps: number[] = [];
  const inodeBitmaps: number[] = [];
  const inodeTables: number[] = [];
  for (let i = 0; i < g.groupCount; i++) blockBitmaps.push(allocator.allocBlock());
  for (let i = 0; i < g.groupCount; i++) inodeBitmaps.push(allocator.allocBlock());
  for (let i = 0; i < g.groupCount; i++) inodeTables.push(allocator.allocContiguous(g.inodeTableBlocks));
  return { blockBitmaps, inodeBitmaps, inodeTables };
}

interface Journal {
  extents: Extent[];
  root: Buffer;
  treeBlocks: Array<{ block: number; data: Buffer }>;
}

function placeJournal(allocator: BlockAllocator, g: Geometry): Journal | undefined {
  if (g.journalBlocks === 0) return undefined;
  const extents: Extent[] = [];
  let logical = 0;
  while (logical < g.journalBlocks) {
    const run = allocator.allocRun(Math.min(g.journalBlocks - logical, c.MAX_EXTENT_LEN));
    extents.push({ logical, physical: run.start, length: run.length });
    logical += run.length;
  }
  const tree = encodeExtentTree(extents, () => allocator.allocBlock());
  return { extents, root: tree.root, treeBlocks: tree.blocks };
}

async function writeFileContents(plan: Plan, sink: DataSink, progress: (bytes: number) => void): Promise<void> {
  const streamed = new Map<StreamSource, Map<number, number>>();
  for (let ino = c.FIRST_INO; ino < plan.end; ino++) {
    const node = plan.nodes[ino]!;
    if (node.kind !== 'file' || node.size === 0) continue;
    const content = node.content;
    switch (content.kind) {
      case 'empty':
        throw new Ext4Error(`internal: a non-empty file has no content (inode ${ino})`);
      case 'bytes': {
        const extents = sink.begin();
        sink.write(content.data.subarray(0, node.size));
        if (content.data.length < node.size) sink.write(Buffer.alloc(node.size - content.data.length));
        finish(plan, ino, extents, sink.end());
        break;
      }
      case 'file':
      case 'hostFile': {
        const extents = sink.begin();
        if (content.kind === 'file') copyHostFile(content.path, content.offset, node.size, sink);
        else copyHostFile(`${content.dir.path}/${content.name}`, 0, node.size, sink);
        finish(plan, ino, extents, sink.end());
        break;
      }
      case 'stream': {
        let members = streamed.get(content.source);
        if (!members) streamed.set(content.source, (members = new Map()));
        members.set(content.index, ino);
        break;
      }
    }
    progress(sink.bytesWritten);
  }
  for (const [source, members] of streamed) {
    const wanted = new Set(members.keys());
    const seen = new Set<number>();
    await source.replay(wanted, async (index, chunks) => {
      const ino = members.get(index);
      if (ino === undefined) {
        for await (const _ of chunks); // not wanted: drain
        return;
      }
      const size = plan.nodes[ino]!.size;
      seen.add(index);
      const extents = sink.begin();
      let bytes = 0;
      for await (const chunk of chunks) {
        const take = Math.min(chunk.length, size - bytes);
        if (take > 0) sink.write(chunk.subarray(0, take));
        bytes += chunk.length;
      }
      if (bytes !== size) throw new Ext4Error(`${source.description}: member ${index} has ${bytes} bytes, expected ${size}`);
      finish(plan, ino, extents, sink.end());
      progress(sink.bytesWritten);
    });
    for (const index of wanted) {
      if (!seen.has(index)) throw new Ext4Error(`${source.description}: member ${index} was not found when reading it again`);
    }
  }
}

function finish(plan: Plan, ino: number, extents: Extent[], blocks: number): void {
  plan.dataBlocks[ino] = blocks;
  plan.setExtents(ino, extents);
}

function copyHostFile(path: string, offset: number, size: number, sink: DataSink): void {
  const fd = openSync(path, 'r');
  try {
    let done = 0;
    while (done < size) {
      const window = sink.window();
      const want = Math.min(window.length, size - done);
      const n = readSync(fd, window, 0, want, offset + done);
      if (n === 0) throw new Ext4Error(`${path}: file shrank while it was being read (expected ${size} bytes, got ${done})`);
      sink.commit(n);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

function writeSymlinkBlocks(plan: Plan, sink: DataSink): void {
  for (let ino = c.FIRST_INO; ino < plan.end; ino++) {
    const node = plan.nodes[ino]!;
    if (node.kind !== 'symlink') continue;
    const target = Buffer.from(node.target ?? '');
    plan.sizes[ino] = target.length;
    if (target.length <= c.FAST_SYMLINK_MAX) continue;
    if (target.length >= c.BLOCK_SIZE) throw new Ext4Error(`symlink target longer than ${c.BLOCK_SIZE - 1} bytes (inode ${ino})`);
    const extents = sink.begin(false);
    sink.write(target);
    finish(plan, ino, extents, sink.end());
  }
}

function writeDirectories(plan: Plan, sink: DataSink): void {
  for (let ino = 1; ino < plan.end; ino++) {
    const node = plan.nodes[ino];
    if (!node || node.kind !== 'dir') continue;
    const extents = sink.begin(false);
    const blocks = encodeDirectory(directoryEntries(plan, ino), (block) => sink.write(block), plan.minDirBlocks(ino));
    finish(plan, ino, extents, sink.end());
    plan.sizes[ino] = blocks * c.BLOCK_SIZE;
  }
}

function* directoryEntries(plan: Plan, ino: number): Generator<DirEntry> {
  yield { name: '.', inode: ino, fileType: c.FT_DIR };
  yield { name: '..', inode: plan.parent[ino], fileType: c.FT_DIR };
  for (const [name, child] of plan.entries(ino)) yield { name, inode: child.ino, fileType: fileType(child.kind) };
}

/** Writes extent tree blocks for nodes with more than four extents; returns their i_block and tree block counts. */
function writeExtentTrees(plan: Plan, allocator: BlockAllocator, image: ImageFile): Map<number, { root: Buffer; treeBlocks: number }> {
  const roots = new Map<number, { root: Buffer; treeBlocks: number }>();
  for (const [ino, extents] of plan.extentLists) {
    if (extents.length <= c.EXTENTS_IN_INODE) continue;
    const encoded = encodeExtentTree(extents, () => allocator.allocBlock());
    for (const { block, data } of encoded.blocks) image.writeAt(data, block * c.BLOCK_SIZE);
    if (encoded.blocks.length !== treeBlocksFor(extents.length)) throw new Error('internal: extent tree size mismatch');
    roots.set(ino, { root: encoded.root, treeBlocks: encoded.blocks.length });
  }
  return roots;
}

function writeInodeTables(
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

function fileType(kind: Inode['kind']): number {
  switch (kind) {
    case 'file':
      return c.FT_REG;
    case 'dir':
      return c.FT_DIR;
    case 'symlink':
      return c.FT_SYMLINK;
    case 'chardev':
      return c.FT_CHRDEV;
    case 'blockdev':
      return c.FT_BLKDEV;
    case 'fifo':
      return c.FT_FIFO;
    case 'socket':
      return c.FT_SOCK;
  }
}

function writeBitmapsAndCounts(
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

function throttle(onProgress: Ext4Options['onProgress'], total: number): (bytes: number) => void {
  if (!onProgress) return () => {};
  let last = 0;
  return (bytes) => {
    const now = Date.now();
    if (now - last < 100) return;
    last = now;
    onProgress({ phase: 'data', done: bytes, total });
  };
}

export function formatUuid(uuid: Buffer): string {
  const h = uuid.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

