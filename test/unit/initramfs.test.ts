import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile, lstat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../src/errors.js';
import { buildInitramfs, cpioArchive, MODULE_LOAD_ORDER_PATH, type CpioEntry } from '../../src/image/initramfs/index.js';
import { selectModules } from '../../src/image/initramfs/modules.js';
import { POWER_BUTTON_MODULES } from '../../src/image/guest-os/stage1.js';
import { busyboxStatic, debianKernel, type KernelFixture } from '../support/fixtures.js';

const MTIME = 1_700_000_000; // 2023-11-14T22:13:20Z

let work: string;
let kernel: KernelFixture;
let busybox: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-initramfs-test-'));
  [kernel, busybox] = await Promise.all([debianKernel('amd64'), busyboxStatic('amd64')]);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function collect(gen: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of gen) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** `cpio -itv` with a fixed locale; fails the test on any warning (junk bytes mean bad padding). */
async function cpioList(archive: Buffer): Promise<string[]> {
  const result = await execa('cpio', ['-itvn', '--quiet'], { input: archive, env: { LC_ALL: 'C', TZ: 'UTC' } });
  expect(result.stderr).toBe('');
  return result.stdout.split('\n');
}

/** The name column of a `cpio -itv` line (with ` -> target` for symlinks). */
function listedName(line: string): string {
  const match = /^\S+\s+\d+\s+\S+\s+\S+\s+(?:\d+,\s*)?\d+\s+\w{3}\s+\d+\s+[\d:]+\s(.*)$/.exec(line);
  if (!match) throw new Error(`unexpected cpio -itv line: ${line}`);
  return match[1];
}

describe('cpio newc writer', () => {
  // Names and contents of every length modulo 4, so every padding case is exercised.
  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'd' },
    { kind: 'dir', path: 'd/sub', mode: 0o700, uid: 1000, gid: 100 },
    { kind: 'file', path: 'd/a', data: Buffer.from('') },
    { kind: 'file', path: 'd/bb', data: Buffer.from('1') },
    { kind: 'file', path: 'd/ccc', data: Buffer.from('12') },
    { kind: 'file', path: 'd/dddd', data: Buffer.from('123'), mode: 0o600 },
    { kind: 'file', path: 'd/sub/eeeee', data: Buffer.from('1234'), mode: 0o4755 },
    { kind: 'symlink', path: 'd/link', target: 'sub/eeeee' },
    { kind: 'symlink', path: 'd/abs', target: '/d/a' },
    { kind: 'chardev', path: 'd/console', major: 5, minor: 1 },
    { kind: 'blockdev', path: 'd/vda', major: 254, minor: 16, mode: 0o660 },
  ];

  it('writes what cpio(1) lists and extracts back exactly', async () => {
    const hostFile = join(work, 'host-file');
    const hostData = Buffer.alloc(70_001, 0);
    for (let i = 0; i < hostData.length; i++) hostData[i] = (i * 7) & 0xff;
    await writeFile(hostFile, hostData);
    const archive = await collect(
      cpioArchive([...entries, { kind: 'hostFile', path: '/d/host', hostPath: hostFile, mode: 0o755 }], { mtime: MTIME }),
    );
    expect(archive.subarray(0, 6).toString()).toBe('070701');
    expect(archive.length % 4).toBe(0);

    const listing = await cpioList(archive);
    const byName = new Map(listing.map((line) => [listedName(line), line]));
    expect([...byName.keys()]).toEqual([
      'd', 'd/sub', 'd/a', 'd/bb', 'd/ccc', 'd/dddd', 'd/sub/eeeee', 'd/link -> sub/eeeee', 'd/abs -> /d/a',
      'd/console', 'd/vda', 'd/host',
    ]);
    expect(byName.get('d')).toMatch(/^drwxr-xr-x +2 0 +0 +0 Nov 14 +2023 d$/);
    expect(byName.get('d/sub')).toMatch(/^drwx------ +2 1000 +100 /);
    expect(byName.get('d/dddd')).toMatch(/^-rw------- +1 0 +0 +3 /);
    expect(byName.get('d/sub/eeeee')).toMatch(/^-rwsr-xr-x +1 0 +0 +4 /);
    expect(byName.get('d/console')).toMatch(/^crw------- +1 0 +0 +5, +1 /);
    expect(byName.get('d/vda')).toMatch(/^brw-rw---- +1 0 +0 +254, +16 /);
    expect(byName.get('d/host')).toMatch(/^-rwxr-xr-x +1 0 +0 +70001 /);

    // Extract everything but the device nodes (mknod needs root).
    const out = join(work, 'extract');
    await mkdir(out);
    await execa('cpio', ['-idm', '--quiet', '--no-absolute-filenames', '-f', 'd/console', 'd/vda'], {
      input: archive,
      cwd: out,
    });
    expect(await readFile(join(out, 'd/a'), 'utf8')).toBe('');
    expect(await readFile(join(out, 'd/bb'), 'utf8')).toBe('1');
    expect(await readFile(join(out, 'd/ccc'), 'utf8')).toBe('12');
    expect(await readFile(join(out, 'd/dddd'), 'utf8')).toBe('123');
    expect(await readFile(join(out, 'd/sub/eeeee'), 'utf8')).toBe('1234');
    expect((await readFile(join(out, 'd/host'))).equals(hostData)).toBe(true);
    expect(await readlink(join(out, 'd/link'))).toBe('sub/eeeee');
    expect(await readlink(join(out, 'd/abs'))).toBe('/d/a');
    expect((await stat(join(out, 'd/dddd'))).mode & 0o7777).toBe(0o600);
    expect((await stat(join(out, 'd/host'))).mtimeMs).toBe(MTIME * 1000);
  });

  it('numbers inodes in order and ends with the trailer', async () => {
    const archive = await collect(cpioArchive(entries.slice(0, 3), { mtime: MTIME }));
    const field = (offset: number, index: number) => parseInt(archive.toString('ascii', offset + 6 + index * 8, offset + 14 + index * 8), 16);
    // First header: inode 1, name "d" -> 110 + 2 bytes, padded to 112.
    expect(field(0, 0)).toBe(1);
    expect(field(112, 0)).toBe(2);
    // The trailer: 110-byte header + "TRAILER!!!\0" (11 bytes) = 121, padded to 124, ending the archive.
    const trailer = archive.subarray(-124);
    expect(trailer.toString('latin1', 0, 6)).toBe('070701');
    expect(field(archive.length - 124, 11)).toBe(11);
    expect(trailer.toString('latin1', 110)).toBe('TRAILER!!!\0\0\0\0');
  });

  it('refuses values the format cannot hold and paths that escape', async () => {
    await expect(collect(cpioArchive([{ kind: 'dir', path: 'x', uid: 2 ** 32 }], { mtime: MTIME }))).rejects.toThrow(
      /cpio entry "x": uid 4294967296 does not fit/,
    );
    await expect(collect(cpioArchive([{ kind: 'dir', path: 'a/../../x' }], { mtime: MTIME }))).rejects.toThrow(/escapes/);
    await expect(
      collect(cpioArchive([{ kind: 'hostFile', path: 'x', hostPath: join(work, 'missing') }], { mtime: MTIME })),
    ).rejects.toThrow(/cpio entry "x": cannot read .*missing/);
  });
});

describe('kernel module selection (Debian cloud kernel)', () => {
  /** What kmod says a module file depends on, canonicalised. */
  async function kmodDepends(path: string): Promise<string[]> {
    const { stdout } = await execa('modinfo', ['-F', 'depends', path]);
    return stdout.trim().split(',').filter(Boolean).map((n) => n.replaceAll('-', '_'));
  }

  it.each([['virtio_blk'], ['virtio_net'], ['overlay'], ['virtio_pci', 'virtio-rng', 'virtio_console']])(
    'resolves %s like modinfo does, dependencies first',
    async (...names) => {
      const selection = await selectModules(kernel.modulesDir, names);
      expect(selection.version).toBe(kernel.version);
      const order = selection.loadOrder.map((m) => m.name);
      // Every module's dependency list matches kmod's, and each dependency is loaded earlier.
      for (const [index, module] of selection.loadOrder.entries()) {
        expect(module.depends, module.name).toEqual(await kmodDepends(module.sourcePath));
        for (const dep of module.depends) expect(order.indexOf(dep)).toBeGreaterThanOrEqual(0);
        for (const dep of module.depends) expect(order.indexOf(dep)).toBeLessThan(index);
      }
      // The closure is exactly what following kmod's answers from the requested names reaches.
      const expected = new Set<string>();
      const queue = names.map((n) => n.replaceAll('-', '_'));
      while (queue.length > 0) {
        const name = queue.shift()!;
        if (expected.has(name)) continue;
        expected.add(name);
        const file = selection.loadOrder.find((m) => m.name === name);
        expect(file, `${name} selected`).toBeDefined();
        queue.push(...(await kmodDepends(file!.sourcePath)));
      }
      expect(new Set(order)).toEqual(expected);
    },
  );

  it('virtio_pci pulls in the virtio core', async () => {
    const order = (await selectModules(kernel.modulesDir, ['virtio_pci'])).loadOrder.map((m) => m.name);
    expect(order).toContain('virtio');
    expect(order).toContain('virtio_ring');
    expect(order.at(-1)).toBe('virtio_pci');
  });

  it('skips built-in modules silently (ext4 is built into the cloud kernel)', async () => {
    const builtinList = await readFile(join(kernel.modulesDir, 'modules.builtin'), 'utf8');
    expect(builtinList).toMatch(/\/ext4\.ko$/m);
    const selection = await selectModules(kernel.modulesDir, ['ext4', 'virtio_blk']);
    expect(selection.builtin).toContain('ext4');
    expect(selection.loadOrder.map((m) => m.name)).not.toContain('ext4');
  });

  it('decompresses xz under plain Node too (not only through vitest interop)', async () => {
    // xz-decompress is CommonJS; a named ESM import of it works in vitest but fails in Node.
    const module = (await selectModules(kernel.modulesDir, ['virtio_blk'])).loadOrder.at(-1)!;
    const compressed = join(work, 'plain-node.ko.xz');
    await writeFile(compressed, (await execa('xz', ['--check=crc32', '-c', module.sourcePath], { encoding: 'buffer' })).stdout);
    const modulesTs = new URL('../../src/image/initramfs/modules.ts', import.meta.url).href;
    const script = `const { readModule } = await import(${JSON.stringify(modulesTs)});
      const data = await readModule(${JSON.stringify(compressed)}, 'xz');
      process.stdout.write(String(data.length));`;
    const { stdout } = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', script]);
    expect(Number(stdout)).toBe((await stat(module.sourcePath)).size);
  });

  it('names the module and the directory when a module does not exist', async () => {
    const attempt = selectModules(kernel.modulesDir, ['virtio_blk', 'no_such_module']);
    await expect(attempt).rejects.toBeInstanceOf(FerryError);
    await expect(attempt).rejects.toThrow(`kernel module no_such_module not found in ${kernel.modulesDir}`);
  });

  it("optional modules (the power button's) are taken when the kernel has them and skipped when it has neither module nor built-in", async () => {
    const selection = await selectModules(kernel.modulesDir, ['virtio_blk'], [...POWER_BUTTON_MODULES, 'no_such_module']);
    const order = selection.loadOrder.map((m) => m.name);
    expect(order).toEqual(expect.arrayContaining(['virtio_blk', 'evdev', 'button'])); // both modules in Debian's amd64 cloud kernel
    expect(selection.absent).toEqual(['no_such_module']);
  });

  it('decompresses .ko.xz and .ko.zst modules, and explains a corrupt one', async () => {
    const version = kernel.version;
    const dir = join(work, 'compressed', version);
    const sources = (await selectModules(kernel.modulesDir, ['virtio_blk'])).loadOrder;
    for (const [i, module] of sources.entries()) {
      const target = join(dir, module.installPath);
      await mkdir(dirname(target), { recursive: true });
      await copyFile(module.sourcePath, target);
      // Alternate the compressors so both decoders run on a real dependency chain.
      if (i % 2 === 0) await execa('xz', ['--check=crc32', target]);
      else await execa('zstd', ['-q', '--rm', target]);
    }
    const selection = await selectModules(dir, ['virtio_blk']);
    expect(selection.loadOrder.map((m) => m.name)).toEqual(sources.map((m) => m.name));
    expect(new Set(selection.loadOrder.map((m) => m.compression))).toEqual(new Set(['xz', 'zst']));
    for (const [i, module] of selection.loadOrder.entries()) {
      expect(module.installPath).toBe(sources[i].installPath);
      expect(module.data.equals(await readFile(sources[i].sourcePath)), module.name).toBe(true);
    }

    const broken = join(work, 'broken', version, 'kernel');
    await mkdir(broken, { recursive: true });
    await writeFile(join(broken, 'virtio_blk.ko.xz'), Buffer.from('this is not xz data'));
    await expect(selectModules(dirname(broken), ['virtio_blk'])).rejects.toThrow(
      /cannot decompress kernel module .*virtio_blk\.ko\.xz \(xz\)/,
    );
  });
});

describe('buildInitramfs', () => {
  const init = '#!/bin/sh\necho hello from init\n';
  const build = (outputPath: string) =>
    buildInitramfs({
      busybox,
      modulesDir: kernel.modulesDir,
      modules: ['virtio_blk', 'virtio_net', 'ext4'],
      init,
      extraFiles: [{ kind: 'file', path: 'etc/ferry/marker', data: Buffer.from('marker\n') }],
      outputPath,
      mtime: MTIME,
    });

  it('is byte-identical across builds and reports its size and hash', async () => {
    const [a, b] = [join(work, 'a.cpio.gz'), join(work, 'b.cpio.gz')];
    const ra = await build(a);
    const rb = await build(b);
    const [da, db] = [await readFile(a), await readFile(b)];
    expect(da.equals(db)).toBe(true);
    expect(ra).toEqual(rb);
    expect(ra.sizeBytes).toBe(da.length);
    expect(ra.sha256).toBe(createHash('sha256').update(da).digest('hex'));
    expect(da[9]).toBe(3); // gzip OS byte pinned, so macOS and Linux hosts agree
    expect(ra.kernelVersion).toBe(kernel.version);
    expect(ra.modules.at(-1)).toBe('virtio_net');
  });

  it('holds /init, busybox, its applets and the modules in load order', async () => {
    const output = join(work, 'full.cpio.gz');
    const result = await build(output);
    const archive = gunzipSync(await readFile(output));
    const listing = await cpioList(archive);
    const names = listing.map(listedName);
    for (const name of ['dev', 'proc', 'sys', 'mnt', 'bin/busybox', 'bin/sh -> busybox', 'bin/poweroff -> busybox', 'init']) {
      expect(names).toContain(name);
    }
    expect(listing.find((l) => l.endsWith(' dev/console'))).toMatch(/^crw------- +1 0 +0 +5, +1 /);
    expect(listing.find((l) => l.endsWith(' init'))).toMatch(/^-rwxr-xr-x /);
    // Directories come before anything inside them, as the kernel needs.
    for (const [i, name] of names.entries()) {
      const parent = name.split(' -> ')[0].split('/').slice(0, -1).join('/');
      if (parent) expect(names.indexOf(parent), name).toBeLessThan(i);
    }

    const out = join(work, 'full');
    await mkdir(out);
    await execa('cpio', ['-idm', '--quiet', '-f', 'dev/console', 'dev/null'], { input: archive, cwd: out });
    expect(await readFile(join(out, 'init'), 'utf8')).toBe(init);
    expect((await readFile(join(out, 'bin/busybox'))).equals(await readFile(busybox))).toBe(true);
    expect(await readFile(join(out, 'etc/ferry/marker'), 'utf8')).toBe('marker\n');
    const loadOrder = (await readFile(join(out, MODULE_LOAD_ORDER_PATH), 'utf8')).trim().split('\n');
    expect(loadOrder.map((p) => p.split('/').at(-1))).toEqual(result.modules.map((m) => `${m}.ko`));
    for (const path of loadOrder) {
      const source = join(kernel.modulesDir, path.replace(`/lib/modules/${kernel.version}/`, ''));
      expect((await readFile(join(out, path))).equals(await readFile(source)), path).toBe(true);
    }
    // The busybox in the image really runs its applets.
    const { stdout } = await execa(join(out, 'bin/sh'), ['-c', 'echo ok'], { env: { PATH: join(out, 'bin') } });
    expect(stdout).toBe('ok');
  });

  it('refuses a busybox that could not run as /init', async () => {
    const attempt = (path: string) =>
      buildInitramfs({
        busybox: path,
        modulesDir: kernel.modulesDir,
        modules: ['virtio_blk'],
        init,
        outputPath: join(work, 'never.gz'),
        mtime: MTIME,
      });
    const dynamic = (await execa('sh', ['-c', 'command -v ls'])).stdout.trim();
    await expect(attempt(dynamic)).rejects.toThrow(`busybox for the initramfs: ${dynamic}: it is dynamically linked`);
    const text = join(work, 'not-elf');
    await writeFile(text, '#!/bin/sh\n');
    await expect(attempt(text)).rejects.toThrow(/: not an ELF executable \(no ELF magic\)/);
    // The same busybox relabelled as aarch64 (e_machine is at offset 0x12).
    const foreign = join(work, 'busybox-aarch64');
    const bytes = await readFile(busybox);
    bytes.writeUInt16LE(0xb7, 0x12);
    await writeFile(foreign, bytes);
    await expect(attempt(foreign)).rejects.toThrow(/it is built for aarch64, but the kernel modules \(.*\) are for x86_64/);
  });

  it('leaves no output and no temp file behind when it fails', async () => {
    const dir = join(work, 'failing');
    await mkdir(dir);
    const output = join(dir, 'initrd.gz');
    await expect(
      buildInitramfs({
        busybox,
        init,
        outputPath: output,
        mtime: MTIME,
        extraFiles: [{ kind: 'hostFile', path: 'x', hostPath: join(work, 'vanished') }],
      }),
    ).rejects.toThrow(/cpio entry "x": cannot read/);
    await expect(lstat(output)).rejects.toThrow(/ENOENT/);
    expect((await execa('ls', ['-A', dir])).stdout).toBe('');
  });
});
