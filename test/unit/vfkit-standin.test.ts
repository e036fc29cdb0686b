/**
 * The vfkit stand-in refuses what vfkit refuses, with vfkit's messages and exit code 1 (crc-org/
 * vfkit cmd/vfkit/root.go: cobra's "Error: …", exit 1), before anything runs. Called as the
 * tests' `vfkit` on PATH is (test/support/bin/vfkit) — for the kernel too: ferry unpacks a
 * compressed kernel before it hands it over, so only a direct call can show the refusal.
 */
import { execa } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hypervisorsUsing } from '../support/daemon.js';
import { STANDIN_BIN } from '../support/vfkit-net.js';
import { parseStringSlice } from '../support/vfkit-standin.js';

let dir: string;
const vfkit = (args: string[], arch: 'arm64' | 'amd64' = 'arm64') =>
  execa(path.join(STANDIN_BIN, 'vfkit'), args, { reject: false, env: { VFKIT_STANDIN_ARCH: arch }, timeout: 30_000 });

/** A Linux boot of files that exist: an "Image" with the arm64 magic at 0x38 unless `kernel` is given. */
function bootloader(kernel = path.join(dir, 'Image')): string {
  return `linux,kernel=${kernel},initrd=${path.join(dir, 'initrd')},cmdline="console=hvc0 quiet"`;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ferry-vfkit-standin-'));
  const image = Buffer.alloc(4096);
  image.write('ARMd', 0x38, 'latin1');
  await writeFile(path.join(dir, 'Image'), image);
  await writeFile(path.join(dir, 'vmlinuz'), gzipSync(image)); // what distributions ship
  await writeFile(path.join(dir, 'initrd'), 'initrd');
  await writeFile(path.join(dir, 'disk.img'), Buffer.alloc(4096));
});

afterAll(async () => {
  expect(await hypervisorsUsing(dir)).toEqual([]); // nothing was started by any refusal
  await rm(dir, { recursive: true, force: true });
});

describe('the vfkit stand-in refuses what vfkit refuses', () => {
  it('an unknown flag (pflag: "unknown flag: --x")', async () => {
    const result = await vfkit(['--cpus', '2', '--disk', path.join(dir, 'disk.img'), '--bootloader', bootloader()]);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain('Error: unknown flag: --disk');
  });

  it('an unknown device option, and an unknown device type (pkg/config/virtio.go)', async () => {
    const option = await vfkit(['--bootloader', bootloader(), '--device', `virtio-blk,path=${path.join(dir, 'disk.img')},cache=none`]);
    expect(option.exitCode).toBe(1);
    expect(option.stderr).toContain('Error: unknown option for virtio-blk devices: cache');
    const type = await vfkit(['--bootloader', bootloader(), '--device', 'virtio-console,logFilePath=/tmp/x']);
    expect(type.exitCode).toBe(1);
    expect(type.stderr).toContain('Error: unknown device type: virtio-console');
  });

  it('a compressed kernel for --bootloader linux on an arm64 host (pkg/vf/bootloader.go)', async () => {
    const kernel = path.join(dir, 'vmlinuz');
    const result = await vfkit(['--bootloader', bootloader(kernel), '--device', `virtio-blk,path=${path.join(dir, 'disk.img')}`]);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`Error: kernel must be uncompressed, ${kernel} is a compressed file`);
  });

  it('a missing disk (opened when the device is parsed)', async () => {
    const missing = path.join(dir, 'nope.img');
    const result = await vfkit(['--bootloader', bootloader(), '--device', `virtio-blk,path=${missing}`]);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`Error: failed to open file ${missing}: open ${missing}: no such file or directory`);
  });

  it('a Rosetta share on an Intel Mac (pkg/vf/rosetta_amd64.go)', async () => {
    const result = await vfkit(['--bootloader', bootloader(), '--device', 'rosetta,mountTag=rosetta'], 'amd64');
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain('Error: rosetta is unsupported on non-arm64 platforms');
  });
});

describe("the stand-in's --bootloader splitting (pkg/cmdline/string_slice.go)", () => {
  it('splits on commas outside double quotes and trims the quotes around a value', () => {
    expect(parseStringSlice('linux,kernel=/k,initrd=/i,cmdline="console=hvc0 a,b"')).toEqual(['linux', 'kernel=/k', 'initrd=/i', 'cmdline="console=hvc0 a,b"']);
    expect(() => parseStringSlice('linux,cmdline="open')).toThrow('mismatched "');
  });
});

describe('FERRY_PLATFORM: the one override of the host for platform decisions (src/config/host.ts)', () => {
  it('takes darwin/arm64, darwin-x86_64 and bare darwin (this machine’s arch); refuses anything else', async () => {
    const { currentHost } = await import('../../src/config/host.js');
    const { thisHost, candidateBackends } = await import('../../src/vm/facts.js');
    expect(currentHost({ FERRY_PLATFORM: 'darwin/arm64' })).toMatchObject({ platform: 'darwin', arch: 'arm64' });
    expect(currentHost({ FERRY_PLATFORM: 'darwin-x86_64' })).toMatchObject({ platform: 'darwin', arch: 'x64' });
    expect(currentHost({ FERRY_PLATFORM: 'darwin' })).toMatchObject({ platform: 'darwin', arch: process.arch });
    expect(() => currentHost({ FERRY_PLATFORM: 'darwin/ppc' })).toThrow('FERRY_PLATFORM: expected "darwin" or "linux"');
    const saved = process.env.FERRY_PLATFORM;
    process.env.FERRY_PLATFORM = 'darwin/x86_64';
    try {
      expect(candidateBackends(thisHost(), 'x86_64-linux')[0]).toBe('vfkit'); // Intel Mac: vfkit takes x86_64 guests
    } finally {
      if (saved === undefined) delete process.env.FERRY_PLATFORM;
      else process.env.FERRY_PLATFORM = saved;
    }
  });
});
