/**
 * The tar and dir layers, against tarballs made by the real GNU tar (plain, pax, gzip, xz, zstd)
 * and real directory trees (hard links, symlinks, fifos, sockets, device nodes when root).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { readContent } from '../support/tree-content.js';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeExt4 } from '../../src/image/ext4/index.js';
import { openDecompressed } from '../../src/image/layers/decompress.js';
import { DirLayer } from '../../src/image/layers/dir.js';
import { layerFromPath } from '../../src/image/layers/index.js';
import { LayerError } from '../../src/image/layers/layer.js';
import { TarLayer } from '../../src/image/layers/tar.js';
import { Tree, type Inode } from '../../src/image/tree.js';
import { debianRootfs } from '../support/rootfs.js';
import { compareManifests, e2fsck, manifestFromDir, manifestFromTar, readImage } from '../support/ext4-readback.js';

const isRoot = process.getuid?.() === 0;
const MTIME = 1_600_000_000;
const LONG_NAME = 'n'.repeat(150); // beyond ustar's 100-byte name field

let work: string;
let src: string; // the fixture tree, also what tarballs are made from

function sh(cmd: string, args: string[], cwd = work): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The regular files of the fixture: image path → host bytes. */
const files = new Map<string, Buffer>();

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ferry-layers-'));
  src = join(work, 'src');
  mkdirSync(join(src, 'etc/ssh'), { recursive: true });
  mkdirSync(join(src, 'usr/bin'), { recursive: true });
  mkdirSync(join(src, 'tmp'));
  mkdirSync(join(src, 'dev'));
  mkdirSync(join(src, `deep/${LONG_NAME}`), { recursive: true });
  const put = (path: string, data: Buffer | string, mode = 0o644): void => {
    writeFileSync(join(src, path), data);
    chmodSync(join(src, path), mode);
    files.set(path, Buffer.from(data));
  };
  put('etc/hostname', 'ferry\n');
  put('etc/empty', '');
  put('etc/ssh/sshd_config', 'PermitRootLogin no\n'.repeat(1000), 0o600);
  // Pseudo-random and larger than tar's 10 KiB record, so members span records and blocks.
  put('usr/bin/tool', pseudoRandom(300_001, 1), 0o755);
  put('usr/bin/sudo', pseudoRandom(4096, 2), 0o4755);
  put('usr/bin/wall', pseudoRandom(513, 3), 0o2755);
  put(`deep/${LONG_NAME}/${LONG_NAME}`, 'long name\n');
  linkSync(join(src, 'usr/bin/tool'), join(src, 'etc/tool-link')); // hard link across directories
  symlinkSync('../usr/bin/tool', join(src, 'etc/tool-symlink'));
  symlinkSync(`/deep/${LONG_NAME}/${LONG_NAME}`, join(src, 'etc/long-symlink')); // target > 100 bytes
  chmodSync(join(src, 'tmp'), 0o1777);
  sh('mkfifo', [join(src, 'tmp/fifo')]);
  if (isRoot) {
    sh('mknod', ['-m', '666', join(src, 'dev/null'), 'c', '1', '3']);
    sh('mknod', ['-m', '660', join(src, 'dev/vda'), 'b', '254', '0']);
    sh('mknod', ['-m', '600', join(src, 'dev/big'), 'c', '300', '70000']); // needs the wide dev_t encoding
  }
  sh('find', [src, '-exec', 'touch', '-h', '-d', `@${MTIME}`, '{}', '+']);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Applies a DirLayer to each path and returns the error messages ('' when it succeeded). */
async function applyHere(paths: string[]): Promise<string[]> {
  const messages: string[] = [];
  for (const path of paths) messages.push(await applied(new DirLayer(path)).then(() => '', (err: Error) => err.message));
  return messages;
}

/** `applyHere`, in a child process running as the unprivileged user `nobody` (65534). */
function applyAsNobody(paths: string[]): string[] {
  const script = join(work, 'apply-as-nobody.mts');
  const modules = (path: string): string => new URL(`../../src/image/${path}`, import.meta.url).pathname;
  writeFileSync(
    script,
    `import { DirLayer } from ${JSON.stringify(modules('layers/dir.ts'))};
import { Tree } from ${JSON.stringify(modules('tree.ts'))};
const messages = [];
for (const path of process.argv.slice(2)) {
  messages.push(await new DirLayer(path).apply(new Tree()).then(() => '', (err) => err.message));
}
console.log(JSON.stringify(messages));
`,
  );
  chmodSync(work, 0o755); // mkdtemp makes it 0700
  const tsx = join(process.cwd(), 'node_modules/.bin/tsx');
  const out = sh('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', `HOME=${work}`, tsx, script, ...paths]);
  return JSON.parse(out.trim().split('\n').pop()!) as string[];
}

function pseudoRandom(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let block = Buffer.alloc(0);
  for (let i = 0, counter = 0; i < length; i++) {
    if (i % 32 === 0) block = createHash('sha256').update(`${seed}:${counter++}`).digest();
    out[i] = block[i % 32];
  }
  return out;
}

function node(tree: Tree, path: string): Inode {
  const found = tree.lookup(path);
  expect(found, `${path} in the tree`).toBeDefined();
  return found!;
}

async function applied(layer: { apply(tree: Tree): Promise<void> }): Promise<Tree> {
  const tree = new Tree();
  await layer.apply(tree);
  return tree;
}

async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of chunks) parts.push(chunk);
  return Buffer.concat(parts);
}

/** The bytes of a regular file in the tree, whatever kind of content it has. */
async function contentOf(tree: Tree, path: string): Promise<Buffer> {
  const inode = node(tree, path);
  const content = inode.content;
  switch (content.kind) {
    case 'empty':
    case 'bytes':
    case 'hostFile':
    case 'file':
      return readContent(content);
    case 'stream': {
      let data: Buffer | undefined;
      await content.source.replay(new Set([content.index]), async (index, chunks) => {
        expect(index).toBe(content.index);
        data = await collect(chunks);
      });
      expect(data, `replay delivered ${path}`).toBeDefined();
      return data!;
    }
  }
}

/** The checks every tarball of the fixture (and the dir layer) must pass. */
async function expectFixtureTree(tree: Tree, owner: { uid: number; gid: number }): Promise<void> {
  for (const [path, data] of files) {
    const inode = node(tree, path);
    expect(inode.kind, path).toBe('file');
    expect(inode.size, path).toBe(data.length);
    expect((await contentOf(tree, path)).equals(data), `bytes of ${path}`).toBe(true);
    expect(inode.mtime, path).toBe(MTIME);
    expect([inode.uid, inode.gid], path).toEqual([owner.uid, owner.gid]);
  }
  expect(node(tree, 'usr/bin/sudo').perm).toBe(0o4755);
  expect(node(tree, 'usr/bin/wall').perm).toBe(0o2755);
  expect(node(tree, 'etc/ssh/sshd_config').perm).toBe(0o600);
  expect(node(tree, 'tmp').perm).toBe(0o1777);
  expect(node(tree, 'tmp').kind).toBe('dir');
  expect(node(tree, 'tmp/fifo').kind).toBe('fifo');

  const tool = node(tree, 'usr/bin/tool');
  expect(node(tree, 'etc/tool-link'), 'a hard link is the same inode').toBe(tool);
  expect(tool.names).toBe(2);

  const symlink = node(tree, 'etc/tool-symlink');
  expect(symlink.kind).toBe('symlink');
  expect(symlink.target).toBe('../usr/bin/tool');
  expect(node(tree, 'etc/long-symlink').target).toBe(`/deep/${LONG_NAME}/${LONG_NAME}`);

  if (isRoot) {
    expect(node(tree, 'dev/null')).toMatchObject({ kind: 'chardev', perm: 0o666, rdevMajor: 1, rdevMinor: 3 });
    expect(node(tree, 'dev/vda')).toMatchObject({ kind: 'blockdev', perm: 0o660, rdevMajor: 254, rdevMinor: 0 });
    expect(node(tree, 'dev/big')).toMatchObject({ kind: 'chardev', rdevMajor: 300, rdevMinor: 70000 });
  }
}

describe('decompress', () => {
  it('recognises gzip, xz and zstd by magic bytes and names the file in errors', async () => {
    const data = pseudoRandom(200_000, 9);
    const plain = join(work, 'blob');
    writeFileSync(plain, data);
    sh('gzip', ['-k', plain]);
    sh('xz', ['-k', plain]);
    sh('zstd', ['-q', plain]);
    for (const [file, compression] of [
      [plain, 'none'],
      [`${plain}.gz`, 'gzip'],
      [`${plain}.xz`, 'xz'],
      [`${plain}.zst`, 'zstd'],
    ] as const) {
      const opened = await openDecompressed(file);
      expect(opened.compression).toBe(compression);
      expect((await collect(opened.stream)).equals(data), file).toBe(true);
    }
    for (const suffix of ['.gz', '.xz', '.zst']) {
      const cut = join(work, `cut${suffix}`);
      writeFileSync(cut, readFileSync(`${plain}${suffix}`).subarray(0, 150_000));
      const opened = await openDecompressed(cut);
      await expect(collect(opened.stream), suffix).rejects.toThrow(cut);
    }
  });
});

const variants = [
    { name: 'GNU tar', file: 'gnu.tar', args: ['--format=gnu'] },
  { name: 'pax', file: 'pax.tar', args: ['--format=pax'] },
  { name: 'gzip', file: 'rootfs.tar.gz', args: ['--format=pax', '--gzip'] },
  { name: 'xz', file: 'rootfs.tar.xz', args: ['--xz'] },
  { name: 'zstd', file: 'rootfs.tar.zst', args: ['--zstd'] },
];

describe('tar layer', () => {
  beforeAll(() => {
    for (const variant of variants) {
      const tarball = join(work, variant.file);
      sh('tar', ['-C', src, ...variant.args, '--owner=1000', '--group=1000', '--numeric-owner', '-cf', tarball, '.']);
    }
  });

  for (const variant of variants) {
    it(`reads a ${variant.name} tarball: kinds, modes, owners, links, devices, exact bytes`, async () => {
      const tarball = join(work, variant.file);
      const tree = await applied(new TarLayer(tarball));
      await expectFixtureTree(tree, { uid: 1000, gid: 1000 });
      const expectedKind = variant.file.endsWith('.tar') ? 'file' : 'stream';
      expect(node(tree, 'usr/bin/tool').content.kind).toBe(expectedKind);
    });
  }

  it('replays all wanted members in one pass, with the bytes of each', async () => {
    const tarball = join(work, 'rootfs.tar.zst');
    const layer = new TarLayer(tarball, { keepOwners: false });
    const tree = await applied(layer);
    expect(node(tree, 'etc/hostname').uid).toBe(0);
    const pathOf = new Map<number, string>();
    for (const { path, node: inode } of tree.walk()) {
      if (inode.content.kind === 'stream') pathOf.set(inode.content.index, path.slice(1));
    }
    expect(pathOf.size).toBe(files.size - 1); // every non-empty file; the hard link shares one member
    const seen: number[] = [];
    await layer.replay(new Set(pathOf.keys()), async (index, chunks) => {
      seen.push(index);
      const data = await collect(chunks);
      expect(data.equals(readFileSync(join(src, pathOf.get(index)!))), pathOf.get(index)).toBe(true);
    });
    expect(seen).toEqual([...pathOf.keys()].sort((a, b) => a - b));

    // A consumer that stops reading a member early does not derail the members after it.
    const [first, second] = [...pathOf.keys()].sort((a, b) => a - b);
    const got: Record<number, number> = {};
    await layer.replay(new Set([first, second]), async (index, chunks) => {
      if (index === first) {
        for await (const chunk of chunks) {
          got[index] = chunk.length;
          break;
        }
      } else got[index] = (await collect(chunks)).length;
    });
    expect(got[second]).toBe(statSync(join(src, pathOf.get(second)!)).size);
  });

  it('refuses to replay an archive that changed since apply', async () => {
    const tarball = join(work, 'changing.tar.gz');
    sh('tar', ['-C', src, '-czf', tarball, 'etc']);
    const layer = new TarLayer(tarball);
    const tree = await applied(layer);
    const content = node(tree, 'etc/hostname').content;
    expect(content.kind).toBe('stream');
    sh('tar', ['-C', src, '-czf', tarball, 'usr', 'etc']);
    await expect(layer.replay(new Set([(content as { index: number }).index]), async () => {})).rejects.toThrow(
      /changed since it was read/,
    );
  });

  it('strips leading ./ and / but refuses entries that escape the root', async () => {
    const dir = join(work, 'escape');
    mkdirSync(dir);
    writeFileSync(join(dir, 'evil'), 'x');
    const absolute = join(work, 'absolute.tar');
    sh('tar', ['-C', dir, '-cPf', absolute, '--transform=s,^,/etc/,', 'evil']);
    expect(node(await applied(new TarLayer(absolute)), 'etc/evil').kind).toBe('file');

    for (const [file, prefix, entry] of [
      ['dotdot.tar', '../', '../evil'],
      ['abs-dotdot.tar', '/../../etc/', '/../../etc/evil'],
      ['inner-dotdot.tar', 'usr/../../', 'usr/../../evil'],
    ]) {
      const tarball = join(work, file);
      sh('tar', ['-C', dir, '-cPf', tarball, `--transform=s,^,${prefix},`, 'evil']);
      const error = await applied(new TarLayer(tarball)).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(LayerError);
      expect((error as Error).message).toContain(JSON.stringify(entry));
      expect((error as Error).message).toContain(tarball);
    }
  });

  it('refuses a hard link to a member that is not earlier in the archive', async () => {
    const dir = join(work, 'links');
    mkdirSync(dir);
    writeFileSync(join(dir, 'a'), 'a');
    linkSync(join(dir, 'a'), join(dir, 'b'));
    const tarball = join(work, 'dangling-link.tar');
    sh('tar', ['-C', dir, '-cf', tarball, 'a', 'b']);
    sh('tar', ['--delete', '-f', tarball, 'a']);
    await expect(applied(new TarLayer(tarball))).rejects.toThrow(/entry "b": hard link to "a", which is not an earlier member/);
  });

  it('reports a tarball cut inside a member, naming the file and the member', async () => {
    const whole = join(work, 'gnu.tar');
    const listing = sh('tar', ['-tvf', whole, '--block-number']);
    // Cut 1000 bytes into the data of the 300001-byte member (usr/bin/tool or its hard link,
    // whichever tar met first); block numbers count 512-byte blocks.
    const [, block, member] = /block (\d+): \S+ \S+ +300001 .* (\S+)$/m.exec(listing)!;
    const cut = join(work, 'cut-member.tar');
    writeFileSync(cut, readFileSync(whole).subarray(0, (Number(block) + 1) * 512 + 1000));
    const error = await applied(new TarLayer(cut)).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as Error).message).toMatch(/truncated tarball/);
    expect((error as Error).message).toContain(cut);
    expect((error as Error).message).toContain(`member ${JSON.stringify(member)}`);
  });

  it('reports a tarball cut between members (no end-of-archive blocks)', async () => {
    const dir = join(work, 'two');
    mkdirSync(dir);
    writeFileSync(join(dir, 'a'), 'a'.repeat(512));
    writeFileSync(join(dir, 'b'), 'b'.repeat(512));
    const whole = join(work, 'two.tar');
    sh('tar', ['-C', dir, '-cf', whole, 'a', 'b']);
    const cut = join(work, 'cut-boundary.tar');
    writeFileSync(cut, readFileSync(whole).subarray(0, 2 * 1024)); // both members, nothing after
    await expect(applied(new TarLayer(cut))).rejects.toThrow(/truncated tarball: .*cut-boundary\.tar has no end-of-archive marker/);
    writeFileSync(cut, readFileSync(whole).subarray(0, 1024)); // only the first member
    await expect(applied(new TarLayer(cut))).rejects.toThrow(/no end-of-archive marker after member "a"/);
    writeFileSync(cut, readFileSync(whole).subarray(0, 1024 + 300)); // inside b's header
    await expect(applied(new TarLayer(cut))).rejects.toThrow(/ends inside a header after member "a"/);
    expect(node(await applied(new TarLayer(whole)), 'b').size).toBe(512);
  });

  it('reports corrupt and truncated compressed tarballs, naming the file', async () => {
    const good = readFileSync(join(work, 'rootfs.tar.gz'));
    const corrupt = join(work, 'corrupt.tar.gz');
    // A wrong CRC in the trailer: every tar header parses, only gzip can tell.
    const badCrc = Buffer.from(good);
    badCrc[badCrc.length - 8] ^= 1;
    writeFileSync(corrupt, badCrc);
    const error = await applied(new TarLayer(corrupt)).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as Error).message).toContain(`${corrupt}: corrupt or truncated gzip data`);
    // Damaged deflate data: whichever notices first (gzip or the tar parser), the file is named.
    const damaged = Buffer.from(good);
    damaged.fill(0x55, 2000, 2100);
    writeFileSync(corrupt, damaged);
    await expect(applied(new TarLayer(corrupt))).rejects.toThrow(/corrupt.*corrupt\.tar\.gz|corrupt\.tar\.gz.*corrupt/);

    const truncated = join(work, 'truncated.tar.xz');
    writeFileSync(truncated, readFileSync(join(work, 'rootfs.tar.xz')).subarray(0, 20_000));
    await expect(applied(new TarLayer(truncated))).rejects.toThrow(/truncated\.tar\.xz.*(truncated|end of data)/);

    const garbage = join(work, 'garbage.tar');
    writeFileSync(garbage, pseudoRandom(4096, 7));
    await expect(applied(new TarLayer(garbage))).rejects.toThrow(/corrupt tarball .*garbage\.tar/);
  });

  it('keeps owner ids beyond the ustar field (base-256 in GNU format, pax records)', async () => {
    for (const format of ['gnu', 'pax']) {
      const tarball = join(work, `big-owner-${format}.tar`);
      sh('tar', ['-C', src, `--format=${format}`, '--owner=3000000', '--group=3000001', '--numeric-owner', '-cf', tarball, 'etc/hostname']);
      expect(node(await applied(new TarLayer(tarball)), 'etc/hostname'), format).toMatchObject({ uid: 3000000, gid: 3000001 });
    }
  });

  it("passes on the consumer's own errors from replay unchanged", async () => {
    const layer = new TarLayer(join(work, 'rootfs.tar.xz'));
    const tree = await applied(layer);
    const content = node(tree, 'usr/bin/sudo').content as { kind: 'stream'; index: number };
    const diskFull = new Error('ENOSPC: no space left on device');
    await expect(
      layer.replay(new Set([content.index]), async () => {
        throw diskFull;
      }),
    ).rejects.toBe(diskFull);
    // …and the layer is still usable afterwards.
    expect((await contentOf(tree, 'usr/bin/sudo')).equals(files.get('usr/bin/sudo')!)).toBe(true);
  });

  it('refuses names that are not UTF-8 rather than mangling them', async () => {
    const dir = join(work, 'latin1');
    mkdirSync(dir);
    writeFileSync(Buffer.from(`${dir}/caf\xe9`, 'latin1'), 'x');
    const tarball = join(work, 'latin1.tar');
    sh('tar', ['-C', dir, '-cf', tarball, '.']);
    await expect(applied(new TarLayer(tarball))).rejects.toThrow(/not valid UTF-8/);
    await expect(applied(new DirLayer(dir))).rejects.toThrow(/not valid UTF-8/);
  });

  it('names a missing tarball', async () => {
    const missing = join(work, 'no-such.tar.gz');
    await expect(applied(new TarLayer(missing))).rejects.toThrow(`cannot read the tarball ${missing}`);
    await expect(new TarLayer(missing).fingerprint()).rejects.toThrow(LayerError);
  });

  it('fingerprints by path, size, mtime and inode', async () => {
    const tarball = join(work, 'fp.tar');
    sh('tar', ['-C', src, '-cf', tarball, 'etc']);
    const layer = new TarLayer(tarball);
    const before = await layer.fingerprint();
    expect(await layer.fingerprint()).toBe(before);
    expect(await new TarLayer(tarball, { keepOwners: false }).fingerprint()).not.toBe(before);
    utimesSync(tarball, MTIME, MTIME);
    expect(await layer.fingerprint()).not.toBe(before);
  });
});

describe('dir layer', () => {
  it('copies the fixture tree: kinds, modes, hard links across directories, symlinks, owner 0:0', async () => {
    const tree = await applied(new DirLayer(src));
    await expectFixtureTree(tree, { uid: 0, gid: 0 });
    // The first name met (etc sorts before usr), as its directory and its name.
    expect(node(tree, 'usr/bin/tool').content).toEqual({ kind: 'hostFile', dir: { path: join(src, 'etc') }, name: 'tool-link' });
  });

  it('keeps host owners on request', async () => {
    const dir = join(work, 'owned');
    mkdirSync(dir);
    writeFileSync(join(dir, 'f'), 'f');
    const st = statSync(join(dir, 'f'));
    const tree = await applied(new DirLayer(dir, { keepOwners: true }));
    expect([node(tree, 'f').uid, node(tree, 'f').gid]).toEqual([st.uid, st.gid]);
  });

  it('handles 255-byte and UTF-8 names, sockets, and orders entries by bytes', async () => {
    const dir = join(work, 'names');
    mkdirSync(dir);
    const longest = `${'é'.repeat(100)}${'x'.repeat(55)}`; // 255 bytes in UTF-8
    expect(Buffer.byteLength(longest)).toBe(255);
    const names = ['b', 'a', 'Z', 'ä', '日本語', '😀', '\uffff', 'a b', longest];
    for (const name of names) writeFileSync(join(dir, name), name);
    const server = createServer();
    await new Promise<void>((done) => server.listen(join(dir, 'sock'), done));
    try {
      const tree = await applied(new DirLayer(dir));
      const listed = [...tree.root.children!.keys()];
      const byBytes = [...names, 'sock'].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      expect(listed).toEqual(byBytes);
      expect(listed.indexOf('😀')).toBeGreaterThan(listed.indexOf('\uffff')); // UTF-16 order would differ
      expect(node(tree, 'sock').kind).toBe('socket');
      expect((await contentOf(tree, longest)).toString()).toBe(longest);
      expect((await contentOf(tree, '日本語')).toString()).toBe('日本語');
    } finally {
      server.close();
    }
  });

  it('walks a 100-level deep tree', async () => {
    const dir = join(work, 'deep');
    let path = dir;
    for (let i = 0; i < 100; i++) path = join(path, `level${i}`);
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, 'bottom'), 'deep');
    const tree = await applied(new DirLayer(dir));
    const rel = [...Array(100).keys()].map((i) => `level${i}`).join('/');
    expect((await contentOf(tree, `${rel}/bottom`)).toString()).toBe('deep');
  });

  it('names a missing path and a non-directory', async () => {
    const missing = join(work, 'no-such-dir');
    await expect(applied(new DirLayer(missing))).rejects.toThrow(`cannot read the directory ${missing}`);
    await expect(applied(new DirLayer(join(src, 'etc/hostname')))).rejects.toThrow(/is not a directory/);
  });

  it('names an unreadable file and an unlistable directory', async () => {
    const dir = join(work, 'unreadable');
    mkdirSync(join(dir, 'files'), { recursive: true });
    mkdirSync(join(dir, 'dirs/closed'), { recursive: true });
    writeFileSync(join(dir, 'files/secret'), 's');
    chmodSync(join(dir, 'files/secret'), 0o000);
    chmodSync(join(dir, 'dirs/closed'), 0o000);
    // Root reads everything, so as root the layer runs in a child process as `nobody`.
    const messages = isRoot ? applyAsNobody([join(dir, 'files'), join(dir, 'dirs')]) : await applyHere([join(dir, 'files'), join(dir, 'dirs')]);
    expect(messages[0]).toContain(`cannot read ${join(dir, 'files/secret')}: EACCES`);
    expect(messages[1]).toContain(`cannot list ${join(dir, 'dirs/closed')}: EACCES`);
  });

  it('fingerprints paths, modes, sizes and mtimes', async () => {
    const dir = join(work, 'fp');
    mkdirSync(dir);
    writeFileSync(join(dir, 'f'), 'one');
    utimesSync(join(dir, 'f'), MTIME, MTIME);
    const layer = new DirLayer(dir);
    const first = await layer.fingerprint();
    writeFileSync(join(dir, 'f'), 'two'); // same size, same mtime: not noticed, like make
    utimesSync(join(dir, 'f'), MTIME, MTIME);
    expect(await layer.fingerprint()).toBe(first);
    utimesSync(join(dir, 'f'), MTIME + 1, MTIME + 1);
    const touched = await layer.fingerprint();
    expect(touched).not.toBe(first);
    chmodSync(join(dir, 'f'), 0o600);
    expect(await layer.fingerprint()).not.toBe(touched);
    writeFileSync(join(dir, 'g'), '');
    truncateSync(join(dir, 'f'), 1);
    expect(await layer.fingerprint()).not.toBe(touched);
  });
});

describe('layerFromPath', () => {
  it('makes a dir layer from a directory, a tar layer from a file, and names a missing path', async () => {
    expect(await layerFromPath(src)).toBeInstanceOf(DirLayer);
    expect(await layerFromPath(join(work, 'rootfs.tar.gz'))).toBeInstanceOf(TarLayer);
    const missing = join(work, 'nowhere');
    await expect(layerFromPath(missing)).rejects.toThrow(new RegExp(`${missing}.*expected a directory or a tarball`));
  });
});

describe('layers through the ext4 writer', () => {
  // e2fsprogs reads the images back: what the layers put in the tree is what a kernel would see.
  for (const file of ['pax.tar', 'rootfs.tar.gz']) {
    it(`${file}: e2fsck is clean and the image matches the tarball`, async () => {
      const tarball = join(work, file);
      const tree = await applied(new TarLayer(tarball));
      const image = join(work, `${file}.ext4`);
      await writeExt4(tree, image);
      const fsck = await e2fsck(image);
      expect(fsck.exitCode, fsck.output).toBe(0);
      expect(compareManifests(await manifestFromTar(tarball), await readImage(image))).toEqual([]);
    });
  }

  it('dir layer: e2fsck is clean and the image matches the directory', async () => {
    const tree = await applied(new DirLayer(src));
    const image = join(work, 'dir.ext4');
    await writeExt4(tree, image);
    const fsck = await e2fsck(image);
    expect(fsck.exitCode, fsck.output).toBe(0);
    expect(compareManifests(await manifestFromDir(src), await readImage(image))).toEqual([]);
  });
});

describe('a real Debian rootfs (mmdebstrap, cached)', () => {
  it('zstd-compressed: streamed members land in the image byte for byte', async () => {
    const { tar } = await debianRootfs();
    const compressed = join(work, 'debian.tar.zst');
    sh('zstd', ['-q', '-T2', tar, '-o', compressed]);
    const tree = await applied(new TarLayer(compressed));
    expect(node(tree, 'usr/bin/ssh-keygen').content.kind).toBe('stream');
    const image = join(work, 'debian.ext4');
    await writeExt4(tree, image);
    const fsck = await e2fsck(image);
    expect(fsck.exitCode, fsck.output).toBe(0);
    expect(compareManifests(await manifestFromTar(tar), await readImage(image))).toEqual([]);
  });
});
