/**
 * buildImage's content-addressed cache trusts a file under its key only while it matches the
 * record written beside it (size, first and last 64 KiB): a truncated entry, or one of the right
 * size whose metadata is zeros (a power loss before the data reached the disk), is rebuilt by the
 * next build, not booted. And the next build removes what a killed build left behind.
 *
 * A cheap build through the code `ferry image build` runs, with one stand-in: the Debian preset
 * (which would fetch packages) answers with a small rootfs tarball, the host's static busybox and
 * a modules directory whose modules.builtin lists every stage 1 module, so no .ko is needed.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { DOWNLOAD_FILES, resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import type { FerryConfig } from '../../src/config/types.js';
import { buildImage } from '../../src/image/build.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { STAGE1_MODULES } from '../../src/image/guest-os/stage1.js';
import type { PresetInputs } from '../../src/image/presets/preset.js';
import { ferryKeys } from '../../src/keys/ferry-keys.js';

const BUSYBOX = '/bin/busybox'; // Debian's busybox-static (scripts/setup-debian.sh)
const work = mkdtempSync(join(tmpdir(), 'ferry-image-cache-'));
const preset = vi.hoisted(() => ({ inputs: undefined as PresetInputs | undefined }));
vi.mock('../../src/image/presets/debian.js', () => ({ debianPreset: () => Promise.resolve(preset.inputs) }));
let paths: FerryPaths;
let config: FerryConfig;
let first: ImageManifest;
const steps: string[] = [];

afterAll(() => rmSync(work, { recursive: true, force: true }));

async function build(): Promise<ImageManifest> {
  steps.length = 0;
  return buildImage({ config, paths, keys: ferryKeys(paths), onStep: (step) => steps.push(step) });
}

const hits = (manifest: ImageManifest) => [manifest.systemDisk, manifest.initramfs, manifest.config, manifest.initrd].map((part) => part.cacheHit);

/** Overwrites `length` bytes at `position` with zeros, the file's size unchanged. */
function zero(path: string, position: number, length: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Buffer.alloc(length), 0, length, position);
  } finally {
    closeSync(fd);
  }
}

beforeAll(async () => {
  const rootfs = join(work, 'rootfs');
  mkdirSync(join(rootfs, 'etc'), { recursive: true });
  writeFileSync(join(rootfs, 'etc', 'os-release'), 'ID=stand-in\n');
  const tarball = join(work, 'rootfs.tar');
  execFileSync('tar', ['-cf', tarball, '-C', rootfs, '.']);
  const kernelVersion = '6.1.0-stand-in';
  const modulesDir = join(work, 'kernel', 'lib', 'modules', kernelVersion);
  mkdirSync(modulesDir, { recursive: true });
  writeFileSync(join(modulesDir, 'modules.builtin'), STAGE1_MODULES.map((name) => `kernel/drivers/${name}.ko\n`).join(''));
  const kernel = join(work, 'kernel', 'vmlinuz');
  writeFileSync(kernel, 'not a kernel: never booted here\n');

  paths = resolvePaths({ env: { FERRY_STATE_DIR: join(work, 'state'), FERRY_CACHE_DIR: join(work, 'cache'), HOME: work } });
  preset.inputs = { name: 'debian', rootfsTar: tarball, kernel, modulesDir, kernelVersion, busybox: BUSYBOX, identity: 'stand-in' };
  config = parseConfigText('[guest]\npreset = "debian"\nsystem = "x86_64-linux"\n[vm]\nbackend = "qemu"\n', join(work, 'ferry.toml'), {
    host: { platform: 'linux', arch: 'x64', cpus: 2, memoryBytes: 4 * 2 ** 30, homeDir: work },
  });
  first = await build();
}, 120_000);

describe('the image cache', () => {
  it('records each entry beside it and reuses every one while it matches', async () => {
    expect(hits(first)).toEqual([false, false, false, false]);
    for (const part of [first.systemDisk, first.initramfs, first.config, first.initrd]) {
      const record = JSON.parse(readFileSync(`${part.path}.check`, 'utf8')) as { sizeBytes: number };
      expect(record.sizeBytes).toBe(statSync(part.path).size);
      expect(part.sizeBytes).toBe(record.sizeBytes);
    }
    expect(hits(await build())).toEqual([true, true, true, true]);
  }, 60_000);

  it('rebuilds a truncated system disk instead of booting it', async () => {
    const good = join(work, 'good-system.img');
    copyFileSync(first.systemDisk.path, good);
    truncateSync(first.systemDisk.path, 4096);
    const again = await build();
    expect(hits(again)).toEqual([false, true, true, true]);
    expect(steps.some((step) => step.includes(`has 4096 bytes, ${first.systemDisk.sizeBytes} when it was written`))).toBe(true);
    expect(again.systemDisk.path).toBe(first.systemDisk.path);
    expect(spawnSync('cmp', [good, again.systemDisk.path]).status).toBe(0); // the same image, whole again
  }, 60_000);

  it('rebuilds a system disk of the right size whose superblock region is zeros', async () => {
    zero(first.systemDisk.path, 0, 64 * 1024);
    const again = await build();
    expect(hits(again)).toEqual([false, true, true, true]);
    expect(steps.some((step) => step.includes('does not have the first and last bytes it was written with'))).toBe(true);
    expect(spawnSync('e2fsck', ['-fn', again.systemDisk.path]).status).toBe(0);
  }, 60_000);

  it('rebuilds an initrd whose end (the gzip trailer) is zeros, and an entry with no record', async () => {
    const size = statSync(first.initrd.path).size;
    zero(first.initrd.path, size - 8, 8);
    rmSync(`${first.initramfs.path}.check`);
    const again = await build();
    expect(hits(again)).toEqual([true, false, true, false]);
    expect(steps.some((step) => step.includes('has no record of its size and checksum'))).toBe(true);
    expect(readFileSync(again.initrd.path)).toEqual(Buffer.concat([readFileSync(again.initramfs.path), readFileSync(again.config.path)]));
  }, 60_000);

  it("removes a killed build's temporary files and staging directories, and says so", async () => {
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!; // exited: its pid names nobody now
    const image = join(paths.imagesDir, `.system-x.img.tmp-${dead}`);
    const staging = join(paths.downloadsDir, DOWNLOAD_FILES.kernelDir, `.staging-${dead}-0a1b2c3d`);
    writeFileSync(image, 'half an image');
    mkdirSync(staging, { recursive: true });
    await build();
    expect([existsSync(image), existsSync(staging)]).toEqual([false, false]);
    expect(steps.find((step) => step.startsWith('removed'))).toContain(image);
  }, 60_000);
});
