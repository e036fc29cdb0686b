/**
 * Reads an ext4 image back with debugfs (e2fsprogs) and compares it with the tree it was made
 * from. The image side uses nothing of ferry's: e2fsprogs parses the filesystem, so a bug in the
 * writer cannot hide behind a matching bug in the reader.
 *
 * Speed (the Debian rootfs has ~10k files): debugfs runs once per directory depth (`ls -p` of
 * every directory at that depth in one batch), once for `stat` of every inode, and once for
 * `cat` of every regular file and long symlink, whose output is split by the sizes `ls -p` gave
 * and hashed as it streams (nothing is written to disk, so a 5 GiB sparse file costs only time).
 *
 * The source side is a host directory (lstat) or a tarball (tar-stream), turned into the same
 * `Manifest` shape with ferry's documented semantics (dir layers owned by 0:0 unless asked
 * otherwise, tar layers keep their headers' owners, later entries override earlier ones).
 */
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { execa } from 'execa';
import { extract as tarExtract } from 'tar-stream';

export type EntryKind = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

export interface Entry {
  kind: EntryKind;
  /** Permission bits including setuid/setgid/sticky. */
  perm: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch; undefined when the source does not determine it (implicit parents). */
  mtime?: number;
  /** Names of this inode (for directories: 2 + subdirectories). */
  links: number;
  /** Regular files: byte size and sha256 of the content. */
  size?: number;
  sha256?: string;
  target?: string;
  major?: number;
  minor?: number;
  /** Source-side identity of the inode (names with the same id are hard links); not compared. */
  id?: string;
}

/** Absolute paths inside the image ('/' is the root) → entry. */
export type Manifest = Map<string, Entry>;

export interface ImageEntry extends Entry {
  ino: number;
  /** Symlinks: true when the target is stored in the inode ("Fast link dest"). */
  fastSymlink?: boolean;
}

export interface ReadImageOptions {
  /** Hash regular file contents (default true). */
  contents?: boolean;
}

// ---------------------------------------------------------------------------------------------
// debugfs plumbing

/** Runs one debugfs batch (read-only) and returns stdout as bytes; throws with stderr on failure. */
export async function debugfs(image: string, commands: string[]): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-debugfs-'));
  try {
    const file = join(dir, 'commands');
    const out = join(dir, 'stdout');
    await writeFile(file, commands.join('\n') + '\n');
    // stdout to a file: for 70k `stat`s (~40 MB) that is much cheaper than a pipe into node.
    const result = await execa('debugfs', ['-f', file, image], {
      reject: false,
      stdout: { file: out },
      env: { PAGER: 'cat', DEBUGFS_PAGER: '__none__' },
    });
    const stderr = result.stderr;
    if (result.exitCode !== 0) throw new Error(`debugfs ${image} failed (exit ${result.exitCode}):\n${stderr}`);
    // debugfs reports most failures on stderr but still exits 0: any line besides its banner is an error.
    const errors = stderr.split('\n').filter((line) => line.trim() !== '' && !/^debugfs \d/.test(line));
    if (errors.length > 0) throw new Error(`debugfs ${image}: ${errors.slice(0, 20).join('\n')}`);
    return await readFile(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Splits a batch's output into each command's output, in order ("debugfs: CMD" echo lines). */
export function splitBatch(output: Buffer, commands: string[]): string[] {
  const text = output.toString('latin1'); // byte-exact; names are decoded from it later
  const parts: string[] = [];
  let position = 0;
  for (let i = 0; i < commands.length; i++) {
    const marker = `debugfs: ${commands[i]}\n`;
    const start = text.indexOf(marker, position);
    if (start < 0) throw new Error(`debugfs output has no echo of ${JSON.stringify(commands[i])}`);
    if (i > 0) parts.push(text.slice(position, start));
    position = start + marker.length;
  }
  parts.push(text.slice(position));
  return parts;
}

/** One debugfs command's text output (e.g. `ex <12>`, `stat /etc/passwd`). */
export async function debugfsOne(image: string, command: string): Promise<string> {
  return splitBatch(await debugfs(image, [command]), [command])[0];
}

const latin1ToUtf8 = (s: string) => Buffer.from(s, 'latin1').toString('utf8');

// ---------------------------------------------------------------------------------------------
// The image side

interface Listed {
  path: string;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
}

/** Reads every path of an image: names, modes, owners, link counts, targets, devices, contents. */
export async function readImage(image: string, options: ReadImageOptions = {}): Promise<Map<string, ImageEntry>> {
  const listed: Listed[] = [{ path: '/', ino: 2, mode: 0, uid: 0, gid: 0, size: 0 }];
  // Breadth first: one debugfs run lists every directory of one depth.
  let level: Listed[] = [listed[0]];
  while (level.length > 0) {
    const commands = level.map((d) => `ls -p <${d.ino}>`);
    const outputs = splitBatch(await debugfs(image, commands), commands);
    const next: Listed[] = [];
    for (const [i, output] of outputs.entries()) {
      const parent = level[i];
      for (const line of output.split('\n')) {
        if (!line.startsWith('/')) continue;
        // /ino/mode/uid/gid/name/size/ — a name cannot contain '/', so the fields split cleanly.
        const fields = line.split('/');
        if (fields.length !== 8) throw new Error(`unexpected ls -p line in ${parent.path}: ${JSON.stringify(line)}`);
        const name = latin1ToUtf8(fields[5]);
        // Inode 0 marks an unused record (e.g. the empty blocks of lost+found).
        if (name === '.' || name === '..' || fields[1] === '0') continue;
        const entry: Listed = {
          path: parent.path === '/' ? `/${name}` : `${parent.path}/${name}`,
          ino: Number(fields[1]),
          mode: parseInt(fields[2], 8),
          uid: Number(fields[3]),
          gid: Number(fields[4]),
          size: fields[6] === '' ? 0 : Number(fields[6]),
        };
        listed.push(entry);
        if ((entry.mode & 0o170000) === 0o040000) next.push(entry);
      }
    }
    level = next;
  }

  // stat of every distinct inode, in one batch.
  const inodes = [...new Set(listed.map((l) => l.ino))];
  const statCommands = inodes.map((ino) => `stat <${ino}>`);
  const stats = new Map<number, ReturnType<typeof parseStat>>();
  splitBatch(await debugfs(image, statCommands), statCommands).forEach((text, i) => stats.set(inodes[i], parseStat(text, inodes[i])));

  const root = stats.get(2)!;
  listed[0].mode = root.mode;
  listed[0].uid = root.uid;
  listed[0].gid = root.gid;

  // Contents of regular files and slow symlinks, streamed through `cat`.
  const toCat = new Map<number, number>(); // ino → size
  for (const l of listed) {
    const kind = kindOf(l.mode);
    const st = stats.get(l.ino)!;
    // Empty files need no debugfs call: their hash is known.
    if ((kind === 'file' && options.contents !== false && st.size > 0) || (kind === 'symlink' && !st.fastTarget)) toCat.set(l.ino, st.size);
  }
  const contents = await catAll(image, toCat);

  const entries = new Map<string, ImageEntry>();
  for (const l of listed) {
    const st = stats.get(l.ino)!;
    const kind = kindOf(st.mode);
    if (st.mode !== l.mode && l.path !== '/') throw new Error(`${l.path}: ls says mode ${l.mode.toString(8)}, stat says ${st.mode.toString(8)}`);
    const entry: ImageEntry = { ino: l.ino, kind, perm: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime, links: st.links };
    if (kind === 'file') {
      entry.size = st.size;
      if (options.contents !== false) entry.sha256 = st.size === 0 ? EMPTY_SHA256 : contents.get(l.ino)!.sha256;
    } else if (kind === 'symlink') {
      entry.fastSymlink = st.fastTarget !== undefined;
      entry.target = latin1ToUtf8(st.fastTarget ?? contents.get(l.ino)!.bytes!.toString('latin1'));
    } else if (kind === 'chardev' || kind === 'blockdev') {
      entry.major = st.major;
      entry.minor = st.minor;
    }
    entries.set(l.path, entry);
  }
  return entries;
}

const EMPTY_SHA256 = createHash('sha256').digest('hex');

function kindOf(mode: number): EntryKind {
  switch (mode & 0o170000) {
    case 0o100000:
      return 'file';
    case 0o040000:
      return 'dir';
    case 0o120000:
      return 'symlink';
    case 0o020000:
      return 'chardev';
    case 0o060000:
      return 'blockdev';
    case 0o010000:
      return 'fifo';
    case 0o140000:
      return 'socket';
    default:
      throw new Error(`unknown file type in mode ${mode.toString(8)}`);
  }
}

const TYPE_BITS: Record<string, number> = {
  regular: 0o100000,
  directory: 0o040000,
  symlink: 0o120000,
  'character special': 0o020000,
  'block special': 0o060000,
  FIFO: 0o010000,
  socket: 0o140000,
};

/** The fields of a debugfs `stat` we check. */
function parseStat(text: string, ino: number) {
  const need = (re: RegExp, what: string) => {
    const m = re.exec(text);
    if (!m) throw new Error(`debugfs stat <${ino}> has no ${what}:\n${text}`);
    return m;
  };
  const header = need(/Type: (.+?)\s+Mode:\s+(\d+)/, 'type/mode');
  const typeBits = TYPE_BITS[header[1]];
  if (typeBits === undefined) throw new Error(`debugfs stat <${ino}>: unknown type ${header[1]}`);
  const owner = need(/User:\s+(\d+)\s+Group:\s+(\d+)/, 'owner');
  const size = Number(need(/Size: (\d+)/, 'size')[1]);
  const device = /Device major\/minor number: (\d+):(\d+)/.exec(text);
  const fast = /Fast link dest: "/.exec(text);
  return {
    mode: typeBits | parseInt(header[2], 8),
    uid: Number(owner[1]),
    gid: Number(owner[2]),
    size,
    links: Number(need(/Links: (\d+)/, 'link count')[1]),
    mtime: parseInt(need(/ mtime: 0x([0-9a-f]+)/, 'mtime')[1], 16),
    major: device ? Number(device[1]) : undefined,
    minor: device ? Number(device[2]) : undefined,
    // The target is exactly `size` bytes (it may itself contain quotes).
    fastTarget: fast ? text.slice(fast.index + fast[0].length, fast.index + fast[0].length + size) : undefined,
  };
}

/**
 * `cat`s every inode in one debugfs run and splits the output by the known sizes: each file is
 * preceded by the echo line of its command. Small contents (symlink targets) are kept as bytes.
 */
async function catAll(image: string, sizes: Map<number, number>): Promise<Map<number, { sha256: string; bytes?: Buffer }>> {
  const results = new Map<number, { sha256: string; bytes?: Buffer }>();
  if (sizes.size === 0) return results;
  const order = [...sizes.keys()];
  const dir = await mkdtemp(join(tmpdir(), 'ferry-debugfs-'));
  try {
    const file = join(dir, 'commands');
    await writeFile(file, order.map((ino) => `cat <${ino}>`).join('\n') + '\n');
    const child = execa('debugfs', ['-f', file, image], { buffer: { stdout: false, stderr: true }, encoding: 'buffer', reject: false, stdout: 'pipe' });
    let index = 0;
    let header = Buffer.from(`debugfs: cat <${order[0]}>\n`);
    let headerSeen = 0;
    let remaining = sizes.get(order[0])!;
    let hash = createHash('sha256');
    let small: Buffer[] = [];
    const finish = () => {
      const bytes = Buffer.concat(small);
      results.set(order[index], { sha256: hash.digest('hex'), bytes: bytes.length > 0 ? bytes : undefined });
      index += 1;
      if (index < order.length) {
        header = Buffer.from(`debugfs: cat <${order[index]}>\n`);
        headerSeen = 0;
        remaining = sizes.get(order[index])!;
        hash = createHash('sha256');
        small = [];
      }
    };
    for await (const chunk of child.stdout! as AsyncIterable<Buffer>) {
      let offset = 0;
      while (offset < chunk.length) {
        if (index >= order.length) throw new Error(`debugfs cat: ${chunk.length - offset} unexpected bytes after the last file`);
        if (headerSeen < header.length) {
          const take = Math.min(header.length - headerSeen, chunk.length - offset);
          if (!chunk.subarray(offset, offset + take).equals(header.subarray(headerSeen, headerSeen + take))) {
            throw new Error(`debugfs cat <${order[index]}>: output out of step (a file shorter or longer than its size?)`);
          }
          headerSeen += take;
          offset += take;
          if (headerSeen === header.length && remaining === 0) finish();
          continue;
        }
        const take = Math.min(remaining, chunk.length - offset);
        const piece = chunk.subarray(offset, offset + take);
        hash.update(piece);
        if (sizes.get(order[index])! <= 4096) small.push(Buffer.from(piece));
        remaining -= take;
        offset += take;
        if (remaining === 0) finish();
      }
    }
    const result = await child;
    const stderr = Buffer.from(result.stderr as Uint8Array).toString('utf8');
    const errors = stderr.split('\n').filter((line) => line.trim() !== '' && !/^debugfs \d/.test(line));
    if (result.exitCode !== 0 || errors.length > 0) throw new Error(`debugfs cat failed (exit ${result.exitCode}):\n${errors.join('\n')}`);
    if (index < order.length) throw new Error(`debugfs cat: output ended after ${index} of ${order.length} files`);
    return results;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The source side

export interface SourceOptions {
  /** Keep the source's owners (tar default) or make everything 0:0 (dir default). */
  keepOwners?: boolean;
}

/** A host directory as ferry's dir layer puts it in an image (owners 0:0 unless keepOwners). */
export async function manifestFromDir(root: string, options: SourceOptions = {}): Promise<Manifest> {
  const keepOwners = options.keepOwners ?? false;
  const manifest: Manifest = new Map();
  // The image root keeps ferry's default mode; a dir layer does not copy its root's mode.
  manifest.set('/', { kind: 'dir', perm: 0o755, uid: 0, gid: 0, links: 2 });
  const identities = new Map<string, string[]>(); // dev:ino → paths, for link counts inside the tree
  const files: Array<{ path: string; host: string }> = [];
  const stack: Array<{ path: string; host: string }> = [{ path: '/', host: root }];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    for (const name of readdirSync(dir.host)) {
      const host = join(dir.host, name);
      const path = dir.path === '/' ? `/${name}` : `${dir.path}/${name}`;
      const st = lstatSync(host, { bigint: true });
      const mode = Number(st.mode);
      const entry: Entry = {
        kind: kindOf(mode),
        perm: mode & 0o7777,
        uid: keepOwners ? Number(st.uid) : 0,
        gid: keepOwners ? Number(st.gid) : 0,
        mtime: Number(st.mtimeMs / 1000n),
        links: 1,
      };
      if (entry.kind === 'dir') {
        entry.links = 2;
        stack.push({ path, host });
      } else {
        const key = `${st.dev}:${st.ino}`;
        identities.set(key, [...(identities.get(key) ?? []), path]);
        entry.id = `dir:${key}`;
      }
      if (entry.kind === 'file') {
        entry.size = Number(st.size);
        files.push({ path, host });
      }
      if (entry.kind === 'symlink') entry.target = readlinkSync(host);
      if (entry.kind === 'chardev' || entry.kind === 'blockdev') {
        const rdev = st.rdev;
        entry.major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
        entry.minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
      }
      manifest.set(path, entry);
    }
  }
  for (const paths of identities.values()) for (const p of paths) manifest.get(p)!.links = paths.length;
  countSubdirs(manifest);
  for (const { path, host } of files) {
    const entry = manifest.get(path)!;
    entry.sha256 = await hashFile(host, entry.size!);
  }
  return manifest;
}

/**
 * A tarball (plain or gzip) as ferry's tar layer puts it in an image: `./` and leading `/`
 * dropped, later members replacing earlier ones, hard links sharing one inode, missing parents
 * created as 0755 directories owned by 0:0.
 */
export async function manifestFromTar(tarPath: string, options: SourceOptions = {}): Promise<Manifest> {
  const keepOwners = options.keepOwners ?? true;
  const manifest: Manifest = new Map();
  manifest.set('/', { kind: 'dir', perm: 0o755, uid: 0, gid: 0, links: 2 });
  const extract = tarExtract();
  const input = createReadStream(tarPath);
  const magic = await new Promise<Buffer>((resolve, reject) => {
    const probe = createReadStream(tarPath, { start: 0, end: 1 });
    const parts: Buffer[] = [];
    probe.on('data', (c) => parts.push(c as Buffer)).on('end', () => resolve(Buffer.concat(parts))).on('error', reject);
  });
  const stream = magic[0] === 0x1f && magic[1] === 0x8b ? input.pipe(createGunzip()) : input;
  stream.pipe(extract);

  const normalize = (name: string) => '/' + name.split('/').filter((p) => p !== '' && p !== '.').join('/');
  const ensureParents = (path: string) => {
    const parts = path.split('/').filter(Boolean);
    for (let i = 1; i < parts.length; i++) {
      const parent = '/' + parts.slice(0, i).join('/');
      const existing = manifest.get(parent);
      if (existing?.kind === 'dir') continue;
      if (existing) removeTree(manifest, parent);
      manifest.set(parent, { kind: 'dir', perm: 0o755, uid: 0, gid: 0, links: 2 });
    }
  };
  for await (const member of extract) {
    const h = member.header;
    const path = normalize(h.name);
    const pax = (h as { pax?: Record<string, string> }).pax ?? {};
    const uid = keepOwners ? Number(pax.uid ?? h.uid) : 0;
    const gid = keepOwners ? Number(pax.gid ?? h.gid) : 0;
    const mtime = Math.floor(Number(pax.mtime ?? h.mtime!.getTime() / 1000));
    const base = { perm: (h.mode ?? 0) & 0o7777, uid, gid, mtime, links: 1 };
    let entry: Entry;
    switch (h.type) {
      case 'file':
      case 'contiguous-file': {
        const hash = createHash('sha256');
        for await (const chunk of member) hash.update(chunk as Buffer);
        entry = { kind: 'file', ...base, size: h.size, sha256: hash.digest('hex') };
        break;
      }
      case 'directory':
        entry = { kind: 'dir', ...base, links: 2 };
        break;
      case 'symlink':
        entry = { kind: 'symlink', ...base, target: h.linkname! };
        break;
      case 'character-device':
      case 'block-device':
        entry = { kind: h.type === 'character-device' ? 'chardev' : 'blockdev', ...base, major: h.devmajor, minor: h.devminor };
        break;
      case 'fifo':
        entry = { kind: 'fifo', ...base };
        break;
      case 'link': {
        const target = manifest.get(normalize(h.linkname!));
        if (!target) throw new Error(`${tarPath}: hard link ${h.name} to missing ${h.linkname}`);
        entry = target; // the same object: one inode, several names
        break;
      }
      default:
        throw new Error(`${tarPath}: member ${h.name} has type ${h.type}, which the read-back does not model`);
    }
    for await (const _ of member); // drain
    if (path === '/') {
      if (entry.kind === 'dir') Object.assign(manifest.get('/')!, { perm: entry.perm, uid: entry.uid, gid: entry.gid, mtime: entry.mtime });
      continue;
    }
    ensureParents(path);
    const existing = manifest.get(path);
    if (existing?.kind === 'dir' && entry.kind === 'dir') {
      Object.assign(existing, { perm: entry.perm, uid: entry.uid, gid: entry.gid, mtime: entry.mtime });
      continue;
    }
    if (existing) removeTree(manifest, path);
    manifest.set(path, entry);
  }
  // Link counts: the number of paths sharing one entry object.
  const names = new Map<Entry, number>();
  for (const entry of manifest.values()) if (entry.kind !== 'dir') names.set(entry, (names.get(entry) ?? 0) + 1);
  for (const [entry, count] of names) entry.links = count;
  countSubdirs(manifest);
  // Hard links share one object; give each path its own copy so later edits do not alias.
  const ids = new Map<Entry, string>();
  for (const [path, entry] of manifest) {
    if (entry.kind !== 'dir' && !ids.has(entry)) ids.set(entry, `tar:${tarPath}:${path}`);
    manifest.set(path, { ...entry, id: ids.get(entry) });
  }
  return manifest;
}

/**
 * What layering `upper` over `lower` gives, as ferry's Tree does it: a directory over a directory
 * takes the upper's mode and owner and keeps the lower's children; anything else replaces the
 * whole lower path (a directory with everything below it). Link counts are recounted from ids.
 */
export function overlayManifests(lower: Manifest, upper: Manifest): Manifest {
  const result: Manifest = new Map([...lower].map(([p, e]) => [p, { ...e }]));
  const paths = [...upper.keys()].sort((a, b) => a.split('/').length - b.split('/').length);
  for (const path of paths) {
    const entry = upper.get(path)!;
    // The root of a dir layer (or a tarball without `./`) leaves the image root as it was.
    if (path === '/' && entry.mtime === undefined) continue;
    const existing = result.get(path);
    if (existing?.kind === 'dir' && entry.kind === 'dir') {
      Object.assign(existing, { perm: entry.perm, uid: entry.uid, gid: entry.gid, mtime: entry.mtime });
      continue;
    }
    if (existing) removeTree(result, path);
    result.set(path, { ...entry });
  }
  const counts = new Map<string, number>();
  for (const e of result.values()) if (e.id) counts.set(e.id, (counts.get(e.id) ?? 0) + 1);
  for (const e of result.values()) if (e.id) e.links = counts.get(e.id)!;
  countSubdirs(result);
  return result;
}

function removeTree(manifest: Manifest, path: string): void {
  manifest.delete(path);
  const prefix = path + '/';
  for (const key of [...manifest.keys()]) if (key.startsWith(prefix)) manifest.delete(key);
}

function countSubdirs(manifest: Manifest): void {
  for (const entry of manifest.values()) if (entry.kind === 'dir') entry.links = 2;
  for (const [path, entry] of manifest) {
    if (entry.kind !== 'dir' || path === '/') continue;
    const parent = manifest.get(path.slice(0, path.lastIndexOf('/')) || '/')!;
    parent.links += 1;
  }
}

async function hashFile(path: string, size: number): Promise<string> {
  // Small files in one read: a stream per file costs more than the hashing for 70k tiny files.
  if (size < 1 << 20) return createHash('sha256').update(readFileSync(path)).digest('hex');
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Comparison

export interface CompareOptions {
  /** Compare mtimes where the source determines them (default true). */
  mtime?: boolean;
  /** Paths present only in the image that are expected (default: /lost+found if the source has none). */
  extraInImage?: string[];
}

/**
 * Every difference between what the source says and what the image holds, one line each
 * (empty when they agree). Tests assert `toEqual([])` so a failure lists what differs.
 */
export function compareManifests(expected: Manifest, actual: Map<string, Entry>, options: CompareOptions = {}): string[] {
  const problems: string[] = [];
  const extra = new Set(options.extraInImage ?? (expected.has('/lost+found') ? [] : ['/lost+found']));
  // Directories the image adds (lost+found) also add to their parent's link count.
  const addedSubdirs = new Map<string, number>();
  for (const e of extra) {
    if (actual.get(e)?.kind !== 'dir' || expected.has(e)) continue;
    const parent = e.slice(0, e.lastIndexOf('/')) || '/';
    addedSubdirs.set(parent, (addedSubdirs.get(parent) ?? 0) + 1);
  }
  for (const [path, source] of expected) {
    const want = addedSubdirs.has(path) ? { ...source, links: source.links + addedSubdirs.get(path)! } : source;
    const got = actual.get(path);
    if (!got) {
      problems.push(`${path}: missing from the image`);
      continue;
    }
    const fields: Array<keyof Entry> = ['kind', 'perm', 'uid', 'gid', 'links', 'size', 'sha256', 'target', 'major', 'minor'];
    if (options.mtime !== false) fields.push('mtime');
    for (const field of fields) {
      if (want[field] === undefined) continue;
      if (got[field] !== want[field]) {
        const show = (v: unknown) => (field === 'perm' && typeof v === 'number' ? `0${v.toString(8)}` : JSON.stringify(v));
        problems.push(`${path}: ${field} is ${show(got[field])} in the image, ${show(want[field])} in the source`);
      }
    }
  }
  for (const path of actual.keys()) {
    if (expected.has(path)) continue;
    if ([...extra].some((e) => path === e || path.startsWith(e + '/'))) continue;
    problems.push(`${path}: in the image but not in the source`);
  }
  return problems;
}

/** `e2fsck -fn IMAGE`: exit code and output (0 means the filesystem is clean). */
export async function e2fsck(image: string): Promise<{ exitCode: number; output: string }> {
  const result = await execa('e2fsck', ['-fn', image], { reject: false, all: true });
  return { exitCode: result.exitCode ?? -1, output: result.all ?? '' };
}
