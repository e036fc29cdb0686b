/**
 * The command lines ferry gives each hypervisor, flag by flag, against each tool's documented
 * syntax; validation; and the Runner that lets us check commands for tools not installed here.
 *
 * Sources:
 *  - qemu: qemu-system-x86_64 7.2 (Debian) — also run for real in test/e2e/vm-qemu.test.ts.
 *  - hyperkit: moby/hyperkit src/hyperkit.c (usage(): -A -u -F -c -m -s -l -U -f; firmware_parse():
 *    "-f kexec,'kernel'[,'initrd'][,'\"cmdline\"']", split on the first three commas only),
 *    src/lib/uart_emul.c (uart_set_backend(): "autopty=PATH", "log=PATH" — a 64 KiB mmap'd ring),
 *    src/lib/block_if.c (blockif_open(): options "ro", "sync", "sectorsize=…"), and the argv
 *    moby/hyperkit go/hyperkit.go builds ("-s 0:0,hostbridge", "-s 31,lpc",
 *    "com1,autopty=%s/tty,log=%s/console-ring", "kexec,%s,%s,%s" with no quotes).
 *  - vfkit: crc-org/vfkit doc/usage.md (--cpus, --memory in MiB, "--bootloader linux,kernel=…,
 *    initrd=…,cmdline=\"…\"", "--device virtio-blk,path=…", "virtio-net,nat,mac=…",
 *    "virtio-serial,logFilePath=…", "virtio-rng", "rosetta,mountTag=…", "--restful-uri unix://…",
 *    "POST /vm/state { \"state\": \"Stop\" }"), pkg/config/bootloader.go (util.TrimQuotes on cmdline).
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VmSpec } from '../../src/vm/backend.js';
import { LineConsole } from '../../src/vm/console.js';
import { buildHyperkitArgv, createHyperkitBackend, hyperkitUuid } from '../../src/vm/hyperkit.js';
import { selectBackend } from '../../src/vm/index.js';
import { detectKernelFormat, ensureUncompressedKernel } from '../../src/vm/kernel-image.js';
import { BACKEND_FACTS } from '../../src/vm/facts.js';
import { buildQemuArgv, createQemuBackend } from '../../src/vm/qemu.js';
import { runFilesOf } from '../../src/vm/run-files.js';
import { diskLockFile } from '../../src/config/paths.js';
import { createExecaRunner, ProcessError, RecordingRunner, type FakeChild } from '../../src/process/runner.js';
import { buildVfkitArgv, createVfkitBackend, vfkitMac } from '../../src/vm/vfkit.js';

let dir: string;
let spec: VmSpec;

const appleSilicon = { platform: 'darwin', arch: 'arm64' } as const;
const intelMac = { platform: 'darwin', arch: 'x64' } as const;
const linuxX64 = { platform: 'linux', arch: 'x64' } as const;

/** A minimal uncompressed arm64 Image header: "ARM\x64" at 0x38. */
function fakeArm64Image(size = 4096): Buffer {
  const image = Buffer.alloc(size, 0x5a);
  image.write('ARMd', 0x38, 'latin1');
  return image;
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ferry-vm-argv-'));
  await writeFile(path.join(dir, 'vmlinuz'), 'kernel');
  await writeFile(path.join(dir, 'initrd.img'), 'initrd');
  await writeFile(path.join(dir, 'system.img'), '');
  await writeFile(path.join(dir, 'state.img'), '');
  spec = {
    name: 'builder',
    system: 'x86_64-linux',
    cpus: 2,
    memoryBytes: 2048 * 2 ** 20,
    kernel: path.join(dir, 'vmlinuz'),
    initrd: path.join(dir, 'initrd.img'),
    cmdline: 'ferry.net=user quiet',
    disks: [
      { path: path.join(dir, 'system.img'), readOnly: true },
      { path: path.join(dir, 'state.img'), readOnly: false },
    ],
    sshPortOnHost: 31022,
    consoleLog: path.join(dir, 'console.log'),
    runDir: path.join(dir, 'run'),
  };
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** argv as [flag, value] pairs (or lone flags), so a failure points at the one that differs. */
function pairs(argv: string[]): string[][] {
  const out: string[][] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i + 1] !== undefined && !argv[i + 1].startsWith('-')) out.push([argv[i], argv[++i]]);
    else out.push([argv[i]]);
  }
  return out;
}

describe('qemu argv', () => {
  it('x86_64 under tcg: q35, MTTCG, direct boot, virtio disks, hostfwd, rng, serial to file, QMP, pidfile', () => {
    const argv = buildQemuArgv(spec, { accelerator: 'tcg', qmpSocket: '/run/b.qmp', pidfile: '/run/b.pid' });
    expect(pairs(argv)).toEqual([
      ['-name', 'ferry-builder'],
      ['-nodefaults'],
      ['-no-user-config'],
      ['-machine', 'q35'],
      ['-accel', 'tcg,thread=multi'],
      ['-cpu', 'max'],
      ['-smp', '2'],
      ['-m', '2048M'],
      ['-kernel', spec.kernel],
      ['-initrd', spec.initrd],
      ['-append', 'console=ttyS0 ferry.net=user quiet'],
      ['-drive', `file=${spec.disks[0].path},if=virtio,format=raw,id=disk0,readonly=on,cache=writeback`],
      ['-drive', `file=${spec.disks[1].path},if=virtio,format=raw,id=disk1,readonly=off,cache=writeback,discard=unmap`],
      ['-netdev', 'user,id=net0,hostfwd=tcp:127.0.0.1:31022-:22'],
      ['-device', 'virtio-net-pci,netdev=net0,romfile='],
      ['-device', 'virtio-rng-pci'],
      ['-chardev', `file,id=console0,path=${spec.consoleLog}`],
      ['-serial', 'chardev:console0'],
      ['-qmp', 'unix:/run/b.qmp,server=on,wait=off'],
      ['-display', 'none'],
      ['-no-reboot'],
      ['-pidfile', '/run/b.pid'],
    ]);
    expect(BACKEND_FACTS.qemu.console['x86_64-linux']).toBe('ttyS0');
  });

  it('aarch64 under hvf: virt machine, host CPU, ttyAMA0; one vCPU tcg has no thread option', () => {
    const arm = { ...spec, system: 'aarch64-linux' as const };
    const argv = buildQemuArgv(arm, { accelerator: 'hvf', qmpSocket: '/q', pidfile: '/p' });
    expect(argv.slice(argv.indexOf('-machine'), argv.indexOf('-smp'))).toEqual(['-machine', 'virt', '-accel', 'hvf', '-cpu', 'host']);
    expect(BACKEND_FACTS.qemu.console['aarch64-linux']).toBe('ttyAMA0');
    expect(argv[argv.indexOf('-append') + 1]).toBe('console=ttyAMA0 ferry.net=user quiet');
    const single = buildQemuArgv({ ...arm, cpus: 1 }, { accelerator: 'tcg', qmpSocket: '/q', pidfile: '/p' });
    expect(single.slice(single.indexOf('-accel'), single.indexOf('-accel') + 4)).toEqual(['-accel', 'tcg', '-cpu', 'max,pauth-impdef=on']);
  });

  it("doubles commas in paths (qemu's escape) and leaves out networking without a port", () => {
    const odd = { ...spec, sshPortOnHost: undefined, disks: [{ path: '/a,b/disk.img', readOnly: false }] };
    const argv = buildQemuArgv(odd, { accelerator: 'kvm', qmpSocket: '/r,un/q', pidfile: '/p' });
    expect(argv).toContain('file=/a,,b/disk.img,if=virtio,format=raw,id=disk0,readonly=off,cache=writeback,discard=unmap');
    expect(argv).toContain('unix:/r,,un/q,server=on,wait=off');
    expect(argv).not.toContain('-netdev');
  });
});

describe('qemu accelerator choice', () => {
  it('probes KVM by booting the kernel with a short timeout, once per binary', async () => {
    const kvm = path.join(dir, 'kvm');
    await writeFile(kvm, '');
    const runner = new RecordingRunner(['qemu-system-x86_64'], () => ({
      exitCode: 0, signal: undefined, stdout: '[    0.000000] Linux version 6.1.0', stderr: '', timedOut: true,
    }));
    const backend = createQemuBackend({ runner, host: linuxX64, kvmDevice: kvm, probeTimeoutMs: 3000 });
    expect(await backend.chooseAccelerator(spec)).toBe('kvm');
    expect(await backend.chooseAccelerator(spec)).toBe('kvm');
    expect(runner.commands).toHaveLength(1);
    const probe = runner.commands[0];
    expect(probe.kind).toBe('run');
    expect(probe.file).toBe('/usr/local/bin/qemu-system-x86_64');
    expect(probe.args.slice(0, 4)).toEqual(['-accel', 'kvm', '-cpu', 'host']);
    expect(probe.args).toContain(spec.kernel);
  });

  it('falls back to tcg when the probe shows no kernel banner (nested KVM hanging in firmware)', async () => {
    const kvm = path.join(dir, 'kvm');
    await writeFile(kvm, '');
    const runner = new RecordingRunner(['qemu-system-x86_64'], () => ({
      exitCode: undefined, signal: 'SIGTERM', stdout: 'Probing EDD (edd=off to disable)... ok', stderr: '', timedOut: true,
    }));
    const backend = createQemuBackend({ runner, host: linuxX64, kvmDevice: kvm });
    expect(await backend.chooseAccelerator(spec)).toBe('tcg');
  });

  it('uses tcg without probing when /dev/kvm is missing or the guest is another architecture; hvf on macOS', async () => {
    const runner = new RecordingRunner(['qemu-system-x86_64', 'qemu-system-aarch64']);
    const noKvm = createQemuBackend({ runner, host: linuxX64, kvmDevice: path.join(dir, 'absent') });
    expect(await noKvm.chooseAccelerator(spec)).toBe('tcg');
    expect(await noKvm.chooseAccelerator({ ...spec, system: 'aarch64-linux' })).toBe('tcg');
    const mac = createQemuBackend({ runner, host: appleSilicon });
    expect(await mac.chooseAccelerator({ ...spec, system: 'aarch64-linux' })).toBe('hvf');
    expect(await mac.chooseAccelerator(spec)).toBe('tcg');
    expect(runner.commands).toEqual([]);
  });
});

describe('[vm] accel, each value honoured', () => {
  const hangingProbe = () => ({ exitCode: undefined, signal: 'SIGTERM', stdout: 'Probing EDD (edd=off to disable)... ok', stderr: '', timedOut: true });

  it('"tcg": no probe, and qemu starts under tcg', async () => {
    const kvm = path.join(dir, 'kvm');
    await writeFile(kvm, '');
    const runner = new RecordingRunner(['qemu-system-x86_64']);
    const backend = createQemuBackend({ runner, host: linuxX64, accel: 'tcg', kvmDevice: kvm });
    expect(await backend.chooseAccelerator(spec)).toBe('tcg');
    expect(runner.commands).toEqual([]);
  });

  it('"kvm": refused, with the reason, when its probe fails; nothing is started', async () => {
    const kvm = path.join(dir, 'kvm');
    await writeFile(kvm, '');
    const runner = new RecordingRunner(['qemu-system-x86_64'], hangingProbe);
    const backend = createQemuBackend({ runner, host: linuxX64, accel: 'kvm', kvmDevice: kvm, probeTimeoutMs: 3000 });
    await expect(backend.start(spec)).rejects.toThrow(
      /cannot start guest 'builder' with qemu:\n {2}- accel: accel "kvm" cannot work: a probe boot under KVM printed nothing within 3000 ms \(nested KVM often hangs like this\) \(use accel = "auto" or "tcg"\)/,
    );
    expect(runner.commands.map((c) => c.kind)).toEqual(['run']); // the probe only
    const noDevice = createQemuBackend({ runner, host: linuxX64, accel: 'kvm', kvmDevice: path.join(dir, 'absent') });
    expect(await noDevice.chooseAccelerator(spec)).toMatchObject({ field: 'accel', message: expect.stringContaining(`${path.join(dir, 'absent')} is not usable (ENOENT)`) });
  });

  it('"hvf": refused off macOS and for a foreign guest; on a Mac it is the argv', async () => {
    const runner = new RecordingRunner(['qemu-system-x86_64', 'qemu-system-aarch64']);
    expect(await createQemuBackend({ runner, host: linuxX64, accel: 'hvf' }).chooseAccelerator(spec)).toMatchObject({
      field: 'accel',
      message: 'accel "hvf" cannot work: this host is linux x64 and the guest is x86_64-linux; here qemu can use kvm, tcg',
    });
    const mac = createQemuBackend({ runner, host: appleSilicon, accel: 'hvf' });
    expect(await mac.chooseAccelerator(spec)).toMatchObject({ field: 'accel', message: expect.stringContaining('here qemu can use tcg') });
    const arm = { ...spec, system: 'aarch64-linux' as const };
    const accelerator = await mac.chooseAccelerator(arm);
    expect(accelerator).toBe('hvf');
    const argv = buildQemuArgv(arm, { accelerator: accelerator as 'hvf', qmpSocket: '/q', pidfile: '/p' });
    expect(argv.slice(argv.indexOf('-accel'), argv.indexOf('-accel') + 4)).toEqual(['-accel', 'hvf', '-cpu', 'host']);
  });
});

describe('hyperkit argv (moby/hyperkit src/hyperkit.c, uart_emul.c, block_if.c)', () => {
  it('matches the documented flags slot by slot', () => {
    const argv = buildHyperkitArgv(spec, { pidfile: '/run/b.pid', tty: '/run/b.tty', consoleRing: '/run/b.ring' });
    expect(pairs(argv)).toEqual([
      ['-A'],
      ['-u'],
      ['-F', '/run/b.pid'],
      ['-U', hyperkitUuid('builder')],
      ['-c', '2'],
      ['-m', '2048M'],
      ['-s', '0:0,hostbridge'],
      ['-s', '31,lpc'],
      ['-s', '1:0,virtio-net'],
      ['-s', `2:0,virtio-blk,${spec.disks[0].path},ro`],
      ['-s', `3:0,virtio-blk,${spec.disks[1].path}`],
      ['-s', '4:0,virtio-rnd'],
      ['-l', 'com1,autopty=/run/b.tty,log=/run/b.ring'],
      ['-f', `kexec,${spec.kernel},${spec.initrd},console=ttyS0 ferry.net=user quiet`],
    ]);
  });

  it('derives a stable RFC 4122 UUID from the name (vmnet derives the MAC from it)', () => {
    expect(hyperkitUuid('builder')).toBe(hyperkitUuid('builder'));
    expect(hyperkitUuid('builder')).not.toBe(hyperkitUuid('other'));
    expect(hyperkitUuid('builder')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe('vfkit argv (crc-org/vfkit doc/usage.md)', () => {
  it('matches the documented flags device by device', () => {
    const arm = { ...spec, system: 'aarch64-linux' as const, cmdline: 'quiet' };
    const argv = buildVfkitArgv(arm, { restSocket: '/run/b.sock', kernel: '/cache/Image' });
    expect(pairs(argv)).toEqual([
      ['--cpus', '2'],
      ['--memory', '2048'],
      ['--bootloader', `linux,kernel=/cache/Image,initrd=${spec.initrd},cmdline="console=hvc0 quiet"`],
      ['--device', `virtio-blk,path=${spec.disks[0].path},readonly`],
      ['--device', `virtio-blk,path=${spec.disks[1].path}`],
      ['--device', `virtio-net,nat,mac=${vfkitMac('builder')}`],
      ['--device', `virtio-serial,logFilePath=${spec.consoleLog}`],
      ['--device', 'virtio-rng'],
      ['--restful-uri', 'unix:///run/b.sock'],
    ]);
    const withRosetta = buildVfkitArgv({ ...arm, rosetta: true }, { restSocket: '/s' });
    expect(withRosetta.slice(-4)).toEqual(['--device', 'rosetta,mountTag=rosetta', '--restful-uri', 'unix:///s']);
  });

  it('uses a stable, locally administered unicast MAC', () => {
    const mac = vfkitMac('builder');
    expect(mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(parseInt(mac.slice(0, 2), 16) & 0x03).toBe(0x02);
    expect(vfkitMac('builder')).toBe(mac);
  });
});

describe('validation', () => {
  it('names a missing kernel, initrd and disk, and a missing backend binary with how to install it', async () => {
    const runner = new RecordingRunner([]);
    const backend = createHyperkitBackend({ runner, host: intelMac });
    const broken = { ...spec, kernel: path.join(dir, 'nope'), initrd: path.join(dir, 'nope.img'), disks: [{ path: path.join(dir, 'gone.img'), readOnly: false }] };
    const problems = await backend.validate(broken);
    expect(problems).toEqual([
      { field: 'kernel', message: `kernel file not found: ${broken.kernel}` },
      { field: 'initrd', message: `initrd file not found: ${broken.initrd}` },
      { field: 'disks[0]', message: `disk image not found: ${broken.disks[0].path}` },
      { field: 'backend', message: 'hyperkit not found on PATH', hint: 'install it: `nix profile install nixpkgs#hyperkit` (Homebrew no longer ships it)' },
    ]);
    await expect(backend.start(broken)).rejects.toThrow(/cannot start guest 'builder' with hyperkit:\n {2}- kernel: kernel file not found/);
    expect(runner.commands).toEqual([]);
    const vfkit = createVfkitBackend({ runner, host: appleSilicon, kernelCacheDir: dir });
    expect(await vfkit.validate({ ...spec, system: 'aarch64-linux' })).toContainEqual({
      field: 'backend', message: 'vfkit not found on PATH', hint: 'install it: `brew install vfkit`, or `nix profile install nixpkgs#vfkit`',
    });
    const qemu = createQemuBackend({ runner, host: appleSilicon });
    expect((await qemu.validate(spec)).map((p) => `${p.message} — ${p.hint}`)).toEqual(['qemu-system-x86_64 not found on PATH — install it: `brew install qemu`, or `nix profile install nixpkgs#qemu`']);
  });

  it('refuses a disk another live guest writes to, and removes a stale lock', async () => {
    const backend = createQemuBackend({ runner: new RecordingRunner(['qemu-system-x86_64']) });
    const lock = diskLockFile(spec.disks[1].path);
    // This test process is alive: it stands in for the other guest's hypervisor.
    await writeFile(lock, JSON.stringify({ pid: process.pid, guest: 'other', runDir: '/elsewhere' }));
    expect(await backend.validate(spec)).toEqual([
      { field: 'disks[1]', message: `disk ${spec.disks[1].path} is in use by guest 'other' (pid ${process.pid})`, hint: 'stop that guest first (its run files are in /elsewhere)' },
    ]);
    // A pid that cannot exist: the lock is stale (a crash) and is removed.
    await writeFile(lock, JSON.stringify({ pid: 2 ** 22 + 1, guest: 'other', runDir: '/elsewhere' }));
    expect(await backend.validate(spec)).toEqual([]);
    await expect(stat(lock)).rejects.toThrow(/ENOENT/);
  });

  it('refuses a second start of a running guest (live pidfile) and removes a stale pidfile', async () => {
    const backend = createQemuBackend({ runner: new RecordingRunner(['qemu-system-x86_64']) });
    await mkdir(spec.runDir, { recursive: true });
    await writeFile(runFilesOf(spec).pidfile, `${process.pid}\n`);
    expect(await backend.validate(spec)).toEqual([
      { field: 'name', message: `guest 'builder' is already running (pid ${process.pid}, ${runFilesOf(spec).pidfile})` },
    ]);
    await writeFile(runFilesOf(spec).pidfile, `${2 ** 22 + 1}\n`);
    expect(await backend.validate(spec)).toEqual([]);
    await expect(stat(runFilesOf(spec).pidfile)).rejects.toThrow(/ENOENT/);
  });

  it("rejects what a backend cannot express: commas in hyperkit/vfkit paths, the wrong architecture, '\"' in vfkit's cmdline", async () => {
    const runner = new RecordingRunner(['hyperkit', 'vfkit']);
    await writeFile(path.join(dir, 'a,b.img'), '');
    const comma = { ...spec, disks: [{ path: path.join(dir, 'a,b.img'), readOnly: false }] };
    expect(await createHyperkitBackend({ runner, host: intelMac }).validate({ ...comma, system: 'aarch64-linux' })).toEqual([
      { field: 'disks[0]', message: `hyperkit cannot take a path containing ',': ${comma.disks[0].path}` },
      { field: 'system', message: 'hyperkit runs x86_64-linux guests only, got aarch64-linux' },
    ]);
    const vfkit = createVfkitBackend({ runner, host: appleSilicon, kernelCacheDir: dir });
    expect((await vfkit.validate({ ...spec, cmdline: 'a="b c"' })).map((p) => p.field)).toEqual(['system', 'cmdline']);
  });

  it('a hypervisor that cannot be started is one ProcessError line naming it; nothing is left behind', async () => {
    // Executable, but its interpreter does not exist: the spawn itself fails (ENOENT).
    const fake = path.join(dir, 'qemu-system-x86_64');
    await writeFile(fake, '#!/nonexistent/interpreter\n', { mode: 0o755 });
    const runner = { ...createExecaRunner(), which: async () => fake };
    const error = await createQemuBackend({ runner, host: linuxX64, accel: 'tcg' }).start(spec).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProcessError);
    expect((error as ProcessError).message).toMatch(/^qemu \(.*qemu-system-x86_64\) could not be started/);
    expect((error as ProcessError).exitCode).toBe(69);
    await expect(stat(diskLockFile(spec.disks[1].path))).rejects.toThrow(/ENOENT/);
  });

  it('refuses a runDir too long for a unix socket', async () => {
    const backend = createQemuBackend({ runner: new RecordingRunner(['qemu-system-x86_64']) });
    const problems = await backend.validate({ ...spec, runDir: `/tmp/${'x'.repeat(100)}` });
    expect(problems.map((p) => p.field)).toEqual(['runDir']);
  });
});

describe('start and stop through the recording runner (hypervisors not installed here)', () => {
  it('hyperkit: spawns the built argv, locks the writable disk, stops by SIGTERM, then cleans up', async () => {
    const runner = new RecordingRunner(['hyperkit']);
    const backend = createHyperkitBackend({ runner, host: intelMac });
    const vm = await backend.start(spec);
    expect(runner.commands).toEqual([
      {
        kind: 'spawn',
        file: '/usr/local/bin/hyperkit',
        args: buildHyperkitArgv(spec, { pidfile: runFilesOf(spec).pidfile, tty: runFilesOf(spec).hyperkitTty, consoleRing: runFilesOf(spec).hyperkitConsoleRing }),
      },
    ]);
    const child = runner.children[0] as FakeChild;
    expect(JSON.parse(await readFile(diskLockFile(spec.disks[1].path), 'utf8'))).toEqual({ pid: child.pid, guest: 'builder', runDir: spec.runDir });
    await expect(stat(diskLockFile(spec.disks[0].path))).rejects.toThrow(/ENOENT/); // read-only: shared, unlocked

    const stopping = vm.stop({ timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 20));
    expect(child.signals).toEqual(['SIGTERM']); // asked: ACPI power button
    child.exit({ code: 0, signal: null }); // the guest powered off
    expect(await stopping).toMatchObject({ how: 'backend', status: { code: 0, signal: null } });
    await expect(stat(diskLockFile(spec.disks[1].path))).rejects.toThrow(/ENOENT/);
  });

  it('hyperkit: a guest that ignores the request is killed after the timeout', async () => {
    const runner = new RecordingRunner(['hyperkit']);
    const vm = await createHyperkitBackend({ runner, host: intelMac }).start(spec);
    const result = await vm.stop({ timeoutMs: 50 });
    const child = runner.children[0] as FakeChild;
    expect(child.signals).toEqual(['SIGTERM', 'SIGTERM', 'SIGKILL']);
    expect(result).toMatchObject({ how: 'killed', status: { code: null, signal: 'SIGKILL' } });
  }, 10_000);

  it('vfkit: decompresses the kernel, writes the pidfile, and stops through POST /vm/state', async () => {
    const runner = new RecordingRunner(['vfkit']);
    const cache = path.join(dir, 'kernels');
    const backend = createVfkitBackend({ runner, kernelCacheDir: cache, host: appleSilicon });
    const image = fakeArm64Image();
    await writeFile(spec.kernel, gzipSync(image));
    const arm = { ...spec, system: 'aarch64-linux' as const, rosetta: true };
    const vm = await backend.start(arm);
    const child = runner.children[0] as FakeChild;
    const args = runner.commands[0].args;
    const bootloader = args[args.indexOf('--bootloader') + 1];
    const kernelPath = /kernel=([^,]+)/.exec(bootloader)![1];
    expect(path.dirname(kernelPath)).toBe(cache);
    expect(await readFile(kernelPath)).toEqual(image);
    expect(args).toContain('rosetta,mountTag=rosetta');
    expect((await readFile(runFilesOf(arm).pidfile, 'utf8')).trim()).toBe(String(child.pid));

    // Play vfkit's RESTful service on the socket the argv named.
    const requests: string[] = [];
    const server = http.createServer((request, response) => {
      let body = '';
      request.on('data', (c) => (body += c));
      request.on('end', () => {
        requests.push(`${request.method} ${request.url} ${body}`);
        response.end();
        child.exit({ code: 0, signal: null });
      });
    });
    await new Promise<void>((r) => server.listen(runFilesOf(arm).vfkitRestSocket, r));
    try {
      expect(await vm.stop({ timeoutMs: 5000 })).toMatchObject({ how: 'backend', status: { code: 0, signal: null } });
    } finally {
      server.close();
    }
    expect(requests).toEqual(['POST /vm/state {"state":"Stop"}']);
    await expect(stat(runFilesOf(arm).pidfile)).rejects.toThrow(/ENOENT/);
    await expect(stat(runFilesOf(arm).vfkitRestSocket)).rejects.toThrow(/ENOENT/);
    expect(await vm.exited).toEqual({ code: 0, signal: null });
  });

  it('the endpoint: the forwarded port for qemu, the announced ip= for NAT backends', async () => {
    const runner = new RecordingRunner(['hyperkit']);
    const vm = await createHyperkitBackend({ runner, host: intelMac }).start(spec);
    await writeFile(spec.consoleLog, 'booting\nFERRY-READY ip=192.168.64.7 boot_ms=812\n');
    // hyperkit reads its console from the pty, not the file: feed the console directly.
    (vm.console as LineConsole).push('FERRY-READY ip=192.168.64.7 boot_ms=812\n');
    expect(await vm.ready(1000)).toEqual({ host: '192.168.64.7', port: 22, readyLine: 'FERRY-READY ip=192.168.64.7 boot_ms=812' });
    await vm.stop({ hard: true });
  });
});

describe('the one stop ladder, for a VM this process started and one it did not', () => {
  it("the guest's own power-off comes first; when it works, nothing else is asked", async () => {
    const runner = new RecordingRunner(['hyperkit']);
    const vm = await createHyperkitBackend({ runner, host: intelMac }).start(spec, {
      powerOffGuest: async () => (runner.children[0] as FakeChild).exit({ code: 0, signal: null }),
    });
    expect(await vm.stop({ timeoutMs: 5000 })).toMatchObject({ how: 'guest', status: { code: 0, signal: null } });
    expect((runner.children[0] as FakeChild).signals).toEqual([]);
  });

  it("a recorded vfkit guest whose control command does not answer: REST Stop, then HardStop, through attach()", async () => {
    // A real process stands in for the hypervisor another ferry started; the REST service ends it on HardStop.
    const hypervisor = spawn('sleep', ['60'], { stdio: 'ignore' });
    const arm = { ...spec, system: 'aarch64-linux' as const };
    await mkdir(arm.runDir, { recursive: true });
    await writeFile(runFilesOf(arm).pidfile, `${hypervisor.pid}\n`);
    await writeFile(diskLockFile(arm.disks[1].path), JSON.stringify({ pid: hypervisor.pid, guest: 'builder', runDir: arm.runDir }));
    const requests: string[] = [];
    const server = http.createServer((request, response) => {
      let body = '';
      request.on('data', (c) => (body += c));
      request.on('end', () => {
        requests.push(body);
        response.end();
        if (body.includes('HardStop')) hypervisor.kill('SIGKILL');
      });
    });
    await new Promise<void>((r) => server.listen(runFilesOf(arm).vfkitRestSocket, r));
    const asked: string[] = [];
    try {
      const backend = createVfkitBackend({ runner: new RecordingRunner(['vfkit']), host: appleSilicon, kernelCacheDir: dir });
      const vm = backend.attach({ spec: arm, pid: hypervisor.pid! }, {
        powerOffGuest: async () => {
          asked.push('control command');
          throw new Error('ssh: connect timed out');
        },
      });
      const result = await vm.stop({ timeoutMs: 200 });
      expect(result.how).toBe('hard-stop');
    } finally {
      server.close();
      hypervisor.kill('SIGKILL');
    }
    expect(asked).toEqual(['control command']);
    expect(requests).toEqual(['{"state":"Stop"}', '{"state":"HardStop"}']);
    await expect(stat(runFilesOf(arm).pidfile)).rejects.toThrow(/ENOENT/);
    await expect(stat(diskLockFile(arm.disks[1].path))).rejects.toThrow(/ENOENT/);
  }, 20_000);
});

describe('kernel images for vfkit', () => {
  it('recognises an arm64 Image, gzip, and an EFI zboot image; unpacks both into the cache once', async () => {
    const image = fakeArm64Image(8192);
    expect(detectKernelFormat(image.subarray(0, 64))).toEqual({ kind: 'arm64-image' });
    const cache = path.join(dir, 'cache');

    const plain = path.join(dir, 'Image');
    await writeFile(plain, image);
    expect(await ensureUncompressedKernel(plain, cache)).toBe(plain);

    const gz = path.join(dir, 'vmlinuz.gz');
    await writeFile(gz, gzipSync(image));
    const fromGzip = await ensureUncompressedKernel(gz, cache);
    expect(await readFile(fromGzip)).toEqual(image);
    expect(await ensureUncompressedKernel(gz, cache)).toBe(fromGzip);

    // zboot-header.S: "MZ" 0, "zimg" 4, payload offset 8, payload size 12, comp type at 24.
    const payload = gzipSync(image);
    const header = Buffer.alloc(512);
    header.write('MZ', 0, 'latin1');
    header.write('zimg', 4, 'latin1');
    header.writeUInt32LE(512, 8);
    header.writeUInt32LE(payload.length, 12);
    header.write('gzip\0', 24, 'latin1');
    const zboot = path.join(dir, 'vmlinuz.efi');
    await writeFile(zboot, Buffer.concat([header, payload, Buffer.alloc(100, 0xee)]));
    expect(detectKernelFormat(header)).toEqual({ kind: 'efi-zboot', compression: 'gzip', payloadOffset: 512, payloadSize: payload.length });
    expect(await readFile(await ensureUncompressedKernel(zboot, cache))).toEqual(image);
  });

  it('refuses what is not an arm64 kernel, naming the file', async () => {
    const bogus = path.join(dir, 'bzImage');
    await writeFile(bogus, Buffer.alloc(1024, 1));
    await expect(ensureUncompressedKernel(bogus, dir)).rejects.toThrow(`kernel ${bogus} is neither an arm64 Image`);
    const x86gz = path.join(dir, 'x86.gz');
    await writeFile(x86gz, gzipSync(Buffer.alloc(1024, 2)));
    await expect(ensureUncompressedKernel(x86gz, dir)).rejects.toThrow(/decompressed \(gzip\) to something that is not an arm64 Image/);
  });
});

describe('choosing a backend', () => {
  const pick = async (installed: string[], host: { platform: NodeJS.Platform; arch: string }, system: VmSpec['system'], accel?: 'hvf' | 'kvm' | 'tcg') =>
    (await selectBackend('auto', system, { runner: new RecordingRunner(installed), host, accel, kernelCacheDir: dir })).facts.name;

  it('auto: vfkit on every Mac for the native guest (qemu when it is missing, hyperkit last), qemu otherwise', async () => {
    expect(await pick(['vfkit', 'qemu-system-aarch64'], appleSilicon, 'aarch64-linux')).toBe('vfkit');
    expect(await pick(['qemu-system-aarch64'], appleSilicon, 'aarch64-linux')).toBe('qemu');
    // Virtualization.framework runs only native guests: an x86_64 guest on Apple silicon is qemu's (tcg).
    expect(await pick(['vfkit', 'qemu-system-x86_64'], appleSilicon, 'x86_64-linux')).toBe('qemu');
    expect(await pick(['vfkit', 'hyperkit', 'qemu-system-x86_64'], intelMac, 'x86_64-linux')).toBe('vfkit');
    expect(await pick(['hyperkit', 'qemu-system-x86_64'], intelMac, 'x86_64-linux')).toBe('qemu');
    expect(await pick(['hyperkit'], intelMac, 'x86_64-linux')).toBe('hyperkit');
    expect(await pick(['hyperkit', 'vfkit', 'qemu-system-x86_64'], linuxX64, 'x86_64-linux')).toBe('qemu');
  });

  it('auto with an accelerator set: only a backend that uses it', async () => {
    expect(await pick(['vfkit', 'qemu-system-aarch64'], appleSilicon, 'aarch64-linux', 'hvf')).toBe('qemu');
    expect(await pick(['vfkit', 'qemu-system-aarch64'], appleSilicon, 'aarch64-linux', 'tcg')).toBe('qemu');
  });

  it('names the missing binary and how to install it, and refuses a backend that cannot run here', async () => {
    await expect(selectBackend('auto', 'aarch64-linux', { runner: new RecordingRunner([]), host: appleSilicon, kernelCacheDir: dir })).rejects.toMatchObject({
      message: 'no VM backend for aarch64-linux guests is installed: looked for vfkit, qemu-system-aarch64 on PATH',
      hint: 'install one of: vfkit (`brew install vfkit`, or `nix profile install nixpkgs#vfkit`); qemu-system-aarch64 (`brew install qemu`, or `nix profile install nixpkgs#qemu`)',
    });
    await expect(selectBackend('vfkit', 'aarch64-linux', { runner: new RecordingRunner([]), host: appleSilicon, kernelCacheDir: dir })).rejects.toMatchObject({
      message: "VM backend 'vfkit' needs vfkit, which is not on PATH",
      hint: 'install it: `brew install vfkit`, or `nix profile install nixpkgs#vfkit`',
    });
    await expect(selectBackend('vfkit', 'x86_64-linux', { runner: new RecordingRunner(['vfkit']), host: linuxX64, kernelCacheDir: dir })).rejects.toMatchObject({
      message: 'VM backend "vfkit" runs only on macOS, but this host is linux x64',
    });
  });
});

describe('console lines', () => {
  it('joins partial chunks, drops CRs, serves history, iterators and waits, and fails a wait with the tail', async () => {
    const console = new LineConsole('guest');
    const seen: string[] = [];
    const iterating = (async () => {
      for await (const line of console) seen.push(line);
    })();
    console.push('Linux ver');
    console.push('sion 6.1\r\nFERRY-READY ip=10.0.0.2\n');
    expect(await console.waitForLine(/ip=(\S+)/, 100)).toMatchObject({ 1: '10.0.0.2' });
    const late = console.waitForLine(/never/, 5000);
    console.push('tail without newline');
    console.close('the VM exited (exit code 1)');
    await expect(late).rejects.toThrow('guest: waiting for a console line matching /never/: the VM exited (exit code 1)');
    await iterating;
    expect(seen).toEqual(['Linux version 6.1', 'FERRY-READY ip=10.0.0.2', 'tail without newline']);
    await expect(new LineConsole('g').waitForLine(/x/, 20)).rejects.toThrow('no console line matched within 20 ms');
  });
});
