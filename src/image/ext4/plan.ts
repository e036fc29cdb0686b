/**
 * Planning: one walk over the tree that numbers the inodes, counts links, and estimates the
 * blocks each node needs, so the geometry can be fixed before any content is read.
 */
import { createHash } from 'node:crypto';
import type { Inode, Tree } from '../tree.js';
import * as c from './constants.js';
import { directoryBlocks } from './directory.js';
import type { Extent } from './extents.js';

export interface PlannedDirEntry {
  name: Buffer;
  node: PlannedNode;
}

export interface PlannedNode {
  ino: number;
  /** Undefined for the synthesized lost+found. */
  source?: Inode;
  kind: Inode['kind'];
  perm: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  links: number;
  entries?: PlannedDirEntry[];
  subdirs: number;
  extents: Extent[];
  /** Blocks allocated for data (not counting extent tree blocks). */
  dataBlocks: number;
  /** Extra empty blocks a directory should have (lost+found). */
  minDirBlocks: number;
  /** Directories: the inode of "..". */
  parentIno: number;
}

export interface Plan {
  root: PlannedNode;
  /** Every node, in inode-number order. */
  nodes: PlannedNode[];
  /** Upper bound of the data blocks (file contents, directories, long symlinks, extent trees). */
  estimatedBlocks: number;
  totalFileBytes: number;
  maxMtime: number;
  /** A hash of all metadata (names, modes, owners, sizes, times, targets): seeds the UUID. */
  metadataHash: Buffer;
}

export function planTree(tree: Tree): Plan {
  const hash = createHash('sha256');
  const planned = new Map<Inode, PlannedNode>();
  const nodes: PlannedNode[] = [];
  let nextIno = c.FIRST_INO + 1;
  let estimatedBlocks = 0;
  let totalFileBytes = 0;
  let maxMtime = tree.root.mtime;

  const make = (source: Inode | undefined, ino: number, kind: Inode['kind']): PlannedNode => {
    const p: PlannedNode = {
      ino,
      source,
      kind,
      perm: source?.perm ?? 0o700,
      uid: source?.uid ?? 0,
      gid: source?.gid ?? 0,
      mtime: source?.mtime ?? tree.root.mtime,
      size: source?.size ?? 0,
      links: 0,
      subdirs: 0,
      extents: [],
      dataBlocks: 0,
      minDirBlocks: 1,
      parentIno: c.ROOT_INO,
    };
    if (kind === 'dir') p.entries = [];
    nodes.push(p);
    return p;
  };

  const root = make(tree.root, c.ROOT_INO, 'dir');
  planned.set(tree.root, root);
  root.links = 1;

  // lost+found is inode 11, as mke2fs makes it; an existing directory of that name is reused.
  const existingLostFound = tree.root.children!.get('lost+found');
  const lostFound = make(existingLostFound?.kind === 'dir' ? existingLostFound : undefined, c.FIRST_INO, 'dir');
  lostFound.minDirBlocks = c.LOST_AND_FOUND_BLOCKS;
  if (lostFound.source) planned.set(lostFound.source, lostFound);
  else {
    root.entries!.push({ name: Buffer.from('lost+found'), node: lostFound });
    lostFound.links = 1;
    root.subdirs += 1;
  }

  for (const { path, node, parent } of tree.walk()) {
    const parentPlan = planned.get(parent)!;
    let child = planned.get(node);
    if (!child) {
      child = make(node, nextIno++, node.kind);
      planned.set(node, child);
      maxMtime = Math.max(maxMtime, node.mtime);
      if (node.kind === 'file') {
        totalFileBytes += node.size;
        const blocks = Math.ceil(node.size / c.BLOCK_SIZE);
        // Extents break at 32768 blocks and at superblock copies; count one tree block per 340 of them.
        estimatedBlocks += blocks + Math.ceil((blocks / c.MAX_EXTENT_LEN + 2) / c.EXTENTS_PER_BLOCK);
      } else if (node.kind === 'symlink' && Buffer.byteLength(node.target ?? '') > c.FAST_SYMLINK_MAX) {
        estimatedBlocks += 1;
      }
    }
    child.links += 1;
    if (node.kind === 'dir') {
      parentPlan.subdirs += 1;
      child.parentIno = parentPlan.ino;
    }
    parentPlan.entries!.push({ name: Buffer.from(path.slice(path.lastIndexOf('/') + 1)), node: child });
    hash.update(`${path}\0${node.kind}\0${node.perm}\0${node.uid}\0${node.gid}\0${node.size}\0${node.mtime}\0${node.target ?? ''}\0${node.rdevMajor ?? ''}:${node.rdevMinor ?? ''}\n`);
  }

  for (const node of nodes) {
    if (node.kind !== 'dir') continue;
    const names = [1, 2, ...node.entries!.map((e) => e.name.length)];
    estimatedBlocks += Math.max(directoryBlocks(names), node.minDirBlocks);
    // A directory's blocks need an extent tree block once they are fragmented; rare, so a margin.
    estimatedBlocks += 1;
  }
  nodes.sort((a, b) => a.ino - b.ino);
  return { root, nodes, estimatedBlocks, totalFileBytes, maxMtime, metadataHash: hash.digest() };
}
