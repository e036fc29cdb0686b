/**
 * The `dir` layer: a directory tree on the host, copied into the image as it is (symlinks are
 * not followed). File contents are not read here; the tree points at the host files.
 *
 * The walk uses synchronous fs calls on purpose: for hundreds of thousands of small lstat and
 * readdir calls they are several times faster than the promise API, and a layer is applied
 * while nothing else needs the event loop. The walk keeps its own stack, so depth is unlimited.
 */
import { createHash } from 'node:crypto';
import { accessSync, constants, lstatSync, readdirSync, readlinkSync, statSync, type Stats } from 'node:fs';
import { resolve } from 'node:path';
import { TreeError, type HostDir, type InodeInit, type Tree } from '../tree.js';
import { LayerError, type Layer } from './layer.js';
import { lossy, NOT_UTF8, utf8Name } from './utf8-names.js';

export interface DirLayerOptions {
  /**
   * Keep the host owners (uid/gid). Off by default: a directory on a Mac is owned by the user,
   * but in the image its files should belong to root.
   */
  keepOwners?: boolean;
}

/** One entry found by the walk. `rel` is relative to the layer root, without a leading slash. */
interface HostEntry {
  rel: string;
  host: string;
  st: Stats;
  /** The directory it is in (one object per directory) and its name there. */
  dir: HostDir;
  name: string;
}

// Bump when the tree this layer produces changes for the same directory, to invalidate caches.
const FINGERPRINT_VERSION = 'ferry-dir-layer-1';

export class DirLayer implements Layer {
  readonly description: string;
  /** The absolute host path of the directory. */
  readonly path: string;
  private readonly keepOwners: boolean;

  constructor(path: string, options: DirLayerOptions = {}) {
    this.path = resolve(path);
    this.description = `dir ${this.path}`;
    this.keepOwners = options.keepOwners ?? false;
  }

  /**
   * A hash of every entry's path, type, mode, size and mtime (plus symlink targets, device
   * numbers and, with keepOwners, owners). Like make, it does not read file contents: a file
   * rewritten with the same size and the same mtime is not noticed.
   */
  async fingerprint(): Promise<string> {
    const hash = createHash('sha256');
    hash.update(`${FINGERPRINT_VERSION}\0${this.path}\0${this.keepOwners}\0`);
    this.walk(({ rel, host, st }) => {
      const target = st.isSymbolicLink() ? this.readlink(host, rel) : '';
      const owner = this.keepOwners ? `${st.uid}:${st.gid}` : '';
      hash.update(`${rel}\0${st.mode}\0${st.size}\0${st.mtimeMs}\0${st.rdev}\0${target}\0${owner}\n`);
    });
    return hash.digest('hex');
  }

  async apply(tree: Tree): Promise<void> {
    // Host files with several names: (dev, ino) → the first path given to the tree.
    const linked = new Map<string, string>();
    this.walk(({ rel, host, st, dir, name }) => {
      if (!st.isDirectory() && st.nlink > 1) {
        // Precise inode numbers: plain Stats numbers lose bits above 2^53 on some filesystems.
        const exact = lstatSync(host, { bigint: true });
        const key = `${exact.dev}:${exact.ino}`;
        const first = linked.get(key);
        if (first !== undefined) {
          this.intoTree(rel, () => tree.link(rel, first));
          return;
        }
        linked.set(key, rel);
      }
      const init = this.inodeFor(rel, host, st, dir, name);
      this.intoTree(rel, () => tree.add(rel, init));
    });
  }

  private inodeFor(rel: string, host: string, st: Stats, dir: HostDir, name: string): InodeInit {
    const common = {
      perm: st.mode & 0o7777,
      uid: this.keepOwners ? st.uid : 0,
      gid: this.keepOwners ? st.gid : 0,
      mtime: Math.floor(st.mtimeMs / 1000),
    };
    if (st.isFile()) {
      // Checking every file would cost a syscall each; only modes that may deny us are checked.
      if ((st.mode & 0o444) !== 0o444) {
        try {
          accessSync(host, constants.R_OK);
        } catch (err) {
          throw new LayerError(this.description, `cannot read ${host}: ${(err as Error).message}`, { cause: err });
        }
      }
      return {
        kind: 'file',
        ...common,
        size: st.size,
        content: st.size === 0 ? { kind: 'empty' } : { kind: 'hostFile', dir, name },
      };
    }
    if (st.isDirectory()) return { kind: 'dir', ...common };
    if (st.isSymbolicLink()) return { kind: 'symlink', ...common, target: this.readlink(host, rel) };
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      return {
        kind: st.isCharacterDevice() ? 'chardev' : 'blockdev',
        ...common,
        rdevMajor: major(st.rdev),
        rdevMinor: minor(st.rdev),
      };
    }
    if (st.isFIFO()) return { kind: 'fifo', ...common };
    if (st.isSocket()) return { kind: 'socket', ...common };
    throw new LayerError(this.description, `${host}: unsupported file type (mode ${st.mode.toString(8)})`);
  }

  /**
   * Visits every entry below the root (not the root itself: the image root keeps its own mode,
   * so a layer made from a 0700 temporary directory does not lock everyone out of `/`).
   * Each directory's entries are visited together, sorted by name in byte order, so the tree
   * is the same whatever order the host filesystem lists them in.
   */
  private walk(visit: (entry: HostEntry) => void): void {
    let rootStat: Stats;
    try {
      rootStat = statSync(this.path);
    } catch (err) {
      throw new LayerError(this.description, `cannot read the directory ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    if (!rootStat.isDirectory()) throw new LayerError(this.description, `${this.path} is not a directory`);

    const pending: Array<{ rel: string; host: string }> = [{ rel: '', host: this.path }];
    while (pending.length > 0) {
      const dir = pending.pop()!;
      let raw: Buffer[];
      try {
        // As bytes: readdir's strings replace bytes that are not UTF-8 with U+FFFD (utf8-names.ts).
        raw = readdirSync(dir.host, { encoding: 'buffer' });
      } catch (err) {
        throw new LayerError(this.description, `cannot list ${dir.host}: ${(err as Error).message}`, { cause: err });
      }
      const names = raw.map((bytes) => {
        const name = utf8Name(bytes);
        if (name === undefined) throw new LayerError(this.description, `a name in ${dir.host} ${NOT_UTF8}: ${JSON.stringify(lossy(bytes))}`);
        return name;
      });
      names.sort(compareUtf8);
      const hostDir: HostDir = { path: dir.host };
      const subdirs: Array<{ rel: string; host: string }> = [];
      for (const name of names) {
        const rel = dir.rel === '' ? name : `${dir.rel}/${name}`;
        const host = `${dir.host}/${name}`;
        let st: Stats;
        try {
          st = lstatSync(host);
        } catch (err) {
          throw new LayerError(this.description, `cannot read ${host}: ${(err as Error).message}`, { cause: err });
        }
        visit({ rel, host, st, dir: hostDir, name });
        if (st.isDirectory()) subdirs.push({ rel, host });
      }
      // Reversed so that directories are walked in name order (not required, but easier to follow).
      for (let i = subdirs.length - 1; i >= 0; i--) pending.push(subdirs[i]);
    }
  }

  private readlink(host: string, rel: string): string {
    try {
      return readlinkSync(host);
    } catch (err) {
      throw new LayerError(this.description, `cannot read the symlink ${JSON.stringify(rel)}: ${(err as Error).message}`, { cause: err });
    }
  }

  private intoTree(rel: string, change: () => unknown): void {
    try {
      change();
    } catch (err) {
      if (err instanceof TreeError) throw new LayerError(this.description, `${JSON.stringify(rel)}: ${err.message}`, { cause: err });
      throw err;
    }
  }
}

/**
 * Orders strings by their UTF-8 bytes (which is code point order). JavaScript's `<` compares
 * UTF-16 code units, which differs only when a surrogate (a character above U+FFFF) meets a
 * character in U+E000..U+FFFF.
 */
export function compareUtf8(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xSurrogate = x >= 0xd800 && x <= 0xdfff;
    const ySurrogate = y >= 0xd800 && y <= 0xdfff;
    if (xSurrogate !== ySurrogate) {
      const other = xSurrogate ? y : x;
      if (other >= 0xe000) return xSurrogate ? 1 : -1;
    }
    return x - y;
  }
  return a.length - b.length;
}

// Linux's encoding of dev_t (glibc's gnu_dev_major/minor); macOS uses 8 bits of major.
function major(rdev: number): number {
  if (process.platform === 'darwin') return (rdev >>> 24) & 0xff;
  return Number(((BigInt(rdev) >> 8n) & 0xfffn) | ((BigInt(rdev) >> 32n) & ~0xfffn));
}

function minor(rdev: number): number {
  if (process.platform === 'darwin') return rdev & 0xffffff;
  return Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & ~0xffn));
}
