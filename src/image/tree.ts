/**
 * The in-memory file tree that layers build and the filesystem writers consume.
 *
 * Only metadata lives here. File contents stay where they are (a host file, an offset in an
 * uncompressed tarball, a small generated buffer, or a member of a compressed tarball that is
 * streamed again when the image is written), so memory grows with the number of files, never
 * with their size.
 */

export type NodeKind = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

/** Where a regular file's bytes come from. */
export type Content =
  | { kind: 'empty' }
  | { kind: 'bytes'; data: Buffer }
  /** `length` bytes of a host file starting at `offset` (an uncompressed tar member, or a whole file). */
  | { kind: 'file'; path: string; offset: number; length: number }
  /**
   * A whole host file, named by its directory (one object shared by its siblings) and its name
   * (the same string the tree keys it by): no path string per file, which on trees of hundreds
   * of thousands of files is tens of megabytes.
   */
  | { kind: 'hostFile'; dir: HostDir; name: string }
  /** A member of a stream that can only be read in order (a compressed tarball). */
  | { kind: 'stream'; source: StreamSource; index: number };

export interface HostDir {
  readonly path: string;
}

/** The host path of a file's content, for the kinds that have one. */
export function hostPathOf(content: Content): string | undefined {
  if (content.kind === 'file') return content.path;
  if (content.kind === 'hostFile') return `${content.dir.path}/${content.name}`;
  return undefined;
}

/**
 * A source whose members must be read in order, such as a compressed tarball. The writer asks it
 * to replay the members it still needs (some may have been overridden by later layers).
 */
export interface StreamSource {
  readonly description: string;
  replay(
    wanted: ReadonlySet<number>,
    onMember: (index: number, chunks: AsyncIterable<Buffer>) => Promise<void>,
  ): Promise<void>;
}

export interface Inode {
  kind: NodeKind;
  /** Permission bits including setuid/setgid/sticky (no file-type bits). */
  perm: number;
  uid: number;
  gid: number;
  /** Modification time, seconds since the epoch. */
  mtime: number;
  /** Regular files: the byte size. */
  size: number;
  content: Content;
  /** Symlinks: the target. */
  target?: string;
  /** Device nodes. */
  rdevMajor?: number;
  rdevMinor?: number;
  /** Directories: entries by name, in insertion order. */
  children?: Map<string, Inode>;
  /** Number of names that refer to this inode (hard links); maintained by Tree. */
  names: number;
  /** Scratch for filesystem writers: the inode number given while writing an image. */
  ino: number;
}

export interface InodeInit {
  kind: NodeKind;
  perm: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  size?: number;
  content?: Content;
  target?: string;
  rdevMajor?: number;
  rdevMinor?: number;
}

export class TreeError extends Error {}

/** Splits a path relative to the image root into components, refusing anything that escapes it. */
export function splitPath(path: string): string[] {
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new TreeError(`path escapes the image root: ${JSON.stringify(path)}`);
    parts.push(part);
  }
  return parts;
}

const MAX_NAME_BYTES = 255;

export class Tree {
  readonly root: Inode;

  constructor(rootInit: Partial<InodeInit> = {}) {
    this.root = makeInode({ kind: 'dir', perm: 0o755, ...rootInit });
    this.root.names = 1;
  }

  /** Looks a path up without creating anything. */
  lookup(path: string): Inode | undefined {
    let node: Inode | undefined = this.root;
    for (const part of splitPath(path)) {
      node = node?.children?.get(part);
      if (!node) return undefined;
    }
    return node;
  }

  /**
   * Adds (or replaces) the node at `path`. Missing parent directories are created with mode 755
   * and the given owner. An existing directory replaced by a directory keeps its children, as
   * when a later layer re-declares a directory to change its mode.
   */
  add(path: string, init: InodeInit, parentDefaults: { uid?: number; gid?: number; mtime?: number } = {}): Inode {
    const parts = splitPath(path);
    if (parts.length === 0) {
      if (init.kind !== 'dir') throw new TreeError('the image root must be a directory');
      Object.assign(this.root, pick(init));
      return this.root;
    }
    const parent = this.ensureDir(parts.slice(0, -1), parentDefaults);
    const name = parts[parts.length - 1];
    checkName(name, path);
    const existing = parent.children!.get(name);
    if (existing && existing.kind === 'dir' && init.kind === 'dir') {
      Object.assign(existing, pick(init));
      return existing;
    }
    const node = makeInode(init);
    this.attach(parent, name, node);
    return node;
  }

  /** Adds another name for an existing node (a hard link). */
  link(path: string, existingPath: string): Inode {
    const target = this.lookup(existingPath);
    if (!target) throw new TreeError(`hard link ${JSON.stringify(path)} points to a missing path ${JSON.stringify(existingPath)}`);
    if (target.kind === 'dir') throw new TreeError(`hard link ${JSON.stringify(path)} points to a directory`);
    const parts = splitPath(path);
    if (parts.length === 0) throw new TreeError('cannot hard-link the image root');
    const parent = this.ensureDir(parts.slice(0, -1), {});
    const name = parts[parts.length - 1];
    checkName(name, path);
    if (parent.children!.get(name) === target) return target;
    this.attach(parent, name, target);
    return target;
  }

  /** Removes the name at `path` (and, for a directory, everything below it). */
  remove(path: string): void {
    const parts = splitPath(path);
    if (parts.length === 0) throw new TreeError('cannot remove the image root');
    const parent = this.lookup(parts.slice(0, -1).join('/'));
    const name = parts[parts.length - 1];
    const node = parent?.children?.get(name);
    if (!parent || !node) return;
    parent.children!.delete(name);
    detach(node);
  }

  /** Visits every name depth-first, parents before children, in insertion order. */
  *walk(): Generator<{ path: string; node: Inode; parent: Inode }> {
    const stack: Array<{ path: string; node: Inode }> = [{ path: '', node: this.root }];
    while (stack.length > 0) {
      const { path, node } = stack.pop()!;
      if (!node.children) continue;
      const entries = [...node.children.entries()];
      for (let i = entries.length - 1; i >= 0; i--) {
        const [name, child] = entries[i];
        stack.push({ path: `${path}/${name}`, node: child });
      }
      for (const [name, child] of entries) yield { path: `${path}/${name}`, node: child, parent: node };
    }
  }

  private ensureDir(parts: string[], defaults: { uid?: number; gid?: number; mtime?: number }): Inode {
    let node = this.root;
    for (const [i, part] of parts.entries()) {
      checkName(part, parts.slice(0, i + 1).join('/'));
      let child = node.children!.get(part);
      if (!child || child.kind !== 'dir') {
        // A non-directory in the way is replaced, as tar does when a later entry needs a directory there.
        child = makeInode({ kind: 'dir', perm: 0o755, ...defaults });
        this.attach(node, part, child);
      }
      node = child;
    }
    return node;
  }

  private attach(parent: Inode, name: string, node: Inode): void {
    const old = parent.children!.get(name);
    if (old) {
      parent.children!.delete(name);
      detach(old);
    }
    parent.children!.set(name, node);
    node.names += 1;
  }
}

function detach(node: Inode): void {
  node.names -= 1;
  if (node.names === 0 && node.children) {
    for (const child of node.children.values()) detach(child);
  }
}

function checkName(name: string, path: string): void {
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) {
    throw new TreeError(`name longer than ${MAX_NAME_BYTES} bytes in ${JSON.stringify(path)}`);
  }
  if (name.includes('\0')) throw new TreeError(`name contains a NUL byte: ${JSON.stringify(path)}`);
}

function makeInode(init: InodeInit): Inode {
  return {
    kind: init.kind,
    perm: init.perm & 0o7777,
    uid: init.uid ?? 0,
    gid: init.gid ?? 0,
    mtime: init.mtime ?? 0,
    size: init.kind === 'file' ? (init.size ?? 0) : 0,
    content: init.content ?? { kind: 'empty' },
    target: init.target,
    rdevMajor: init.rdevMajor,
    rdevMinor: init.rdevMinor,
    children: init.kind === 'dir' ? new Map() : undefined,
    names: 0,
    ino: 0,
  };
}

function pick(init: InodeInit): Partial<Inode> {
  const out: Partial<Inode> = { perm: init.perm & 0o7777 };
  if (init.uid !== undefined) out.uid = init.uid;
  if (init.gid !== undefined) out.gid = init.gid;
  if (init.mtime !== undefined) out.mtime = init.mtime;
  return out;
}
