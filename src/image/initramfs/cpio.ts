/**
 * A streaming writer for cpio "newc" archives (magic 070701), the format the Linux kernel
 * unpacks as an initramfs.
 *
 * The output is deterministic: every entry gets the same mtime, inode numbers are assigned in
 * the order entries are written, and owners are 0:0 unless an entry says otherwise. The kernel
 * creates entries in archive order, so callers must write a directory before anything in it.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { FerryError } from '../../errors.js';

const MAGIC = '070701';
const HEADER_BYTES = 110;
/** newc stores sizes in 8 hex digits. */
const MAX_FIELD = 0xffff_ffff;
const TRAILER_NAME = 'TRAILER!!!';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

interface Owner {
  /** Permission bits (including setuid/setgid/sticky); the file type is added by the writer. */
  mode?: number;
  uid?: number;
  gid?: number;
}

/** One archive member. Paths are relative to the initramfs root ("bin/busybox", not "/bin/busybox"). */
export type CpioEntry =
  | ({ kind: 'dir'; path: string } & Owner)
  | ({ kind: 'file'; path: string; data: Buffer } & Owner)
  /** A regular file whose bytes are streamed from a host file when the entry is written. */
  | ({ kind: 'hostFile'; path: string; hostPath: string } & Owner)
  | ({ kind: 'symlink'; path: string; target: string } & Owner)
  | ({ kind: 'chardev' | 'blockdev'; path: string; major: number; minor: number } & Owner);

export interface CpioOptions {
  /** Modification time of every entry, seconds since the epoch. */
  mtime: number;
}

const DEFAULT_MODES: Record<CpioEntry['kind'], number> = {
  dir: 0o755,
  file: 0o644,
  hostFile: 0o644,
  symlink: 0o777,
  chardev: 0o600,
  blockdev: 0o600,
};

/**
 * Yields the bytes of a newc archive holding `entries` followed by the TRAILER!!! entry.
 * Host files are read in chunks as the consumer pulls, so memory stays small for large files.
 */
export async function* cpioArchive(
  entries: Iterable<CpioEntry> | AsyncIterable<CpioEntry>,
  options: CpioOptions,
): AsyncGenerator<Buffer> {
  checkField('mtime', options.mtime, 'the archive');
  let nextInode = 1;
  for await (const entry of entries) {
    const name = normaliseName(entry.path);
    const perm = (entry.mode ?? DEFAULT_MODES[entry.kind]) & 0o7777;
    const base = {
      name,
      ino: nextInode++,
      uid: entry.uid ?? 0,
      gid: entry.gid ?? 0,
      mtime: options.mtime,
    };
    switch (entry.kind) {
      case 'dir':
        yield header({ ...base, mode: S_IFDIR | perm, nlink: 2, size: 0 });
        break;
      case 'file':
        yield header({ ...base, mode: S_IFREG | perm, nlink: 1, size: entry.data.length });
        yield entry.data;
        yield padding(entry.data.length);
        break;
      case 'hostFile': {
        const size = (await statHostFile(entry.hostPath, name)).size;
        yield header({ ...base, mode: S_IFREG | perm, nlink: 1, size });
        yield* hostFileBytes(entry.hostPath, size, name);
        yield padding(size);
        break;
      }
      case 'symlink': {
        // The link target is the entry's data, without a terminating NUL.
        const target = Buffer.from(entry.target);
        if (target.length === 0) throw new FerryError(`cpio entry ${JSON.stringify(name)}: empty symlink target`);
        yield header({ ...base, mode: S_IFLNK | perm, nlink: 1, size: target.length });
        yield target;
        yield padding(target.length);
        break;
      }
      case 'chardev':
      case 'blockdev':
        yield header({
          ...base,
          mode: (entry.kind === 'chardev' ? S_IFCHR : S_IFBLK) | perm,
          nlink: 1,
          size: 0,
          rdevMajor: entry.major,
          rdevMinor: entry.minor,
        });
        break;
    }
  }
  yield header({ name: TRAILER_NAME, ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, size: 0 });
}

interface HeaderFields {
  name: string;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  size: number;
  rdevMajor?: number;
  rdevMinor?: number;
}

/** The 110-byte header plus the NUL-terminated name, padded so the data starts on a 4-byte boundary. */
function header(h: HeaderFields): Buffer {
  const nameBytes = Buffer.from(h.name);
  if (nameBytes.includes(0)) throw new FerryError(`cpio entry ${JSON.stringify(h.name)}: name contains a NUL byte`);
  const fields: Array<[string, number]> = [
    ['inode', h.ino],
    ['mode', h.mode],
    ['uid', h.uid],
    ['gid', h.gid],
    ['nlink', h.nlink],
    ['mtime', h.mtime],
    ['size', h.size],
    ['devmajor', 0],
    ['devminor', 0],
    ['rdevmajor', h.rdevMajor ?? 0],
    ['rdevminor', h.rdevMinor ?? 0],
    ['namesize', nameBytes.length + 1],
    ['check', 0],
  ];
  let text = MAGIC;
  for (const [field, value] of fields) {
    checkField(field, value, h.name);
    text += value.toString(16).padStart(8, '0');
  }
  const headerAndName = HEADER_BYTES + nameBytes.length + 1;
  const out = Buffer.alloc(align4(headerAndName));
  out.write(text, 0, 'ascii');
  nameBytes.copy(out, HEADER_BYTES);
  return out;
}

function checkField(field: string, value: number, name: string): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_FIELD) {
    throw new FerryError(
      `cpio entry ${JSON.stringify(name)}: ${field} ${value} does not fit the newc format (an integer from 0 to ${MAX_FIELD})`,
    );
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

const ZEROS = Buffer.alloc(4);
function padding(dataLength: number): Buffer {
  return ZEROS.subarray(0, align4(dataLength) - dataLength);
}

/** newc names are relative; the kernel and cpio(1) both accept them without a leading slash. */
function normaliseName(path: string): string {
  const parts = path.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.length === 0) return '.';
  if (parts.includes('..')) throw new FerryError(`cpio entry ${JSON.stringify(path)}: path escapes the archive root`);
  return parts.join('/');
}

async function statHostFile(hostPath: string, name: string) {
  try {
    const info = await stat(hostPath);
    if (!info.isFile()) throw new FerryError(`cpio entry ${JSON.stringify(name)}: ${hostPath} is not a regular file`);
    return info;
  } catch (error) {
    if (error instanceof FerryError) throw error;
    throw new FerryError(`cpio entry ${JSON.stringify(name)}: cannot read ${hostPath}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/** Streams exactly `size` bytes; a file that changes size while it is read would corrupt the archive. */
async function* hostFileBytes(hostPath: string, size: number, name: string): AsyncGenerator<Buffer> {
  let read = 0;
  for await (const chunk of createReadStream(hostPath) as AsyncIterable<Buffer>) {
    read += chunk.length;
    if (read > size) break;
    yield chunk;
  }
  if (read !== size) {
    throw new FerryError(
      `cpio entry ${JSON.stringify(name)}: ${hostPath} changed size while it was read (expected ${size} bytes)`,
    );
  }
}
