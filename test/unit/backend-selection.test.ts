/**
 * The path a user's guest takes from ferry.toml to the hypervisor's argv, for each kind of host
 * and each guest system, with `backend = "auto"`: the config (defaults and validation for that
 * host), the backend selection, the guest's VM spec from an image manifest, and the backend's
 * start — asserting the kernel command line the guest boots with, its console first. The image
 * carries no `console=`; the backend that boots it adds its own (the default Apple-silicon boot
 * once baked `ttyAMA0` into the image while vfkit gives the guest `hvc0`).
 *
 * The hypervisors run through the recording runner (none of vfkit, hyperkit or hvf exist here);
 * qemu's QMP handshake is answered by a socket that speaks its greeting and `return`s.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { HostInfo } from '../../src/config/host.js';
import { parseConfigText } from '../../src/config/load.js';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import type { GuestSystem } from '../../src/config/types.js';
import { imageKernelArgs } from '../../src/image/build.js';
import { imageCmdline, type ImageManifest } from '../../src/image/manifest.js';
import { RecordingRunner, type FakeChild } from '../../src/process/runner.js';
import { chooseBackend } from '../../src/vm/instance/boot.js';
import { guestVmSpec } from '../../src/vm/instance/spec.js';
import { runFilesOf } from '../../src/vm/run-files.js';

const GiB = 2 ** 30;
const hosts: Record<string, HostInfo> = {
  'darwin/arm64': { platform: 'darwin', arch: 'arm64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/Users/u' },
  'darwin/x64': { platform: 'darwin', arch: 'x64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/Users/u' },
  'linux/x64': { platform: 'linux', arch: 'x64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/home/u' },
};
const ALL_BINARIES = ['vfkit', 'hyperkit', 'qemu-system-x86_64', 'qemu-system-aarch64'];

let work: string;
let paths: FerryPaths;
let manifest: ImageManifest;

beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-selection-'));
  paths = resolvePaths({ env: { FERRY_STATE_DIR: path.join(work, 's'), FERRY_CACHE_DIR: path.join(work, 'c') } });
  await mkdir(paths.imagesDir, { recursive: true });
  // An uncompressed arm64 Image header ("ARM\x64" at 0x38): vfkit boots only that for aarch64.
  const kernel = Buffer.alloc(4096, 0x5a);
  kernel.write('ARMd', 0x38, 'latin1');
  const file = (name: string, data: string | Buffer = '') => {
    const target = path.join(paths.imagesDir, name);
    return writeFile(target, data).then(() => target);
  };
  const systemKey = 'ab'.repeat(32);
  manifest = {
    cmdline: imageKernelArgs(systemKey),
    kernel: { path: await file('vmlinuz', kernel), version: '6.12' },
    initrd: { path: await file('initrd.img') },
    systemDisk: { path: await file('system.img') },
  } as unknown as ImageManifest;
  await mkdir(path.dirname(paths.stateDisk), { recursive: true });
  await writeFile(paths.stateDisk, '');
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Answers QMP's handshake on `socket`, as qemu does, for as long as the test runs. */
async function qmpStandIn(socket: string): Promise<net.Server> {
  const server = net.createServer((connection) => {
    connection.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    connection.on('data', (chunk) => {
      for (const line of chunk.toString().split('\n').filter(Boolean)) if (line) connection.write('{"return": {}}\n');
    });
    connection.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return server;
}

/** The kernel command line in a hypervisor's argv, as each tool's syntax carries it. */
function cmdlineIn(argv: string[]): string {
  const append = argv.indexOf('-append');
  if (append >= 0) return argv[append + 1]; // qemu
  const bootloader = argv.find((a) => a.startsWith('linux,kernel='));
  if (bootloader) return /cmdline="(.*)"$/.exec(bootloader)![1]; // vfkit
  const kexec = argv[argv.indexOf('-f') + 1]; // hyperkit: kexec,KERNEL,INITRD,CMDLINE
  return kexec.split(',').slice(3).join(',');
}

async function bootArgv(hostName: string, system: GuestSystem): Promise<{ backend: string; cmdline: string }> {
  const host = hosts[hostName];
  const config = parseConfigText(`[guest]\nsystem = "${system}"\npreset = "debian"\n`, path.join(work, 'ferry.toml'), { host });
  expect(config.vm.backend).toBe('auto');
  const runner = new RecordingRunner(ALL_BINARIES);
  const backend = await chooseBackend(config, paths, runner, host);
  const spec = guestVmSpec({ manifest, config, paths, facts: backend.facts, sshPort: 40022, now: 1700000000 });
  await mkdir(spec.runDir, { recursive: true });
  const qmp = backend.facts.stop === 'QMP system_powerdown' ? await qmpStandIn(runFilesOf(spec).qmpSocket) : undefined;
  try {
    const vm = await backend.start(spec);
    const argv = runner.commands.find((c) => c.kind === 'spawn')!.args;
    (runner.children[0] as FakeChild).exit({ code: 0, signal: null });
    await vm.exited;
    return { backend: backend.facts.name, cmdline: cmdlineIn(argv) };
  } finally {
    qmp?.close();
  }
}

describe('backend = "auto": the command line each host boots each guest with', () => {
  const image = () => imageCmdline(manifest);
  const cases: Array<[string, GuestSystem, string, string]> = [
    ['darwin/arm64', 'aarch64-linux', 'vfkit', 'hvc0'],
    ['darwin/arm64', 'x86_64-linux', 'qemu', 'ttyS0'],
    ['darwin/x64', 'x86_64-linux', 'vfkit', 'hvc0'],
    ['darwin/x64', 'aarch64-linux', 'qemu', 'ttyAMA0'],
    ['linux/x64', 'x86_64-linux', 'qemu', 'ttyS0'],
    ['linux/x64', 'aarch64-linux', 'qemu', 'ttyAMA0'],
  ];
  for (const [host, system, backend, console] of cases) {
    it(`${host}, ${system} guest: ${backend}, console=${console}`, async () => {
      const booted = await bootArgv(host, system);
      expect(booted.backend).toBe(backend);
      const net = backend === 'qemu' ? 'user' : 'dhcp';
      expect(booted.cmdline).toBe(`console=${console} ${image()} ferry.time=1700000000 ferry.net=${net}`);
      expect(booted.cmdline.match(/console=/g)).toHaveLength(1);
    });
  }

  it('the image carries no console of its own', () => {
    expect(image()).not.toMatch(/console=/);
    expect(image()).toMatch(/^panic=-1 loglevel=4 cryptomgr\.notests ferry\.system=abababababababab$/);
  });

  it('a manifest saved before the backend owned its console boots with the backend’s console only', async () => {
    manifest = { ...manifest, cmdline: `console=ttyAMA0 ${manifest.cmdline}` };
    const booted = await bootArgv('darwin/arm64', 'aarch64-linux');
    expect(booted.cmdline).toBe(`console=hvc0 ${imageKernelArgs('ab'.repeat(32))} ferry.time=1700000000 ferry.net=dhcp`);
  });
});
