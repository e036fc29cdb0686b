/**
 * Names that hold U+FFFD, through `ferry image mkfs`: U+FFFD is a character like any other (the
 * bytes EF BF BD), so such names are kept byte for byte. Only bytes that are not UTF-8 are
 * refused — ferry used to take "the decoded name holds U+FFFD" for "the bytes were not UTF-8".
 * The images are checked with e2fsck and read back with debugfs (e2fsprogs, not ferry's reader).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { pack as tarPack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareManifests, debugfs, e2fsck, manifestFromDir, manifestFromTar, readImage } from '../support/ext4-readback.js';

const repo = resolve(import.meta.dirname, '../..');
const REPLACEMENT = 'a\uFFFDb';
// At the start of a name, U+FEFF is what a BOM-stripping decoder would silently drop.
const BOM = '\uFEFFbom';

let work: string;
let counter = 0;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ferry-utf8-names-'));
});
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

function mkfs(source: string, output: string) {
  return execa('node', ['--import', 'tsx', join(repo, 'src/cli.ts'), 'image', 'mkfs', source, '-o', output], { cwd: repo, reject: false, env: { NO_COLOR: '1' } });
}

function outDir(): string {
  const dir = join(work, `out-${counter++}`);
  mkdirSync(dir);
  return dir;
}

/** A tarball written by tar-stream: names beyond ASCII go into PAX path and linkpath records. */
async function packed(entries: Array<{ header: Partial<Header> & { name: string }; data?: string }>): Promise<Buffer> {
  const pack = tarPack();
  for (const { header, data } of entries) pack.entry({ mtime: new Date(1_700_000_000_000), ...header }, data ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The raw bytes debugfs lists for one directory of the image (names not decoded). */
const listing = (image: string, dir: string): Promise<Buffer> => debugfs(image, [`ls -p ${dir}`]);

/** Builds an image from `source`; it must pass e2fsck. */
async function built(source: string): Promise<string> {
  const output = join(outDir(), 'names.ext4');
  const result = await mkfs(source, output);
  expect(result.exitCode, result.stderr).toBe(0);
  const fsck = await e2fsck(output);
  expect(fsck.exitCode, fsck.output).toBe(0);
  return output;
}

describe('names with U+FFFD through ferry image mkfs', () => {
  it('a tar-stream tarball (PAX names): the names, a symlink and a hard link to one read back byte for byte', async () => {
    const tarball = join(work, 'replacement-pax.tar');
    const target = `dir/${REPLACEMENT}`;
    const bytes = await packed([
      { header: { name: 'dir', type: 'directory', mode: 0o755 } },
      { header: { name: target, mode: 0o644 }, data: 'replacement\n' },
      { header: { name: BOM, mode: 0o644 }, data: 'bom\n' },
      { header: { name: 'to-replacement', type: 'symlink', linkname: target, mode: 0o777 } },
      // A `pax` object makes tar-stream write PAX path and linkpath records (else the target stays in the ustar header).
      { header: { name: 'to-replacement-pax', type: 'symlink', linkname: target, mode: 0o777, pax: {} } },
      { header: { name: 'hard', type: 'link', linkname: target, mode: 0o644 } },
    ]);
    writeFileSync(tarball, bytes);
    const image = await built(tarball);
    expect(compareManifests(await manifestFromTar(tarball), await readImage(image))).toEqual([]);
    expect((await listing(image, '/dir')).includes(Buffer.from(REPLACEMENT))).toBe(true);
    expect((await listing(image, '/')).includes(Buffer.from(BOM))).toBe(true);
    const entries = await readImage(image);
    expect(entries.get('/to-replacement')?.target).toBe(target);
    expect(entries.get('/to-replacement-pax')?.target).toBe(target);
    expect(entries.get('/hard')?.links).toBe(2);
  }, 60_000);

  it('a GNU tar tarball (names in the ustar header) and a directory source', async () => {
    const tree = join(work, 'replacement-dir');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'sub', REPLACEMENT), 'replacement\n');
    writeFileSync(join(tree, BOM), 'bom\n');
    const tarball = join(work, 'replacement-gnu.tar');
    execFileSync('tar', ['--format=gnu', '-C', tree, '-cf', tarball, '.']);
    for (const source of [tarball, tree]) {
      const image = await built(source);
      expect(compareManifests(await manifestFromDir(tree), await readImage(image)), source).toEqual([]);
      expect((await listing(image, '/sub')).includes(Buffer.from(REPLACEMENT)), source).toBe(true);
      expect((await listing(image, '/')).includes(Buffer.from(BOM)), source).toBe(true);
    }
  }, 60_000);

  it('a byte that is not UTF-8 — in a PAX path or linkpath, or beside its U+FFFD twin in a directory — is refused: exit 65, no image', async () => {
    const tree = join(work, 'not-utf8');
    mkdirSync(tree);
    writeFileSync(join(tree, REPLACEMENT), 'valid');
    // readdir decodes "a\xffb" as "a\uFFFDb": the twin's name, so lstat found the twin's file.
    writeFileSync(Buffer.from(`${tree}/a\xffb`, 'latin1'), 'invalid');
    const tarball = join(work, 'not-utf8-pax.tar');
    execFileSync('tar', ['--format=pax', '-C', tree, '-cf', tarball, '.']);
    // A PAX linkpath record whose bytes are not UTF-8 (C3 28: a lead byte, then no continuation).
    const badLink = join(work, 'not-utf8-linkpath.tar');
    const linkBytes = await packed([{ header: { name: 'link', type: 'symlink', linkname: 'x\u00e9y', mode: 0o777, pax: {} } }]);
    const at = linkBytes.indexOf(Buffer.from('linkpath=x\u00e9y'));
    expect(at, 'tar-stream wrote a PAX linkpath').toBeGreaterThan(0);
    linkBytes[at + 'linkpath=x'.length + 1] = 0x28;
    writeFileSync(badLink, linkBytes);
    for (const source of [tarball, tree, badLink]) {
      const dir = outDir();
      const result = await mkfs(source, join(dir, 'x.ext4'));
      expect(result.exitCode, `${source}: ${result.stderr}`).toBe(65);
      expect(result.stderr).toMatch(/not valid UTF-8/);
      expect(result.stderr, 'a user error, not a crash').not.toMatch(/^\s+at /m);
      expect(readdirSync(dir)).toEqual([]);
    }
  }, 60_000);
});
