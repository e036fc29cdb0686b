/**
 * The `tar` layer: a root filesystem tarball (plain, gzip, xz or zstd), e.g. from mmdebstrap.
 *
 * `apply` reads the archive once for its headers and builds the tree without keeping any file
 * contents. Regular files then point back into the archive: for a plain tarball, a byte range of
 * the file (read at random when the image is written); for a compressed one, a member index that
 * `replay` streams again in archive order, since a compressed stream cannot be seeked.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { TreeError, type Content, type InodeInit, type StreamSource, type Tree } from '../tree.js';
import { openDecompressed, type Compression } from './decompress.js';
import { LayerError, type Layer } from './layer.js';
import { drainOrClose, MAX_TIME, MemberBody, MIN_TIME, paddedSize, paxNumber, type RawHeader } from './tar-member.js';
import { byteNamesExtract, utf8Header } from './utf8-names.js';

export interface TarLayerOptions {
  /**
   * Keep the owners recorded in the archive (the default: a root filesystem tarball knows who
   * owns what). When false, everything is owned by 0:0.
   */
  keepOwners?: boolean;
}

/** What the first pass saw of the archive file itself, to notice it changing before `replay`. */
interface FileStamp {
  size: number;
  mtimeMs: number;
  ino: number;
}


type Visitor = (header: RawHeader, body: MemberBody, index: number) => Promise<'next' | 'stop'>;

// Bump when the tree this layer produces changes for the same archive, to invalidate caches.
const FINGERPRINT_VERSION = 'ferry-tar-layer-1';

export class TarLayer implements Layer, StreamSource {
  readonly description: string;
  private readonly keepOwners: boolean;
  /** Regular-file members seen by `apply`: index → name and size, checked again by `replay`. */
  private members = new Map<number, { name: string; size: number }>();
  private stamp: FileStamp | undefined;
  private compression: Compression | undefined;

  /** The archive's absolute path (file contents of a plain tarball refer to it). */
  readonly path: string;

  constructor(path: string, options: TarLayerOptions = {}) {
    this.path = resolve(path);
    this.description = `tar ${this.path}`;
    this.keepOwners = options.keepOwners ?? true;
  }

  /**
   * A cheap fingerprint: the archive's path, size, mtime and inode number, not its contents
   * (hashing a multi-gigabyte rootfs on every start would defeat the cache). Replacing the file
   * in any usual way (download, rename, rewrite) changes at least one of these.
   */
  async fingerprint(): Promise<string> {
    const st = await this.statArchive();
    return createHash('sha256')
      .update(JSON.stringify([FINGERPRINT_VERSION, this.path, st.size, st.mtimeMs, st.ino, this.keepOwners]))
      .digest('hex');
  }

  async apply(tree: Tree): Promise<void> {
    this.stamp = await this.statArchive();
    this.members = new Map();
    const seen = new Set<string>(); // non-directory paths of this archive, for hard links
    await this.scan(async (header, body, index) => {
      await body.drain();
      this.addEntry(tree, header, index, seen);
      return 'next';
    });
  }

  /**
   * Streams the archive again and hands each wanted member's bytes to `onMember`, in archive
   * order. Stops reading as soon as the last wanted member is done.
   */
  async replay(
    wanted: ReadonlySet<number>,
    onMember: (index: number, chunks: AsyncIterable<Buffer>) => Promise<void>,
  ): Promise<void> {
    if (!this.stamp) throw new LayerError(this.description, 'replay before apply: the archive has not been read yet');
    for (const index of wanted) {
      if (!this.members.has(index)) throw new LayerError(this.description, `member #${index} is not a regular file of this archive`);
    }
    if (wanted.size === 0) return;
    const now = await this.statArchive();
    if (now.size !== this.stamp.size || now.mtimeMs !== this.stamp.mtimeMs || now.ino !== this.stamp.ino) {
      throw new LayerError(this.description, 'the archive changed since it was read (size, mtime or inode differ); rebuild the image');
    }
    const last = Math.max(...wanted);
    let delivered = 0;
    await this.scan(async (header, body, index) => {
      if (wanted.has(index)) {
        delivered += 1;
        const expected = this.members.get(index)!;
        if (header.name !== expected.name || header.size !== expected.size) {
          throw new LayerError(
            this.description,
            `the archive changed since it was read: member #${index} is now ${JSON.stringify(header.name)} (${header.size} bytes), was ${JSON.stringify(expected.name)} (${expected.size} bytes)`,
          );
        }
        await onMember(index, body.chunks);
      }
      await body.drain();
      return index >= last ? 'stop' : 'next';
    });
    if (delivered !== wanted.size) {
      throw new LayerError(this.description, `the archive changed since it was read: it now ends before member #${last}`);
    }
  }

  /** Adds one archive entry to the tree. */
  private addEntry(tree: Tree, header: RawHeader, index: number, seen: Set<string>): void {
    const name = header.name;
    const path = this.entryPath(name);
    const pax = header.pax ?? {};
    if (Object.keys(pax).some((key) => key.startsWith('GNU.sparse.'))) {
      throw new LayerError(this.description, `entry ${JSON.stringify(name)}: GNU sparse members are not supported; create the tarball without --sparse`);
    }
    const owner = this.keepOwners
      ? { uid: paxNumber(pax.uid) ?? header.uid, gid: paxNumber(pax.gid) ?? header.gid }
      : { uid: 0, gid: 0 };
    const mtimeSeconds = paxNumber(pax.mtime) ?? Math.floor(header.mtime.getTime() / 1000);
    const common = { perm: header.mode & 0o7777, ...owner, mtime: Math.floor(mtimeSeconds) };
    this.checkRanges(name, common);
    const parentDefaults = { uid: 0, gid: 0, mtime: common.mtime };

    let init: InodeInit;
    switch (header.type) {
      case 'file':
      case 'contiguous-file':
        init = { kind: 'file', ...common, size: header.size, content: this.contentOf(header, index) };
        this.members.set(index, { name, size: header.size });
        break;
      case 'directory':
        init = { kind: 'dir', ...common };
        break;
      case 'symlink':
        init = { kind: 'symlink', ...common, target: header.linkname };
        if (!header.linkname) throw new LayerError(this.description, `entry ${JSON.stringify(name)}: symlink without a target`);
        break;
      case 'character-device':
      case 'block-device':
        // ext4's device numbers: a 12-bit major and a 20-bit minor; larger ones were cut short.
        // A field tar-stream cannot decode is null, which must not become device 0.
        const { devmajor, devminor } = header;
        if (!(Number.isInteger(devmajor) && Number.isInteger(devminor) && devmajor! >= 0 && devmajor! <= 0xfff && devminor! >= 0 && devminor! <= 0xfffff)) {
          throw new LayerError(
            this.description,
            `entry ${JSON.stringify(name)}: device ${header.devmajor}:${header.devminor} is out of range (major 0 to 4095, minor 0 to 1048575)`,
          );
        }
        init = {
          kind: header.type === 'character-device' ? 'chardev' : 'blockdev',
          ...common,
          rdevMajor: header.devmajor,
          rdevMinor: header.devminor,
        };
        break;
      case 'fifo':
        init = { kind: 'fifo', ...common };
        break;
      case 'link': {
        const target = this.entryPath(header.linkname ?? '', name);
        if (!seen.has(target)) {
          throw new LayerError(
            this.description,
            `entry ${JSON.stringify(name)}: hard link to ${JSON.stringify(header.linkname)}, which is not an earlier member of the archive`,
          );
        }
        this.intoTree(name, () => tree.link(path, target));
        seen.add(path);
        return;
      }
      default:
        throw new LayerError(
          this.description,
          `entry ${JSON.stringify(name)}: unsupported tar entry type (a GNU sparse file, volume label or multi-volume member?)`,
        );
    }
    this.intoTree(name, () => tree.add(path, init, parentDefaults));
    if (init.kind === 'dir') seen.delete(path);
    else seen.add(path);
  }

  /**
   * Owners and times ext4 cannot hold are refused, not wrapped: a negative gid (base-256 in a
   * mutated header, found by test/unit/tar-fuzz.test.ts) was written as 4294967196. ext4 keeps
   * 32-bit ids and seconds from 1901 to 2446 (signed 32 bits plus two epoch bits).
   */
  private checkRanges(name: string, fields: { uid: number; gid: number; mtime: number }): void {
    for (const id of ['uid', 'gid'] as const) {
      const value = fields[id];
      // 4294967295 is (uid_t)-1, which the kernel refuses as an owner (and debugfs shows as -1).
      if (!Number.isSafeInteger(value) || value < 0 || value >= 0xffffffff) {
        throw new LayerError(this.description, `entry ${JSON.stringify(name)}: ${id} ${value} is out of range (0 to 4294967294)`);
      }
    }
    if (!Number.isSafeInteger(fields.mtime) || fields.mtime < MIN_TIME || fields.mtime > MAX_TIME) {
      throw new LayerError(this.description, `entry ${JSON.stringify(name)}: mtime ${fields.mtime} is out of the range ext4 can store (${MIN_TIME} to ${MAX_TIME})`);
    }
  }

  private contentOf(header: RawHeader, index: number): Content {
    if (header.size === 0) return { kind: 'empty' };
    // A plain tarball can be read at random: point at the member's bytes in the file itself.
    if (this.compression === 'none' && header.byteOffset !== undefined) {
      return { kind: 'file', path: this.path, offset: header.byteOffset, length: header.size };
    }
    return { kind: 'stream', source: this, index };
  }

  /**
   * The path of an entry inside the image: a leading `/` or `./` is dropped (as tar does), and
   * any `..` component is refused, so no entry can land outside the image root.
   */
  private entryPath(name: string, entry: string = name): string {
    const parts: string[] = [];
    for (const part of name.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        throw new LayerError(
          this.description,
          entry === name
            ? `entry ${JSON.stringify(name)}: path escapes the image root ('..' components are refused)`
            : `entry ${JSON.stringify(entry)}: hard link target ${JSON.stringify(name)} escapes the image root`,
        );
      }
      parts.push(part);
    }
    return parts.join('/');
  }

  private intoTree(entry: string, change: () => unknown): void {
    try {
      change();
    } catch (err) {
      if (err instanceof TreeError) throw new LayerError(this.description, `entry ${JSON.stringify(entry)}: ${err.message}`, { cause: err });
      throw err;
    }
  }

  private async statArchive(): Promise<FileStamp> {
    try {
      const st = await stat(this.path);
      if (!st.isFile()) throw new LayerError(this.description, `${this.path} is not a regular file`);
      return { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
    } catch (err) {
      if (err instanceof LayerError) throw err;
      throw new LayerError(this.description, `cannot read the tarball ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Reads the archive from the start and calls `visit` for each entry (after long-name and pax
   * headers are folded in), numbering entries from 0. A visitor returning 'stop' ends the read
   * early; otherwise the archive must end properly (the last member complete, followed by an
   * end-of-archive block), which is how a truncated download is caught: tar-stream alone does
   * not notice a tarball cut exactly between two members.
   */
  private async scan(visit: Visitor): Promise<void> {
    let source: Readable;
    try {
      const opened = await openDecompressed(this.path);
      source = opened.stream;
      this.compression = opened.compression;
    } catch (err) {
      throw new LayerError(this.description, `cannot read the tarball ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    // Names reach the visitor decoded from their bytes, strictly (see utf8-names.ts).
    const extract = byteNamesExtract(this.description);
    let total = 0; // decompressed bytes fed to the parser
    let sourceError: Error | undefined;
    let stopped = false;
    const pump = (async () => {
      try {
        for await (const chunk of source) {
          total += (chunk as Buffer).length;
          if (!extract.write(chunk)) await drainOrClose(extract);
          if (extract.destroyed) break;
        }
        if (!extract.destroyed) extract.end(undefined);
      } catch (err) {
        if (stopped) return;
        sourceError = err as Error;
        extract.destroy(sourceError);
      }
    })();

    let current: RawHeader | undefined;
    let dataEnd = 0; // where the last member's (padded) data ends in the decompressed stream
    let index = 0;
    let visiting = false;
    let body: MemberBody | undefined;
    try {
      for await (const entry of extract) {
        const header = utf8Header(entry.header as RawHeader, this.description);
        current = header;
        if (header.byteOffset !== undefined) dataEnd = header.byteOffset + paddedSize(header);
        body = new MemberBody(entry as AsyncIterable<Buffer>, header.type === 'directory');
        visiting = true;
        const next = await visit(header, body, index);
        visiting = false;
        index += 1;
        if (next === 'stop') {
          stopped = true;
          break;
        }
      }
    } catch (err) {
      stopped = true;
      source.destroy();
      extract.destroy(undefined);
      await pump;
      if (err instanceof LayerError) throw err;
      // The consumer's own failure (say, the disk filled up while writing a member): not ours to explain.
      if (visiting && !sourceError && body?.failure !== err) throw err;
      if (sourceError) throw new LayerError(this.description, sourceError.message, { cause: sourceError });
      const message = (err as Error).message;
      if (/Unexpected end of data/i.test(message)) {
        throw new LayerError(
          this.description,
          `truncated tarball: ${this.path} ends inside ${
            current && total < dataEnd
              ? `member ${JSON.stringify(current.name)}`
              : `a header${current ? ` after member ${JSON.stringify(current.name)}` : ''}`
          }`,
          { cause: err },
        );
      }
      throw new LayerError(
        this.description,
        `corrupt tarball ${this.path}${current ? ` (after member ${JSON.stringify(current.name)})` : ''}: ${message}`,
        { cause: err },
      );
    } finally {
      if (stopped) source.destroy();
    }
    await pump;
    if (sourceError) throw new LayerError(this.description, sourceError.message, { cause: sourceError });
    if (!stopped && total < dataEnd + 512) {
      throw new LayerError(
        this.description,
        `truncated tarball: ${this.path} has no end-of-archive marker${current ? ` after member ${JSON.stringify(current.name)}` : ''} (incomplete download?)`,
      );
    }
  }
}
