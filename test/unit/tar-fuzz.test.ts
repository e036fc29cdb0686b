/**
 * A fuzz test of the tar and compressed-tar readers and of the ext4 writer's input path: real
 * small tarballs (GNU and PAX, made here by python's tarfile) are mutated — truncated, header
 * bytes flipped (with the checksum fixed, so the mutation reaches the parser, or not), checksums
 * made wrong, sizes made absurd, types made odd — and each goes through `mkfs`, the function the
 * CLI calls, plain or compressed (gzip, xz, zstd, as the reader supports them).
 *
 * Each case must end in one of two ways: a FerryError (what the CLI prints without a stack
 * trace), or an image that `e2fsck -fn` passes and that reads back (debugfs) equal to what
 * tar-stream lists in the mutated archive. A fixed seed makes a failure reproducible; the case
 * count is 400 (about 15 s here) unless FERRY_FUZZ_CASES asks for more, and FERRY_FUZZ_SEED for
 * another seed.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { extract as tarExtract } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prng } from '../../bench/synthetic-tree.js';
import { FerryError } from '../../src/errors.js';
import { mkfs } from '../../src/image/mkfs.js';
import { compareManifests, e2fsck, manifestFromTar, readImage } from '../support/ext4-readback.js';

const CASES = Number(process.env.FERRY_FUZZ_CASES ?? 400);
const SEED = Number(process.env.FERRY_FUZZ_SEED ?? 20261201);

let work: string;
const bases: Array<{ name: string; bytes: Buffer }> = [];

/** Makes a small tarball of every member kind ferry reads, with python's tarfile. */
function pythonTar(path: string, format: 'GNU' | 'PAX'): void {
  const script = `
import io, sys, tarfile
fmt = tarfile.GNU_FORMAT if sys.argv[2] == 'GNU' else tarfile.PAX_FORMAT
def info(name, type=tarfile.REGTYPE, **kw):
    i = tarfile.TarInfo(name); i.type = type; i.mtime = 1700000000; i.mode = kw.pop('mode', 0o644)
    i.uid = kw.pop('uid', 0); i.gid = kw.pop('gid', 0)
    for k, v in kw.items(): setattr(i, k, v)
    return i
with tarfile.open(sys.argv[1], 'w', format=fmt) as tar:
    tar.addfile(info('./', tarfile.DIRTYPE, mode=0o755))
    tar.addfile(info('etc', tarfile.DIRTYPE, mode=0o755))
    for name, size in [('etc/hostname', 6), ('etc/empty', 0), ('data', 5000), ('etc/one-block', 512)]:
        i = info(name, size=size, uid=1000, gid=100)
        tar.addfile(i, io.BytesIO(bytes((n * 7 + size) % 251 for n in range(size))))
    tar.addfile(info('link', tarfile.SYMTYPE, linkname='etc/hostname', mode=0o777))
    tar.addfile(info('hard', tarfile.LNKTYPE, linkname='data'))
    tar.addfile(info('fifo', tarfile.FIFOTYPE))
    tar.addfile(info('null', tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666))
    tar.addfile(info('d/' + 'long-name-' * 12, size=3), io.BytesIO(b'abc'))
`;
  execFileSync('python3', ['-c', script, path, format]);
}

/** Offsets of the header blocks of a well-formed plain tarball (data blocks skipped). */
function headerOffsets(tar: Buffer): number[] {
  const offsets: number[] = [];
  for (let at = 0; at + 512 <= tar.length; ) {
    if (tar.subarray(at, at + 512).every((b) => b === 0)) break;
    offsets.push(at);
    const size = parseInt(tar.subarray(at + 124, at + 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return offsets;
}

function fixChecksum(tar: Buffer, at: number): void {
  tar.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = at; i < at + 512; i++) sum += tar[i]!;
  tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1');
}

interface Mutation {
  description: string;
  bytes: Buffer;
}

/** One mutation of a plain tarball. */
function mutate(base: Buffer, random: () => number): Mutation {
  const tar = Buffer.from(base);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const headers = headerOffsets(tar);
  const at = pick(headers);
  switch (pick(['truncate', 'flip', 'flip-fixed', 'checksum', 'size', 'type', 'mode-owner', 'name'] as const)) {
    case 'truncate': {
      const cut = random() < 0.5 ? Math.floor(random() * tar.length) : Math.floor(random() * (tar.length / 512)) * 512;
      return { description: `truncated at ${cut}`, bytes: tar.subarray(0, cut) };
    }
    case 'flip': {
      const n = 1 + Math.floor(random() * 4);
      const where: number[] = [];
      for (let i = 0; i < n; i++) {
        const offset = at + Math.floor(random() * 512);
        tar[offset] = tar[offset]! ^ (1 << Math.floor(random() * 8));
        where.push(offset);
      }
      return { description: `bits flipped at ${where.join(',')}`, bytes: tar };
    }
    case 'flip-fixed': {
      const offset = at + Math.floor(random() * 348); // name … devminor, then prefix is not touched
      tar[offset] = Math.floor(random() * 256);
      fixChecksum(tar, at);
      return { description: `byte ${offset - at} of the header at ${at} set to ${tar[offset]}, checksum fixed`, bytes: tar };
    }
    case 'checksum': {
      tar.write(pick(['000000\0 ', '777777\0 ', '        ', 'garbage!']), at + 148, 'latin1');
      return { description: `wrong checksum in the header at ${at}`, bytes: tar };
    }
    case 'size': {
      const field = pick([
        Buffer.from('77777777777\0', 'latin1'),
        Buffer.from('00000100000\0', 'latin1'),
        Buffer.from([0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
        Buffer.from('-0000000001\0', 'latin1'),
        Buffer.from('00000000001\0', 'latin1'),
      ]);
      field.copy(tar, at + 124);
      fixChecksum(tar, at);
      return { description: `size field of the header at ${at} set to ${JSON.stringify(field.toString('latin1'))}`, bytes: tar };
    }
    case 'type': {
      const type = pick(['0', '1', '2', '3', '4', '5', '6', '7', 'g', 'x', 'L', 'K', 'S', 'V', 'M', 'N', 'D', '\0', 'Z', '\xff']);
      tar.write(type, at + 156, 'latin1');
      fixChecksum(tar, at);
      return { description: `type of the header at ${at} set to ${JSON.stringify(type)}`, bytes: tar };
    }
    case 'mode-owner': {
      const field = pick([[100, 8], [108, 8], [116, 8], [136, 12], [329, 8], [337, 8]] as const);
      const value = pick(['7777777\0', '0000000\0', '99999999', '\0\0\0\0\0\0\0\0', '\x80\0\0\0\xff\xff\xff\xff', '\xff\xff\xff\xff\xff\xff\xff\xff']);
      tar.write(value.padEnd(field[1], '\0').slice(0, field[1]), at + field[0], 'latin1');
      fixChecksum(tar, at);
      return { description: `field at ${field[0]} of the header at ${at} set to ${JSON.stringify(value)}`, bytes: tar };
    }
    case 'name': {
      const name = pick(['..', '../x', 'a/../../b', '/', '', '.', 'lost+found', 'etc/hostname/x', 'etc', 'x\xff\xfe', 'a//b', './././']);
      tar.fill(0, at, at + 100);
      tar.write(name, at, 'latin1');
      fixChecksum(tar, at);
      return { description: `name of the header at ${at} set to ${JSON.stringify(name)}`, bytes: tar };
    }
  }
}

/**
 * A copy of `path` whose directory headers say size 0. tar-stream reads no body for a directory,
 * but its entry stream for one with a non-zero size never ends, so the read-back's listing
 * (which drains every entry) would wait forever; ferry's reader works around the same thing.
 */
async function bodilessDirectories(path: string): Promise<string> {
  const tar = readFileSync(path);
  const extract = tarExtract();
  const headers: number[] = [];
  const listed = (async () => {
    for await (const entry of extract) {
      const header = entry.header as { type: string; size: number; byteOffset?: number };
      if (header.type === 'directory') {
        if (header.size !== 0 && header.byteOffset !== undefined) headers.push(header.byteOffset - 512);
      } else for await (const _ of entry);
    }
  })();
  extract.end(tar);
  await listed;
  if (headers.length === 0) return path;
  for (const at of headers) {
    tar.write('00000000000\0', at + 124, 'latin1');
    fixChecksum(tar, at);
  }
  const copy = `${path}.bodiless.tar`;
  writeFileSync(copy, tar);
  return copy;
}

class Hang extends Error {}

/** A hang is a finding too (a stream that never ends let the CLI exit 0 without an image). */
async function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Hang()), ms)));
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function compress(plain: Buffer, how: 'none' | 'gzip' | 'xz' | 'zstd'): Buffer {
  if (how === 'none') return plain;
  const argv = { gzip: ['gzip', '-c', '-n'], xz: ['xz', '-c', '-0'], zstd: ['zstd', '-c', '-q'] }[how];
  return execFileSync(argv[0]!, argv.slice(1), { input: plain, maxBuffer: 1 << 26 });
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ferry-tar-fuzz-'));
  for (const format of ['GNU', 'PAX'] as const) {
    const path = join(work, `base-${format}.tar`);
    pythonTar(path, format);
    bases.push({ name: format, bytes: readFileSync(path) });
  }
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe('tar fuzz: mutated tarballs through mkfs', () => {
  it(`${CASES} cases (seed ${SEED}): a FerryError, or an image e2fsck passes that reads back as the archive says`, { timeout: 30_000 + CASES * 1_000 }, async () => {
    const random = prng(SEED);
    const problems: string[] = [];
    let succeeded = 0;
    for (let i = 0; i < CASES && problems.length < 5; i++) {
      const base = bases[i % bases.length]!;
      const mutation = mutate(base.bytes, random);
      // Mostly the mutated archive compressed (the tar parser sees the mutation through each
      // decoder); sometimes the compressed bytes themselves cut or flipped (the decoder sees it).
      const compression = (['none', 'none', 'gzip', 'xz', 'zstd'] as const)[i % 5]!;
      let archive = compress(mutation.bytes, compression);
      let what = `case ${i} (${base.name}, ${compression}): ${mutation.description}`;
      // Not zstd: on Node 20 the reader (fzstd) does not check zstd's content checksum, so a
      // flipped byte can decode to other bytes without an error (a known gap, not yet fixed).
      if ((compression === 'gzip' || compression === 'xz') && random() < 0.3) {
        archive = Buffer.from(archive);
        const offset = Math.floor(random() * archive.length);
        if (random() < 0.5) archive = archive.subarray(0, offset);
        else archive[offset] = archive[offset]! ^ 0x10;
        what += `; compressed bytes ${archive.length === offset ? `cut at ${offset}` : `flipped at ${offset}`}`;
      }
      const dir = join(work, `case-${i}`);
      mkdirSync(dir);
      const input = join(dir, 'input.tar');
      writeFileSync(input, archive);
      const plain = join(dir, 'plain.tar');
      writeFileSync(plain, mutation.bytes);
      const output = join(dir, 'out.ext4');
      try {
        await withDeadline(mkfs({ sources: [input], output }), 20_000);
      } catch (error) {
        if (error instanceof Hang) {
          problems.push(`${what}: mkfs neither finished nor failed within 20 s`);
          break;
        }
        if (!(error instanceof FerryError)) problems.push(`${what}: not a FerryError (a stack trace): ${(error as Error).stack}`);
        else if (readdirSync(dir).sort().join(',') !== 'input.tar,plain.tar') problems.push(`${what}: failed (${error.message}) but left ${readdirSync(dir).join(', ')}`);
        rmSync(dir, { recursive: true, force: true });
        continue;
      }
      succeeded += 1;
      const fsck = await e2fsck(output);
      if (fsck.exitCode !== 0) problems.push(`${what}: exit 0 but e2fsck -fn rejects the image:\n${fsck.output}`);
      else {
        let expected;
        try {
          // The uncompressed mutated archive, as tar-stream lists it.
          expected = await withDeadline(manifestFromTar(await bodilessDirectories(plain)), 20_000);
        } catch (error) {
          problems.push(`${what}: ferry accepted an archive that tar-stream cannot list: ${(error as Error).message}`);
        }
        // The read-back parses debugfs's line-based listing, which a name with a newline or
        // another control character breaks; those images get e2fsck only.
        if (expected && [...expected.keys()].some((path) => /[\x00-\x1f\x7f]/.test(path))) expected = undefined;
        if (expected) {
          const image = await readImage(output).catch((error: Error) => {
            problems.push(`${what}: the image cannot be read back: ${error.message}`);
          });
          const differences = image ? compareManifests(expected, image) : [];
          if (differences.length > 0) problems.push(`${what}: the image reads back differently:\n  ${differences.join('\n  ')}`);
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
    expect(problems).toEqual([]);
    // The mutations are not all fatal: some images are made and checked.
    if (CASES >= 100) expect(succeeded).toBeGreaterThan(CASES / 20);
  });
});
