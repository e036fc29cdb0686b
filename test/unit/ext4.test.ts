/**
 * ferry's ext4 writer, checked with e2fsprogs: every image must pass `e2fsck -fn`, and reading it
 * back with debugfs must give exactly the source tree (content sha256, mode, owner, link count,
 * symlink target, device numbers, mtime). Images are built through `mkfs()` — the layers plus
 * writeExt4, the same path as `ferry image mkfs` without a process per case.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../src/errors.js';
import { mkfs, type MkfsResult } from '../../src/image/mkfs.js';
import {
  compareManifests,
  debugfsOne,
  e2fsck,
  manifestFromDir,
  manifestFromTar,
  overlayManifests,
  readImage,
  type ImageEntry,
} from '../support/ext4-readback.js';

const isRoot = process.getuid?.() === 0;
const MTIME = 1_700_000_000;
const GiB = 1024 ** 3;

let work: string;
let counter = 0;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ferry-ext4-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function sh(cmd: string, args: string[], cwd = work): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A fresh, empty source directory. */
function freshDir(name: string): string {
  const dir = join(work, `${name}-${counter++}`);
  mkdirSync(dir);
  return dir;
}

/** Builds an image from `sources`, checks it with `e2fsck -fn`, and returns it with its read-back. */
async function build(
  sources: string[],
  options: { sizeBytes?: number; label?: string; output?: string; contents?: boolean } = {},
): Promise<{ image: string; result: MkfsResult; entries: Map<string, ImageEntry> }> {
  const image = options.output ?? join(work, `image-${counter++}.ext4`);
  const result = await mkfs({ sources, output: image, sizeBytes: options.sizeBytes, label: options.label });
  const fsck = await e2fsck(image);
  expect(fsck.output, 'e2fsck -fn output').not.toMatch(/\bFix\?|Clear\?|Salvage\?|Relocate\?/);
  expect(fsck.exitCode, `e2fsck -fn ${image}:\n${fsck.output}`).toBe(0);
  const entries = await readImage(image, { contents: options.contents });
  return { image, result, entries };
}

/** Sets the same mtime on every path below `dir` (symlinks themselves included), for stable checks. */
function pinTimes(dir: string): void {
  sh('find', [dir, '-exec', 'touch', '-h', '-d', `@${MTIME}`, '{}', '+']);
}

describe('ext4 writer, checked by e2fsck and debugfs', () => {
  it('a directory of 70,000 files', async () => {
    const src = freshDir('many');
    const big = join(src, 'big');
    mkdirSync(big);
    for (let i = 0; i < 70_000; i++) {
      // Names of varied length so directory records pack differently from block to block.
      const name = `f${i}${'-'.repeat(i % 97)}`;
      writeFileSync(join(big, name), i % 100 === 0 ? `content of ${i}\n` : '');
    }
    const { entries } = await build([src]);
    const problems = compareManifests(await manifestFromDir(src), entries);
    expect(problems).toEqual([]);
    expect([...entries.keys()].filter((p) => p.startsWith('/big/')).length).toBe(70_000);
  }, 300_000);

  it('a 5 GiB sparse file with data only at its end stays sparse', async () => {
    const src = freshDir('sparse');
    const path = join(src, 'sparse.img');
    const tail = randomBytes(1024 * 1024);
    writeFileSync(path, '');
    truncateSync(path, 5 * GiB - tail.length);
    const fd = openSync(path, 'a');
    writeSync(fd, tail);
    closeSync(fd);
    expect(statSync(path).size).toBe(5 * GiB);

    const { image, result, entries } = await build([src]);
    // The image file itself: a few MiB allocated on the host, whatever its nominal size.
    const allocated = statSync(image).blocks * 512;
    expect(allocated, `image allocates ${allocated} bytes`).toBeLessThan(64 * 1024 * 1024);
    // (The automatic size is planned from file sizes before the holes are seen, so the nominal
    // disk is larger than 5 GiB; only its allocation on the host must stay small.)
    expect(result.sizeBytes).toBeGreaterThan(5 * GiB);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);

    // Inside the image, blocks exist only for the last MiB of the file.
    const ino = entries.get('/sparse.img')!.ino;
    const extents = parseExtents(await debugfsOne(image, `ex <${ino}>`));
    const leaves = extents.filter((e) => e.level === e.depth);
    const firstDataBlock = (5 * GiB - tail.length) / 4096;
    expect(leaves.length).toBeGreaterThan(0);
    expect(Math.min(...leaves.map((e) => e.logicalStart))).toBe(firstDataBlock);
    expect(leaves.reduce((n, e) => n + e.length, 0)).toBe(tail.length / 4096);
    // And the inode owns exactly those blocks (i_blocks in 512-byte units, no tree blocks needed).
    expect(await debugfsOne(image, `stat <${ino}>`)).toMatch(new RegExp(`Blockcount: ${tail.length / 512}\\b`));
  }, 600_000);

  it('255-byte and UTF-8 names', async () => {
    const src = freshDir('names');
    const names = [
      'a'.repeat(255),
      '日'.repeat(85), // 255 bytes in UTF-8
      'é'.repeat(127) + 'x', // 255 bytes
      '🚀'.repeat(63) + 'abc', // 4-byte characters, 255 bytes
      'naïve café',
      'with space',
      'quote"and\'',
      '-dash',
      'x',
    ];
    for (const name of names) {
      expect(Buffer.byteLength(name)).toBeLessThanOrEqual(255);
      writeFileSync(join(src, name), name);
    }
    mkdirSync(join(src, 'ß'.repeat(127)));
    writeFileSync(join(src, 'ß'.repeat(127), 'ü'), 'nested');
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    for (const name of names) expect(entries.has(`/${name}`), name).toBe(true);
  });

  it('hard links across directories keep one inode with the right link count', async () => {
    const src = freshDir('links');
    mkdirSync(join(src, 'a/b/c'), { recursive: true });
    mkdirSync(join(src, 'd'));
    writeFileSync(join(src, 'a/one'), 'shared by three names\n');
    linkSync(join(src, 'a/one'), join(src, 'a/b/c/two'));
    linkSync(join(src, 'a/one'), join(src, 'd/three'));
    writeFileSync(join(src, 'd/pair'), '');
    linkSync(join(src, 'd/pair'), join(src, 'd/pair2'));
    symlinkSync('../a/one', join(src, 'd/sym'));
    linkSync(join(src, 'd/sym'), join(src, 'a/sym-link')); // a hard link to a symlink
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    const ino = entries.get('/a/one')!.ino;
    expect(entries.get('/a/b/c/two')!.ino).toBe(ino);
    expect(entries.get('/d/three')!.ino).toBe(ino);
    expect(entries.get('/a/one')!.links).toBe(3);
    expect(entries.get('/d/pair2')!.links).toBe(2);
    expect(entries.get('/a/sym-link')!.ino).toBe(entries.get('/d/sym')!.ino);
  });

  it('symlinks of 59 bytes are inline, of 60 and 61 bytes and longer in a block', async () => {
    const src = freshDir('symlinks');
    const targets: Record<string, string> = {
      s59: '/'.concat('t'.repeat(58)),
      s60: '/'.concat('t'.repeat(59)),
      s61: '/'.concat('t'.repeat(60)),
      s1: 'x',
      s4095: 'l/'.repeat(2047) + 'z', // the longest target Linux allows
      utf8: 'ziel/'.concat('ü'.repeat(40)), // 85 bytes, 45 characters
      dangling: '../nowhere/at/all',
    };
    for (const [name, target] of Object.entries(targets)) symlinkSync(target, join(src, name));
    const { image, entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    expect(Buffer.byteLength(targets.s59)).toBe(59);
    expect(Buffer.byteLength(targets.s4095)).toBe(4095);
    expect(entries.get('/s59')!.fastSymlink).toBe(true);
    expect(entries.get('/s1')!.fastSymlink).toBe(true);
    expect(entries.get('/s60')!.fastSymlink).toBe(false);
    expect(entries.get('/s61')!.fastSymlink).toBe(false);
    expect(entries.get('/s4095')!.fastSymlink).toBe(false);
    // The same facts straight from debugfs's own words.
    expect(await debugfsOne(image, 'stat /s59')).toContain(`Fast link dest: "${targets.s59}"`);
    expect(await debugfsOne(image, 'stat /s60')).not.toContain('Fast link dest');
  });

  it.skipIf(!isRoot)('fifos, sockets, character and block devices (major/minor above 255)', async () => {
    const src = freshDir('special');
    sh('mkfifo', [join(src, 'fifo')]);
    sh('mknod', [join(src, 'null'), 'c', '1', '3']);
    sh('mknod', [join(src, 'big-char'), 'c', '300', '70000']);
    sh('mknod', [join(src, 'max-char'), 'c', '4095', '1048575']);
    sh('mknod', [join(src, 'sda1'), 'b', '8', '1']);
    sh('mknod', [join(src, 'nvme'), 'b', '259', '256']);
    sh('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', join(src, 'sock')]);
    chmodSync(join(src, 'fifo'), 0o620);
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    expect(entries.get('/max-char')).toMatchObject({ kind: 'chardev', major: 4095, minor: 1048575 });
    expect(entries.get('/nvme')).toMatchObject({ kind: 'blockdev', major: 259, minor: 256 });
    expect(entries.get('/sock')!.kind).toBe('socket');
    expect(entries.get('/fifo')).toMatchObject({ kind: 'fifo', perm: 0o620 });
  });

  it('setuid, setgid and sticky bits, odd modes and empty files', async () => {
    const src = freshDir('modes');
    const modes: Record<string, number> = { suid: 0o4755, sgid: 0o2755, both: 0o6711, all: 0o7777, none: 0o000, wo: 0o222 };
    for (const [name, mode] of Object.entries(modes)) {
      writeFileSync(join(src, name), '');
      chmodSync(join(src, name), mode);
    }
    mkdirSync(join(src, 'tmp'));
    chmodSync(join(src, 'tmp'), 0o1777);
    mkdirSync(join(src, 'sgid-dir'));
    chmodSync(join(src, 'sgid-dir'), 0o2775);
    writeFileSync(join(src, 'sgid-dir', 'empty'), '');
    mkdirSync(join(src, 'empty-dir'));
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    expect(entries.get('/tmp')!.perm).toBe(0o1777);
    expect(entries.get('/all')).toMatchObject({ perm: 0o7777, size: 0 });
  });

  it('a 100-level deep tree', async () => {
    const src = freshDir('deep');
    let dir = src;
    for (let i = 0; i < 100; i++) {
      dir = join(dir, `level${i}`);
      mkdirSync(dir);
      writeFileSync(join(dir, 'here'), `depth ${i}\n`);
    }
    symlinkSync('../'.repeat(100) + 'level0/here', join(dir, 'back-to-top'));
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    const deepest = [...entries.keys()].reduce((a, b) => (a.split('/').length > b.split('/').length ? a : b));
    expect(deepest.split('/').length - 1).toBe(101);
  });

  it('a file with more than 1400 extents gets an extent tree of depth 2 and reads back', async () => {
    const src = freshDir('extents');
    const path = join(src, 'fragmented');
    const fd = openSync(path, 'w');
    const blocks = 1500;
    // Data in every other block, holes in between: each data block is its own extent. The inode
    // holds 4 extents and a leaf block 340, so 1500 extents need index blocks below the inode.
    for (let i = 0; i < blocks; i++) writeSync(fd, randomBytes(4096), 0, 4096, i * 2 * 4096);
    closeSync(fd);
    const { image, entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);
    const extents = parseExtents(await debugfsOne(image, `ex <${entries.get('/fragmented')!.ino}>`));
    const depth = extents[0]?.depth ?? 0;
    expect(depth, 'extent tree depth').toBeGreaterThanOrEqual(2);
    const leaves = extents.filter((e) => e.level === depth);
    expect(leaves.length).toBe(blocks);
    expect(leaves.every((e, i) => e.logicalStart === i * 2 && e.length === 1)).toBe(true);
  });

  it('a later source overrides an earlier one: dirs merge, other kinds replace', async () => {
    const lower = freshDir('lower');
    mkdirSync(join(lower, 'etc/conf.d'), { recursive: true });
    writeFileSync(join(lower, 'etc/conf.d/a'), 'lower a');
    writeFileSync(join(lower, 'etc/conf.d/b'), 'lower b');
    mkdirSync(join(lower, 'becomes-file/sub'), { recursive: true });
    writeFileSync(join(lower, 'becomes-file/sub/x'), 'gone');
    writeFileSync(join(lower, 'becomes-dir'), 'gone too');
    writeFileSync(join(lower, 'linked'), 'two names in the lower layer');
    linkSync(join(lower, 'linked'), join(lower, 'etc/linked-too'));
    symlinkSync('old-target', join(lower, 'sym'));
    const upper = freshDir('upper');
    mkdirSync(join(upper, 'etc/conf.d'), { recursive: true });
    chmodSync(join(upper, 'etc/conf.d'), 0o700);
    writeFileSync(join(upper, 'etc/conf.d/b'), 'upper b');
    writeFileSync(join(upper, 'becomes-file'), 'now a file');
    mkdirSync(join(upper, 'becomes-dir'));
    writeFileSync(join(upper, 'becomes-dir/inside'), 'now a dir');
    writeFileSync(join(upper, 'linked'), 'replaces one of the two names');
    symlinkSync('new-target', join(upper, 'sym'));
    pinTimes(lower);
    pinTimes(upper);

    const { entries } = await build([lower, upper]);
    const expected = overlayManifests(await manifestFromDir(lower), await manifestFromDir(upper));
    expect(compareManifests(expected, entries)).toEqual([]);
    expect(entries.has('/becomes-file/sub/x')).toBe(false);
    expect(entries.get('/etc/conf.d')!.perm).toBe(0o700);
    expect(entries.has('/etc/conf.d/a')).toBe(true);
    expect(entries.get('/etc/linked-too')!.links).toBe(1); // its other name was replaced
    expect(entries.get('/sym')!.target).toBe('new-target');
  });

  it.skipIf(!isRoot)('owners: tar layers keep the headers\' owners, dir layers give 0:0', async () => {
    const src = freshDir('owners');
    mkdirSync(join(src, 'home/user'), { recursive: true });
    writeFileSync(join(src, 'home/user/file'), 'mine');
    symlinkSync('file', join(src, 'home/user/link'));
    writeFileSync(join(src, 'shadow'), 'secret');
    chownSync(join(src, 'home/user'), 1000, 1000);
    chownSync(join(src, 'home/user/file'), 1000, 1000);
    sh('chown', ['-h', '1001:1002', join(src, 'home/user/link')]);
    chownSync(join(src, 'shadow'), 0, 42);
    pinTimes(src);
    const tarball = join(work, `owners-${counter++}.tar`);
    sh('tar', ['-cf', tarball, '--numeric-owner', '-C', src, '.']);

    const fromTar = await build([tarball]);
    expect(compareManifests(await manifestFromTar(tarball), fromTar.entries)).toEqual([]);
    expect(fromTar.entries.get('/home/user/file')).toMatchObject({ uid: 1000, gid: 1000 });
    expect(fromTar.entries.get('/home/user/link')).toMatchObject({ uid: 1001, gid: 1002 });
    expect(fromTar.entries.get('/shadow')).toMatchObject({ uid: 0, gid: 42 });

    const fromDir = await build([src]);
    expect(compareManifests(await manifestFromDir(src), fromDir.entries)).toEqual([]);
    for (const [path, entry] of fromDir.entries) expect([path, entry.uid, entry.gid]).toEqual([path, 0, 0]);
  });

  it('two builds of the same input are byte-identical', async () => {
    const src = freshDir('same');
    mkdirSync(join(src, 'd'));
    for (let i = 0; i < 200; i++) writeFileSync(join(src, 'd', `f${i}`), randomBytes(i * 97));
    symlinkSync('d/f1', join(src, 'link'));
    linkSync(join(src, 'd/f2'), join(src, 'hard'));
    const tarball = join(work, `same-${counter++}.tar`);
    sh('tar', ['-cf', tarball, '-C', src, '.']);
    for (const source of [src, tarball]) {
      const first = await build([source]);
      const second = await build([source]);
      expect(first.result.uuid).toBe(second.result.uuid);
      // cmp exits 0 only when every byte is equal.
      expect(() => sh('cmp', [first.image, second.image])).not.toThrow();
    }
  });

  it('label and UUID are in the superblock (dumpe2fs -h)', async () => {
    const src = freshDir('label');
    writeFileSync(join(src, 'f'), 'x');
    const { image, result } = await build([src], { label: 'ferry-root' });
    const header = sh('dumpe2fs', ['-h', image]);
    expect(header).toMatch(/^Filesystem volume name:\s+ferry-root$/m);
    expect(header).toMatch(new RegExp(`^Filesystem UUID:\\s+${result.uuid}$`, 'm'));
    expect(result.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(header).toMatch(/^Filesystem features:.*\bhas_journal\b.*\bextent\b/m);
  });

  it('a --size too small is a clear error and leaves no image and no temp file', async () => {
    const src = freshDir('too-big');
    writeFileSync(join(src, 'ten-mib'), randomBytes(10 * 1024 * 1024));
    const outDir = freshDir('out');
    const output = join(outDir, 'small.ext4');
    const error = await mkfs({ sources: [src], output, sizeBytes: 4 * 1024 * 1024 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FerryError);
    expect((error as FerryError).message).toMatch(/does not fit|too small|larger/i);
    expect((error as FerryError).exitCode).not.toBe(0);
    expect(existsSync(output)).toBe(false);
    expect(readdirSync(outDir)).toEqual([]);
  });

  it('a given --size is honoured exactly', async () => {
    const src = freshDir('sized');
    writeFileSync(join(src, 'f'), randomBytes(100_000));
    const { image, result } = await build([src], { sizeBytes: 256 * 1024 * 1024 });
    expect(result.sizeBytes).toBe(256 * 1024 * 1024);
    expect(statSync(image).size).toBe(256 * 1024 * 1024);
  });

  it('mtimes come from the source', async () => {
    const src = freshDir('mtime');
    writeFileSync(join(src, 'old'), 'x');
    utimesSync(join(src, 'old'), 86_400, 86_400);
    writeFileSync(join(src, 'new'), 'y');
    utimesSync(join(src, 'new'), MTIME, MTIME);
    const { entries } = await build([src]);
    expect(entries.get('/old')!.mtime).toBe(86_400);
    expect(entries.get('/new')!.mtime).toBe(MTIME);
  });

  // A tarball made on a machine whose clock was ahead (or a file touched into the future) is
  // ordinary input; the files keep their mtimes, but the superblock must not claim to have been
  // written in the future, or e2fsck reports "Superblock last write time … is in the future".
  it('a source file dated in the future does not put the superblock time in the future', async () => {
    const src = freshDir('future');
    writeFileSync(join(src, 'new'), 'y');
    const future = Math.floor(Date.now() / 1000) + 5 * 365 * 86_400;
    utimesSync(join(src, 'new'), future, future);
    const { entries } = await build([src]);
    expect(entries.get('/new')!.mtime).toBe(future);
  });
});

// The comparison itself must be able to fail, or every test above proves nothing.
describe('the read-back', () => {
  it('notices changed content, mode, owner, link count, target and missing or extra paths', async () => {
    const src = freshDir('readback');
    writeFileSync(join(src, 'content'), 'one');
    writeFileSync(join(src, 'mode'), '');
    writeFileSync(join(src, 'links'), '');
    writeFileSync(join(src, 'removed'), '');
    symlinkSync('a', join(src, 'sym'));
    const { entries } = await build([src]);
    expect(compareManifests(await manifestFromDir(src), entries)).toEqual([]);

    writeFileSync(join(src, 'content'), 'two');
    chmodSync(join(src, 'mode'), 0o4755);
    linkSync(join(src, 'links'), join(src, 'links2'));
    rmSync(join(src, 'removed'));
    rmSync(join(src, 'sym'));
    symlinkSync('b', join(src, 'sym'));
    const problems = compareManifests(await manifestFromDir(src, { keepOwners: false }), entries).join('\n');
    expect(problems).toMatch(/^\/content: sha256 /m);
    expect(problems).toMatch(/^\/mode: perm is 0644 in the image, 04755 in the source$/m);
    expect(problems).toMatch(/^\/links: links is 1 in the image, 2 in the source$/m);
    expect(problems).toMatch(/^\/links2: missing from the image$/m);
    expect(problems).toMatch(/^\/removed: in the image but not in the source$/m);
    expect(problems).toMatch(/^\/sym: target is "a" in the image, "b" in the source$/m);
    if (isRoot) {
      const owned = await manifestFromDir(src, { keepOwners: true });
      owned.get('/content')!.uid = 1000;
      expect(compareManifests(owned, entries).join('\n')).toMatch(/^\/content: uid is 0 in the image, 1000 in the source$/m);
    }
  });
});

interface ExtentLine {
  level: number;
  depth: number;
  logicalStart: number;
  length: number;
}

/**
 * Parses debugfs `ex` output:
 *   Level Entries       Logical      Physical Length Flags
 *    0/ 1   1/  1     0 - 4294967295  1234   4294967296
 *    1/ 1   1/ 17     0 -     0  5678 -  5678      1
 */
function parseExtents(text: string): ExtentLine[] {
  const lines: ExtentLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+)\/\s*(\d+)\s+\d+\/\s*\d+\s+(\d+)\s+-\s+(\d+)\s/.exec(line);
    if (!m) continue;
    lines.push({ level: Number(m[1]), depth: Number(m[2]), logicalStart: Number(m[3]), length: Number(m[4]) - Number(m[3]) + 1 });
  }
  return lines;
}
