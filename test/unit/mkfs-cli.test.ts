/**
 * `ferry image mkfs` as a user runs it: the real CLI (./bin/ferry, built into dist/), bad inputs
 * that must fail with a message naming the culprit and a specific exit code, and without leaving
 * an image or a temporary file behind — or touching a good image already at the output path.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareManifests, e2fsck, manifestFromDir, readImage } from '../support/ext4-readback.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const ferryBin = join(repo, 'bin', 'ferry');

let work: string;
let src: string; // a small good source tree
let counter = 0;

beforeAll(async () => {
  await execa('npx', ['tsc', '-p', '.'], { cwd: repo });
  work = mkdtempSync(join(tmpdir(), 'ferry-mkfs-cli-'));
  src = join(work, 'src');
  mkdirSync(join(src, 'etc'), { recursive: true });
  writeFileSync(join(src, 'etc', 'hostname'), 'ferry\n');
  writeFileSync(join(src, 'data'), randomBytes(300_000));
  symlinkSync('etc/hostname', join(src, 'link'));
}, 300_000);
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function ferry(args: string[], env: Record<string, string> = {}, extendEnv = true) {
  return execa(ferryBin, args, { reject: false, env: { ...env, NO_COLOR: '1' }, extendEnv, cwd: work });
}

/** A fresh directory for one case's output, so "nothing left behind" can be checked exactly. */
function outDir(): string {
  const dir = join(work, `out-${counter++}`);
  mkdirSync(dir);
  return dir;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Makes a tarball with python's tarfile, which writes whatever member names it is given. */
function pythonTar(path: string, members: Array<{ name: string; data?: string; type?: 'file' | 'hardlink'; linkname?: string }>): void {
  const script = `
import io, sys, tarfile, json
members = json.loads(sys.argv[2])
with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as tar:
    for m in members:
        info = tarfile.TarInfo(m['name'])
        info.mtime = 1700000000
        if m.get('type') == 'hardlink':
            info.type = tarfile.LNKTYPE
            info.linkname = m['linkname']
            tar.addfile(info)
        else:
            data = m.get('data', '').encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
`;
  execFileSync('python3', ['-c', script, path, JSON.stringify(members)]);
}

/** Every failed build must leave the output directory exactly as it was. */
async function expectFailure(
  args: string[],
  expected: { exitCode: number; message: RegExp; dir: string; before?: string[] },
): Promise<string> {
  const result = await ferry(args);
  const stderr = result.stderr;
  expect(result.exitCode, `exit code; stderr:\n${stderr}`).toBe(expected.exitCode);
  expect(stderr).toMatch(expected.message);
  expect(stderr, 'a user error, not a crash').not.toMatch(/^\s+at /m);
  expect(readdirSync(expected.dir).sort()).toEqual((expected.before ?? []).sort());
  return stderr;
}

describe('ferry image mkfs (the CLI)', () => {
  it('builds an image that e2fsck passes and that reads back equal to the source; --json has path, size, uuid', async () => {
    const dir = outDir();
    const output = join(dir, 'root.ext4');
    const result = await ferry(['image', 'mkfs', src, '-o', output, '--label', 'cli-test', '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const json = JSON.parse(result.stdout) as { path: string; sizeBytes: number; uuid: string };
    expect(resolve(work, json.path)).toBe(output);
    expect(json.sizeBytes).toBe(statSync(output).size);
    expect(json.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(execFileSync('dumpe2fs', ['-h', output], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toContain(json.uuid);
    const fsck = await e2fsck(output);
    expect(fsck.exitCode, fsck.output).toBe(0);
    expect(compareManifests(await manifestFromDir(src), await readImage(output))).toEqual([]);
    expect(readdirSync(dir)).toEqual(['root.ext4']);
  });

  it('works with no e2fsprogs on PATH (only node\'s directory)', async () => {
    const nodeOnly = join(work, 'node-only-bin');
    mkdirSync(nodeOnly, { recursive: true });
    symlinkSync(process.execPath, join(nodeOnly, 'node'));
    const dir = outDir();
    const output = join(dir, 'root.ext4');
    const result = await ferry(['image', 'mkfs', src, '-o', output, '--json'], { PATH: nodeOnly, HOME: work }, false);
    expect(result.exitCode, result.stderr).toBe(0);
    // Prove the PATH really lacked the tools: the same environment cannot find mke2fs.
    const probe = await execa('mke2fs', ['-V'], { reject: false, env: { PATH: nodeOnly }, extendEnv: false });
    expect(probe.exitCode).not.toBe(0);
    const fsck = await e2fsck(output);
    expect(fsck.exitCode, fsck.output).toBe(0);
  });

  it('a tarball with a ../ member: exit 65, the entry named, no image, no temp file', async () => {
    const tarball = join(work, 'escape.tar');
    pythonTar(tarball, [{ name: 'ok', data: 'fine' }, { name: 'a/../../evil', data: 'pwned' }]);
    const dir = outDir();
    await expectFailure(['image', 'mkfs', tarball, '-o', join(dir, 'x.ext4')], {
      exitCode: 65,
      message: /a\/\.\.\/\.\.\/evil/,
      dir,
    });
  });

  it('a tarball made by GNU tar -P with ../ names is refused the same way', async () => {
    const inner = join(work, 'gnu-escape');
    mkdirSync(inner, { recursive: true });
    writeFileSync(join(inner, 'x'), 'x');
    const tarball = join(work, 'gnu-escape.tar');
    execFileSync('tar', ['-cf', tarball, '-P', '--transform', 's,^,../../,', '-C', inner, 'x']);
    expect(execFileSync('tar', ['-tPf', tarball], { encoding: 'utf8' })).toContain('../../x');
    const dir = outDir();
    await expectFailure(['image', 'mkfs', tarball, '-o', join(dir, 'x.ext4')], { exitCode: 65, message: /\.\.\/\.\.\/x/, dir });
  });

  it('a hard link whose target escapes the root is refused, naming the entry', async () => {
    const tarball = join(work, 'link-escape.tar');
    pythonTar(tarball, [{ name: 'innocent', type: 'hardlink', linkname: '../../etc/shadow' }]);
    const dir = outDir();
    await expectFailure(['image', 'mkfs', tarball, '-o', join(dir, 'x.ext4')], { exitCode: 65, message: /innocent/, dir });
  });

  it('a truncated tarball: exit 65, the file and the member named', async () => {
    const whole = join(work, 'whole.tar');
    execFileSync('tar', ['-cf', whole, '-C', src, '.']);
    const truncated = join(work, 'truncated.tar');
    writeFileSync(truncated, readFileSync(whole));
    truncateSync(truncated, 150_000); // inside the 300 kB member "data"
    const dir = outDir();
    await expectFailure(['image', 'mkfs', truncated, '-o', join(dir, 'x.ext4')], {
      exitCode: 65,
      message: /truncated\.tar.*(truncated|ends inside)|(truncated|ends inside).*truncated\.tar/is,
      dir,
    });
  });

  it('a tarball cut between two members (no end-of-archive marker) is refused too', async () => {
    const whole = join(work, 'whole2.tar');
    execFileSync('tar', ['-cf', whole, '-C', src, './etc']);
    const cut = join(work, 'cut.tar');
    // etc/ header, etc/hostname header + one data block: 3 blocks, then nothing.
    writeFileSync(cut, readFileSync(whole).subarray(0, 3 * 512));
    const dir = outDir();
    await expectFailure(['image', 'mkfs', cut, '-o', join(dir, 'x.ext4')], { exitCode: 65, message: /cut\.tar/, dir });
  });

  it('a missing source: exit 66, the path named', async () => {
    const dir = outDir();
    await expectFailure(['image', 'mkfs', src, join(work, 'no-such-dir'), '-o', join(dir, 'x.ext4')], {
      exitCode: 66,
      message: /no-such-dir/,
      dir,
    });
  });

  it('a bad --size: exit 64, the option named', async () => {
    for (const size of ['twelve', '-5MiB', '10 parsecs']) {
      const dir = outDir();
      await expectFailure(['image', 'mkfs', src, '-o', join(dir, 'x.ext4'), '--size', size], { exitCode: 64, message: /--size/, dir });
    }
  });

  it('a --size too small for the content: non-zero exit, a clear message, nothing left behind', async () => {
    const dir = outDir();
    const stderr = await expectFailure(['image', 'mkfs', src, '-o', join(dir, 'x.ext4'), '--size', '64KiB'], {
      exitCode: 65,
      message: /./,
      dir,
    });
    expect(stderr).toMatch(/size|fit|small|room/i);
  });

  it('a label longer than 16 bytes is refused', async () => {
    const dir = outDir();
    await expectFailure(['image', 'mkfs', src, '-o', join(dir, 'x.ext4'), '--label', 'a-label-that-is-too-long'], {
      exitCode: 65,
      message: /label/,
      dir,
    });
  });

  it('a failed build leaves an existing good image at the output path untouched', async () => {
    const dir = outDir();
    const output = join(dir, 'root.ext4');
    const good = await ferry(['image', 'mkfs', src, '-o', output]);
    expect(good.exitCode, good.stderr).toBe(0);
    const before = sha256(output);
    const tarball = join(work, 'escape2.tar');
    pythonTar(tarball, [{ name: '../evil', data: 'x' }]);
    for (const args of [
      [tarball],
      [join(work, 'missing.tar')],
      [src, '--size', '64KiB'],
    ]) {
      const result = await ferry(['image', 'mkfs', ...args, '-o', output]);
      expect(result.exitCode).not.toBe(0);
      expect(sha256(output)).toBe(before);
      expect(readdirSync(dir)).toEqual(['root.ext4']);
    }
  });

  describe('the output path', () => {
    it('a FIFO or a socket at -o stays what it was: exit 73, its kind named, nothing else written', async () => {
      const dir = outDir();
      const fifo = join(dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      const socket = join(dir, 'socket');
      const server = createServer();
      await new Promise<void>((done) => server.listen(socket, done));
      try {
        for (const [output, kind] of [[fifo, /FIFO/], [socket, /socket/]] as const) {
          const stderr = await expectFailure(['image', 'mkfs', src, '-o', output], { exitCode: 73, message: kind, dir, before: ['fifo', 'socket'] });
          expect(stderr).toContain(output);
        }
        expect(lstatSync(fifo).isFIFO()).toBe(true);
        expect(lstatSync(socket).isSocket()).toBe(true);
      } finally {
        server.close();
      }
    });

    it('a symlink at -o is refused, not followed and not replaced (as --help says)', async () => {
      const dir = outDir();
      const target = join(dir, 'target.ext4');
      writeFileSync(target, 'old');
      symlinkSync('target.ext4', join(dir, 'link.ext4'));
      await expectFailure(['image', 'mkfs', src, '-o', join(dir, 'link.ext4')], {
        exitCode: 73,
        message: /link\.ext4 is a symlink/,
        dir,
        before: ['target.ext4', 'link.ext4'],
      });
      expect(lstatSync(join(dir, 'link.ext4')).isSymbolicLink()).toBe(true);
      expect(readFileSync(target, 'utf8')).toBe('old');
      const help = await ferry(['image', 'mkfs', '--help']);
      expect(help.stdout).toMatch(/symlink.*not followed/is);
    });

    it('a missing output directory (with or without a trailing slash) is named as such: exit 73, no temporary file', async () => {
      const dir = outDir();
      const missing = join(dir, 'no-such-dir');
      const stderr = await expectFailure(['image', 'mkfs', src, '-o', join(missing, 'x.ext4')], { exitCode: 73, message: /output directory .*no-such-dir does not exist/, dir });
      expect(stderr).not.toMatch(/source|EBADF|internal/);
      for (const output of [`${missing}/`, `${dir}/x.ext4/`]) {
        const slashed = await expectFailure(['image', 'mkfs', src, '-o', output], { exitCode: 73, message: /ends with '\/'/, dir });
        expect(slashed).not.toMatch(/EBADF|internal/);
      }
    });

    it('an output whose parent is a regular file: exit 73, the parent named', async () => {
      const dir = outDir();
      writeFileSync(join(dir, 'plain'), 'x');
      await expectFailure(['image', 'mkfs', src, '-o', join(dir, 'plain', 'x.ext4')], {
        exitCode: 73,
        message: /output directory .*plain is not a directory/,
        dir,
        before: ['plain'],
      });
    });

    // Root can replace a read-only file and write in a read-only directory; an immutable file
    // (chattr +i) is the output root cannot replace: the rename fails with EPERM after the
    // image is written.
    it('an existing output that cannot be replaced (immutable): the cause of the failed rename in one line, exit 73, no temporary file', async () => {
      const dir = outDir();
      const output = join(dir, 'x.ext4');
      writeFileSync(output, 'old');
      execFileSync('chattr', ['+i', output]);
      try {
        const stderr = await expectFailure(['image', 'mkfs', src, '-o', output], { exitCode: 73, message: /cannot put the image in place at .*x\.ext4: operation not permitted \(EPERM\)/, dir, before: ['x.ext4'] });
        expect(stderr).not.toMatch(/EBADF|internal/);
        expect(stderr.trim().split('\n').filter((line) => !line.endsWith('…'))).toHaveLength(1); // besides the progress steps
      } finally {
        execFileSync('chattr', ['-i', output]);
      }
      expect(readFileSync(output, 'utf8')).toBe('old');
    });
  });

  describe('lost+found in the input', () => {
    // Refused, not kept: a regular file or symlink named lost+found beside the synthesized
    // directory is a duplicate entry, and alone e2fsck (without -n, as at boot) replaces it.
    it('a tarball whose root holds a regular file lost+found is refused, naming the tarball and the entry', async () => {
      const tarball = join(work, 'lost-found-file.tar');
      pythonTar(tarball, [{ name: 'lost+found', data: 'not a directory' }, { name: 'etc/x', data: 'x' }]);
      const dir = outDir();
      const stderr = await expectFailure(['image', 'mkfs', tarball, '-o', join(dir, 'x.ext4')], { exitCode: 65, message: /lost-found-file\.tar.*\/lost\+found is a regular file/, dir });
      expect(stderr).toMatch(/directory/);
    });

    it('a directory source whose lost+found is a symlink is refused; a later layer making it a directory gives a clean image', async () => {
      const tree = join(work, 'lost-found-link');
      mkdirSync(tree, { recursive: true });
      symlinkSync('/tmp', join(tree, 'lost+found'));
      const dir = outDir();
      await expectFailure(['image', 'mkfs', tree, '-o', join(dir, 'x.ext4')], { exitCode: 65, message: /lost-found-link.*\/lost\+found is a symlink/, dir });
      const fixed = join(work, 'lost-found-dir');
      mkdirSync(join(fixed, 'lost+found'), { recursive: true });
      const output = join(dir, 'ok.ext4');
      const result = await ferry(['image', 'mkfs', tree, fixed, '-o', output]);
      expect(result.exitCode, result.stderr).toBe(0);
      const fsck = await e2fsck(output);
      expect(fsck.exitCode, fsck.output).toBe(0);
      expect((await readImage(output)).get('/lost+found')?.kind).toBe('dir');
    });
  });
});
