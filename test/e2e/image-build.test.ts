/**
 * `ferry image build` through the real CLI: the debian preset (mmdebstrap rootfs, Debian cloud
 * kernel, busybox-static), the content-addressed cache, the config-only rebuild that must not
 * touch the base, and bad input that must leave nothing behind.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repo = join(import.meta.dirname, '..', '..');
const work = mkdtempSync(join(tmpdir(), 'ferry-image-build-'));
// Downloads (rootfs, kernel, busybox) are shared by every e2e test; images are content-addressed.
const cacheDir = join(process.env.FERRY_TEST_CACHE ?? join(homedir(), '.cache', 'ferry-test'), 'ferry-cache');
const configFile = join(work, 'ferry.toml');
const extraTar = join(work, 'extra.tar');

interface Manifest {
  id: string;
  systemDisk: { path: string; cacheHit: boolean; key: string };
  initramfs: { path: string; cacheHit: boolean };
  config: { path: string; cacheHit: boolean };
  initrd: { path: string; cacheHit: boolean };
  timings: Record<string, number>;
}

function ferry(args: string[]) {
  const result = spawnSync(join(repo, 'bin', 'ferry'), args, {
    encoding: 'utf8',
    env: { ...process.env, FERRY_CONFIG: configFile, FERRY_CACHE_DIR: cacheDir, FERRY_STATE_DIR: join(work, 'state') },
    timeout: 900_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function build(): Manifest {
  const result = ferry(['image', 'build', '--json']);
  expect(result.stderr + result.stdout).not.toContain('internal error');
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as Manifest;
}

function writeConfig(maxJobs: number, extra = ''): void {
  writeFileSync(
    configFile,
    `[guest]\npreset = "debian"\n[guest.nix]\nmax-jobs = ${maxJobs}\n[[image.layers]]\ntype = "tar"\npath = "${extraTar}"\n${extra}`,
  );
}

function imageFiles(): string[] {
  return readdirSync(join(cacheDir, 'images')).sort();
}

let first: Manifest;

beforeAll(() => {
  execFileSync('npx', ['tsc', '-p', '.'], { cwd: repo, stdio: 'inherit' });
  mkdirSync(join(work, 'extra', 'etc'), { recursive: true });
  writeFileSync(join(work, 'extra', 'etc', 'ferry-test-layer'), `layer made at ${Date.now()}\n`);
  execFileSync('tar', ['-cf', extraTar, '-C', join(work, 'extra'), 'etc']);
  // Whole seconds, so the test can restore the exact mtime after tampering (utimes rounds).
  utimesSync(extraTar, 1_700_000_000, 1_700_000_000);
  writeConfig(2);
  first = build();
}, 900_000);

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  // The system disk of this test's unique extra layer is of no use to anyone else.
  if (first) rmSync(first.systemDisk.path, { force: true });
});

describe('ferry image build', () => {
  it('builds a system disk that e2fsck finds clean and that holds the base and the extra layer', () => {
    const fsck = spawnSync('e2fsck', ['-fn', first.systemDisk.path], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const cat = spawnSync('debugfs', ['-R', 'cat /etc/ferry-test-layer', first.systemDisk.path], { encoding: 'utf8' });
    expect(cat.stdout).toMatch(/^layer made at \d+/);
    const sshd = spawnSync('debugfs', ['-R', 'stat /usr/sbin/sshd', first.systemDisk.path], { encoding: 'utf8' });
    expect(sshd.stdout).toMatch(/Type: regular\s+Mode:\s+0755/);
    // The initrd is the initramfs followed by the config archive.
    const initrd = readFileSync(first.initrd.path);
    const initramfs = readFileSync(first.initramfs.path);
    const config = readFileSync(first.config.path);
    expect(initrd.equals(Buffer.concat([initramfs, config]))).toBe(true);
  });

  it('is a cache hit when nothing changed, and rewrites nothing', () => {
    const before = statSync(first.systemDisk.path);
    const again = build();
    expect(again.id).toBe(first.id);
    expect([again.systemDisk, again.initramfs, again.config, again.initrd].every((p) => p.cacheHit)).toBe(true);
    const after = statSync(first.systemDisk.path);
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
  });

  it('rebuilds only the generated files on a config-only change, without reading the base layers', () => {
    // Overwrite the extra layer's bytes with garbage but keep its size, mtime and inode: a build
    // that read the layer again would fail on it, one that trusts the fingerprint does not.
    const original = readFileSync(extraTar);
    const inode = statSync(extraTar).ino;
    writeFileSync(extraTar, Buffer.alloc(original.length, 0x41), { flag: 'r+' });
    utimesSync(extraTar, 1_700_000_000, 1_700_000_000);
    try {
      writeConfig(3);
      const started = performance.now();
      expect(statSync(extraTar).ino).toBe(inode);
      const changed = build();
      const wallMs = performance.now() - started;
      console.log(`config-only rebuild: ${Math.round(wallMs)} ms wall (timings ${JSON.stringify(changed.timings)})`);
      expect(changed.systemDisk.cacheHit).toBe(true);
      expect(changed.systemDisk.path).toBe(first.systemDisk.path);
      expect(changed.initramfs.cacheHit).toBe(true);
      expect(changed.config.cacheHit).toBe(false);
      expect(changed.id).not.toBe(first.id);
      const files = spawnSync('sh', ['-c', `zcat < ${changed.config.path} | cpio -i --to-stdout ferry/overlay/etc/nix/nix.conf 2>/dev/null`], { encoding: 'utf8' });
      expect(files.stdout).toContain('max-jobs = 3');
    } finally {
      writeFileSync(extraTar, original);
      utimesSync(extraTar, 1_700_000_000, 1_700_000_000);
      writeConfig(2);
    }
  });

  it('refuses a config value of the wrong type, naming the file and the key, and writes nothing', () => {
    const before = imageFiles();
    writeFileSync(configFile, '[guest]\ncpus = "many"\n');
    try {
      const result = ferry(['image', 'build']);
      expect(result.code).toBe(78);
      expect(result.stderr).toContain(configFile);
      expect(result.stderr).toContain('guest.cpus');
      expect(imageFiles()).toEqual(before);
    } finally {
      writeConfig(2);
    }
  });

  it('refuses a layer with a path escaping the root, naming the entry, and leaves no image behind', () => {
    const evil = join(work, 'evil.tar');
    execFileSync('python3', [
      '-c',
      `import tarfile, io
t = tarfile.open(${JSON.stringify(evil)}, 'w')
data = b'owned'
info = tarfile.TarInfo('../../etc/evil'); info.size = len(data)
t.addfile(info, io.BytesIO(data)); t.close()`,
    ]);
    const before = imageFiles();
    writeConfig(2, `[[image.layers]]\ntype = "tar"\npath = "${evil}"\n`);
    try {
      const result = ferry(['image', 'build']);
      expect(result.code).toBe(65);
      expect(result.stderr).toContain('../../etc/evil');
      expect(imageFiles()).toEqual(before);
    } finally {
      writeConfig(2);
    }
  });

  it('reports a missing layer path with exit code 66', () => {
    writeConfig(2, `[[image.layers]]\ntype = "dir"\npath = "${join(work, 'no-such-dir')}"\n`);
    try {
      const result = ferry(['image', 'build']);
      expect(result.code).toBe(66);
      expect(result.stderr).toContain('no-such-dir');
    } finally {
      writeConfig(2);
    }
  });
});
