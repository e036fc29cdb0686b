/**
 * ferry's ext4 writer: turns a Tree into an ext4 image in one pass over the contents, with no
 * staging copy, no root and no external tool.
 *
 * Steps: plan (number inodes, estimate blocks) → fix the geometry → place bitmaps, inode tables
 * and the journal → stream file contents, then directories and long symlinks, through the data
 * sink → extent tree blocks → inode tables, bitmaps, group descriptors, superblocks.
 *
 * The image is written to a temporary file beside the output, synced, and renamed into place only
 * when complete (the directory synced after: atomic-file.ts says why), so neither a failure nor a
 * power loss leaves a half-written image where an image is expected.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, renameSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { syncDirectorySync, tempPathFor } from '../../atomic-file.js';
import type { StreamSource, Tree } from '../tree.js';
import { BlockAllocator, OutOfSpaceError, placeGroupMetadata, writeBitmapsAndCounts } from './allocator.js';
import * as c from './constants.js';
import { DataSink } from './data-sink.js';
import { encodeDirectory, fileType, type DirEntry } from './directory.js';
import { Ext4Error, Ext4OutputError } from './errors.js';
import { placeJournal, writeExtentTrees, type Extent } from './extents.js';
import { ImageFile } from './image-file.js';
import { writeInodeTables } from './inode.js';
import { chooseGeometry, type Geometry, type GeometryOptions } from './layout.js';
import { planTree, type Plan } from './plan.js';
import { humanBytes } from '../../format.js';
import { chooseUuid, encodeGroupDescriptors, encodeJournalSuperblock, encodeSuperblock, formatUuid } from './superblock.js';

export { Ext4Error, Ext4OutputError } from './errors.js';
export { formatUuid } from './superblock.js';

export interface Ext4Progress {
  phase: 'plan' | 'data' | 'metadata' | 'done';
  done: number;
  total: number;
}

export interface Ext4Options extends GeometryOptions {
  /** Volume label, at most 16 bytes. */
  label?: string;
  /** 16 bytes or 32 hex digits; derived from the tree's metadata when omitted. */
  uuid?: Buffer | string;
  /** Superblock timestamps; the newest mtime in the tree (but not later than now) when omitted. */
  timestamp?: number;
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

export async function writeExt4(tree: Tree, outputPath: string, options: Ext4Options = {}): Promise<Ext4Result> {
  const label = options.label ?? '';
  if (Buffer.byteLength(label) > 16) throw new Ext4Error(`label ${JSON.stringify(label)} is longer than 16 bytes`);
  options.onProgress?.({ phase: 'plan', done: 0, total: 1 });
  const plan = planTree(tree);
  const geometry = chooseGeometry(plan, options);
  const uuid = chooseUuid(plan.metadataHash, options.uuid);
  // e2fsck flags a superblock written "in the future"; a source file dated ahead must not cause that.
  const time = options.timestamp ?? Math.min(plan.maxMtime, Math.floor(Date.now() / 1000));

  const tempPath = tempPathFor(outputPath);
  let image: ImageFile;
  try {
    image = new ImageFile(tempPath, geometry.totalBlocks * c.BLOCK_SIZE);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const directory = dirname(outputPath);
    if (code === 'ENOENT') throw new Ext4OutputError(`the output directory ${directory} does not exist`, code, { cause: error });
    if (code === 'ENOTDIR') throw new Ext4OutputError(`the output directory ${directory} is not a directory`, code, { cause: error });
    throw new Ext4OutputError(`cannot create the image in ${directory}: ${reason(error)}`, code, { cause: error });
  }
  try {
    const result = await writeImage(image, tree, plan, geometry, uuid, label, time, options);
    image.sync();
    image.close();
    try {
      renameSync(tempPath, outputPath);
    } catch (error) {
      throw new Ext4OutputError(`cannot put the image in place at ${outputPath}: ${reason(error)}`, (error as NodeJS.ErrnoException).code, {
        cause: error,
      });
    }
    syncDirectorySync(dirname(outputPath));
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

/** A system error's reason without the paths Node appends: "EPERM: operation not permitted, rename 'a' -> 'b'" → "operation not permitted (EPERM)". */
function reason(error: unknown): string {
  const { code, message } = error as NodeJS.ErrnoException;
  if (!code) return String(message ?? error);
  const text = message.startsWith(`${code}: `) ? message.slice(code.length + 2).replace(/, \w+ '.*$/s, '') : message;
  return `${text} (${code})`;
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

  const inodeBlocks = writeExtentTrees(plan.extentLists, allocator, image);
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
