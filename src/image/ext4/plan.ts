/**
 * Planning: one walk over the tree that numbers the inodes, counts links, and estimates the
 * blocks each node needs, so the geometry can be fixed before any content is read.
 *
 * Per-inode data lives in typed arrays indexed by inode number rather than in an object per
 * node: with hundreds of thousands of files, objects would cost several hundred bytes each and
 * push the writer's memory past what a laptop should spend on making an image.
 */
import { createHash } from 'node:crypto';
import type { Inode, NodeKind, Tree } from '../tree.js';
import * as c from './constants.js';
import { directoryBlocks } from './directory.js';
import { Ext4Error } from './errors.js';
import type { Extent } from './extents.js';

export class Plan {
  /** The tree's node for each inode number (undefined for reserved numbers). */
  readonly nodes: Array<Inode | undefined>;
  /** One past the highest inode number in use. */
  readonly end: number;
  readonly links: Uint32Array;
  readonly subdirs: Uint32Array;
  readonly parent: Uint32Array;
  /** Data blocks allocated (not counting extent tree blocks). */
  readonly dataBlocks: Float64Array;
  /** i_size of directories and symlinks, known once they are written. */
  readonly sizes: Float64Array;
  /** A node with exactly one extent starting at logical block 0 keeps it here … */
  readonly singlePhysical: Float64Array;
  readonly singleLength: Uint32Array;
  /** … any other extent list (several extents, or a leading hole) is kept here. */
  readonly extentLists = new Map<number, Extent[]>();
  /** The synthesized lost+found, when the tree has none. */
  readonly lostFound: Inode | undefined;
  /** Upper bound of the data blocks (contents, directories, long symlinks, extent trees). */
  estimatedBlocks = 0;

  constructor(
    readonly root: Inode,
    nodes: Array<Inode | undefined>,
    lostFound: Inode | undefined,
    readonly totalFileBytes: number,
    readonly maxMtime: number,
    /** A hash of all metadata (names, modes, owners, sizes, times, targets): seeds the UUID. */
    readonly metadataHash: Buffer,
  ) {
    this.nodes = nodes;
    this.end = nodes.length;
    this.lostFound = lostFound;
    this.links = new Uint32Array(this.end);
    this.subdirs = new Uint32Array(this.end);
    this.parent = new Uint32Array(this.end);
    this.dataBlocks = new Float64Array(this.end);
    this.sizes = new Float64Array(this.end);
    this.singlePhysical = new Float64Array(this.end);
    this.singleLength = new Uint32Array(this.end);
  }

  get usedInodes(): number {
    return this.end - 1;
  }

  /** Records the extents a node's data ended up in. */
  setExtents(ino: number, extents: Extent[]): void {
    if (extents.length === 1 && extents[0].logical === 0) {
      this.singlePhysical[ino] = extents[0].physical;
      this.singleLength[ino] = extents[0].length;
    } else if (extents.length > 0) {
      this.extentLists.set(ino, extents);
    }
  }

  extents(ino: number): Extent[] {
    const list = this.extentLists.get(ino);
    if (list) return list;
    const length = this.singleLength[ino];
    return length > 0 ? [{ logical: 0, physical: this.singlePhysical[ino], length }] : [];
  }

  /** Directory entries of a directory inode, in order ("." and ".." not included). */
  *entries(ino: number): Generator<[name: string, child: Inode]> {
    const node = this.nodes[ino]!;
    if (ino === c.ROOT_INO && this.lostFound) yield ['lost+found', this.lostFound];
    yield* node.children!.entries();
  }

  /** The minimum number of blocks of a directory (lost+found gets room to grow, as mke2fs does). */
  minDirBlocks(ino: number): number {
    return ino === c.FIRST_INO ? c.LOST_AND_FOUND_BLOCKS : 1;
  }
}

export function planTree(tree: Tree): Plan {
  const hash = createHash('sha256');
  const nodes: Array<Inode | undefined> = [];
  const seen = new Set<Inode>();
  let estimatedBlocks = 0;
  let totalFileBytes = 0;
  let maxMtime = tree.root.mtime;

  nodes[c.ROOT_INO] = tree.root;
  tree.root.ino = c.ROOT_INO;
  seen.add(tree.root);
  // lost+found is inode 11, as mke2fs makes it; an existing directory of that name is reused.
  // Anything else of that name is refused rather than kept beside a synthesized one (two entries
  // of one name: e2fsck -fn "Duplicate entry 'lost+found'") or kept alone (e2fsck without -n,
  // as at boot, unlinks a lost+found that is not a directory and makes one, changing the image).
  const existing = tree.root.children!.get('lost+found');
  if (existing && existing.kind !== 'dir') throw new Ext4Error(lostFoundMessage(existing.kind));
  let lostFound: Inode | undefined;
  if (existing?.kind === 'dir') {
    nodes[c.FIRST_INO] = existing;
    existing.ino = c.FIRST_INO;
    seen.add(existing);
  } else {
    lostFound = syntheticLostFound(tree.root.mtime);
    nodes[c.FIRST_INO] = lostFound;
  }
  for (let i = 1; i < c.FIRST_INO; i++) nodes[i] ??= undefined;

  for (const { path, node } of tree.walk()) {
    if (seen.has(node)) continue;
    seen.add(node);
    node.ino = nodes.length;
    nodes.push(node);
    maxMtime = Math.max(maxMtime, node.mtime);
    if (node.kind === 'file') {
      totalFileBytes += node.size;
      const blocks = Math.ceil(node.size / c.BLOCK_SIZE);
      // Extents break at 32768 blocks and at superblock copies; count tree blocks for them.
      estimatedBlocks += blocks + Math.ceil((blocks / c.MAX_EXTENT_LEN + 2) / c.EXTENTS_PER_BLOCK);
    } else if (node.kind === 'symlink' && Buffer.byteLength(node.target ?? '') > c.FAST_SYMLINK_MAX) {
      estimatedBlocks += 1;
    }
    hash.update(`${path}\0${node.kind}\0${node.perm}\0${node.uid}\0${node.gid}\0${node.size}\0${node.mtime}\0${node.target ?? ''}\0${node.rdevMajor ?? ''}:${node.rdevMinor ?? ''}\n`);
  }
  seen.clear();

  const plan = new Plan(tree.root, nodes, lostFound, totalFileBytes, maxMtime, hash.digest());
  plan.estimatedBlocks = estimatedBlocks;
  // Links, subdirectory counts and parents, from the directories' entries ("/.." is "/").
  plan.links[c.ROOT_INO] = 1;
  plan.parent[c.ROOT_INO] = c.ROOT_INO;
  if (lostFound) plan.links[c.FIRST_INO] = 1;
  for (let ino = 1; ino < plan.end; ino++) {
    const node = nodes[ino];
    if (!node || node.kind !== 'dir') continue;
    const lengths: number[] = [1, 2];
    for (const [name, child] of plan.entries(ino)) {
      lengths.push(Buffer.byteLength(name));
      if (child !== lostFound) plan.links[child.ino] += 1;
      if (child.kind === 'dir') {
        plan.subdirs[ino] += 1;
        plan.parent[child.ino] = ino;
      }
    }
    // Directory blocks, plus a margin for an extent tree block once they are fragmented.
    plan.estimatedBlocks += Math.max(directoryBlocks(lengths), plan.minDirBlocks(ino)) + 1;
  }
  return plan;
}

function syntheticLostFound(mtime: number): Inode {
  return {
    kind: 'dir',
    perm: 0o700,
    uid: 0,
    gid: 0,
    mtime,
    size: 0,
    content: { kind: 'empty' },
    children: new Map(),
    names: 1,
    ino: c.FIRST_INO,
  };
}

const KIND_NAMES: Record<NodeKind, string> = {
  file: 'a regular file',
  dir: 'a directory',
  symlink: 'a symlink',
  chardev: 'a character device',
  blockdev: 'a block device',
  fifo: 'a FIFO',
  socket: 'a socket',
};

/** Why a non-directory `/lost+found` is refused; mkfs prefixes the source it came from. */
export function lostFoundMessage(kind: NodeKind): string {
  return `/lost+found is ${KIND_NAMES[kind]}; ext4 needs a directory there (e2fsck would remove it), so make it a directory or leave it out`;
}
