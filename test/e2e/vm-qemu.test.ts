/**
 * The real qemu-system-x86_64 (tcg here: nested KVM hangs on this machine, and the backend's
 * probe must find that out within seconds) boots Debian's cloud kernel with a tiny busybox
 * initramfs built by the real `cpio`. The init prints a line, then either powers off when the
 * ACPI power button is pressed (QMP system_powerdown → evdev event) or, when the cmdline says
 * so, ignores it — to prove stop() falls back to quit and kill.
 */
import { execa } from 'execa';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningVm, VmSpec } from '../../src/vm/backend.js';
import { freePort } from '../../src/vm/free-port.js';
import { createQemuBackend } from '../../src/vm/qemu.js';
import { diskLockFile } from '../../src/config/paths.js';
import { isProcessAlive } from '../../src/process/existing.js';
import { runFilesOf } from '../../src/vm/run-files.js';
import { createExecaRunner, type Runner } from '../../src/process/runner.js';
import { busyboxStatic, debianKernel } from '../support/fixtures.js';

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules.order); do insmod /lib/$m.ko; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
# Stands in for sshd: whoever connects to port 22 (through qemu's hostfwd) gets one line.
( while :; do echo "FERRY-TEST-PORT-22 from guest" | nc -l -p 22; done ) &
if ! grep -q ferry.test.ignore_powerdown /proc/cmdline; then
  for e in /sys/class/input/event*; do
    if grep -q "Power Button" "$e/device/name"; then
      ( head -c 1 "/dev/input/\${e##*/}" >/dev/null; echo FERRY-TEST-POWER-BUTTON; sync; poweroff -f ) &
    fi
  done
fi
sleep 0.3
echo "FERRY-TEST-READY pid=$$ name=$(sed -n 's/.*ferry.test.name=\\([^ ]*\\).*/\\1/p' /proc/cmdline)"
echo "FERRY-READY ip=10.0.2.15 boot_ms=0"
while :; do sleep 1; done
`;

let work: string;
let kernel: string;
let initrd: string;
let runner: Runner;
const spawned: string[][] = [];
const running: RunningVm[] = [];

async function buildInitramfs(dir: string): Promise<string> {
  const { modulesDir } = await debianKernel();
  const root = path.join(dir, 'initramfs-root');
  for (const sub of ['bin', 'lib', 'proc', 'sys', 'dev']) await mkdir(path.join(root, sub), { recursive: true });
  await copyFile(await busyboxStatic(), path.join(root, 'bin', 'busybox'));
  await chmod(path.join(root, 'bin', 'busybox'), 0o755);
  // In dependency order (from `modinfo -F depends`); ferry's own initramfs writer resolves this
  // itself — this fixture stays independent of it.
  const modules = [
    'drivers/virtio/virtio_ring', 'drivers/virtio/virtio', 'drivers/virtio/virtio_pci_modern_dev',
    'drivers/virtio/virtio_pci_legacy_dev', 'drivers/virtio/virtio_pci', 'net/core/failover',
    'drivers/net/net_failover', 'drivers/net/virtio_net', 'drivers/input/evdev', 'drivers/acpi/button',
  ];
  for (const module of modules) {
    await copyFile(path.join(modulesDir, 'kernel', `${module}.ko`), path.join(root, 'lib', `${path.basename(module)}.ko`));
  }
  await writeFile(path.join(root, 'lib', 'modules.order'), modules.map((m) => path.basename(m)).join('\n') + '\n');
  await writeFile(path.join(root, 'init'), INIT, { mode: 0o755 });
  const output = path.join(dir, 'initrd.cpio');
  const files = (await execa('find', ['.'], { cwd: root })).stdout;
  await execa('cpio', ['-o', '-H', 'newc', '--quiet', '-O', output], { cwd: root, input: files });
  return output;
}

async function specFor(name: string, disk: string, extraCmdline = ''): Promise<VmSpec> {
  const runDir = path.join(work, `run-${name}`);
  return {
    name,
    system: 'x86_64-linux',
    cpus: 1,
    memoryBytes: 256 * 2 ** 20,
    kernel,
    initrd,
    cmdline: `quiet panic=-1 ferry.test.name=${name} ${extraCmdline}`.trim(), // the backend adds console=ttyS0
    disks: [{ path: disk, readOnly: false }],
    sshPortOnHost: await freePort(),
    consoleLog: path.join(runDir, 'console.log'),
    runDir,
  };
}

async function newDisk(name: string): Promise<string> {
  const file = path.join(work, `${name}.img`);
  await writeFile(file, '');
  await execa('truncate', ['-s', '64M', file]);
  return file;
}

/** Connects (retrying while the guest's listener comes up) and returns the first line sent. */
async function readLineFrom(host: string, port: number): Promise<string> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const line = await new Promise<string>((resolve) => {
      let data = '';
      const socket = net.connect({ host, port });
      socket.setTimeout(3000, () => socket.destroy());
      socket.on('data', (chunk) => (data += chunk.toString()));
      socket.on('error', () => {});
      socket.on('close', () => resolve(data.split('\n')[0]));
    });
    if (line) return line;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`nothing answered on ${host}:${port}`);
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-vm-qemu-'));
  kernel = (await debianKernel()).kernel;
  initrd = await buildInitramfs(work);
  const real = createExecaRunner();
  // The real runner, with every spawned command noted, so a refused start can be shown to
  // have started nothing.
  runner = {
    ...real,
    spawn: (file, args, options) => {
      spawned.push([file, ...args]);
      return real.spawn(file, args, options);
    },
  };
});

afterAll(async () => {
  for (const vm of running) await vm.stop({ hard: true }).catch(() => {});
  if (work) await rm(work, { recursive: true, force: true });
});

describe('qemu backend on the real qemu-system-x86_64', () => {
  it('picks an accelerator within seconds (the nested-KVM probe must not hang)', async () => {
    const backend = createQemuBackend({ runner });
    const spec = await specFor('probe', await newDisk('probe'));
    const started = Date.now();
    const accelerator = await backend.chooseAccelerator(spec);
    expect(['kvm', 'tcg']).toContain(accelerator);
    expect(Date.now() - started).toBeLessThan(6000);
    // Cached: the second answer costs nothing.
    const again = Date.now();
    expect(await backend.chooseAccelerator(spec)).toBe(accelerator);
    expect(Date.now() - again).toBeLessThan(50);
  });

  it('boots, sees the console line, refuses a second guest on the same disk, and powers off cleanly', async () => {
    const backend = createQemuBackend({ runner });
    const disk = await newDisk('shared');
    const spec = await specFor('first', disk);
    const vm = await backend.start(spec);
    running.push(vm);
    expect(isProcessAlive(vm.pid)).toBe(true);

    const match = await vm.waitForLine(/FERRY-TEST-READY pid=(\d+) name=(\S+)/, 60_000);
    expect(match[1]).toBe('1'); // our init really is the guest's PID 1
    expect(match[2]).toBe('first'); // and it got our kernel command line
    expect(vm.console.history()).toContain(match[0]);

    // The endpoint for qemu is the forwarded port, and it really reaches the guest's port 22.
    const endpoint = await vm.ready(10_000);
    expect(endpoint).toEqual({ host: '127.0.0.1', port: spec.sshPortOnHost, readyLine: 'FERRY-READY ip=10.0.2.15 boot_ms=0' });
    expect(await readLineFrom(endpoint.host, endpoint.port)).toBe('FERRY-TEST-PORT-22 from guest');

    // The pidfile qemu wrote names this process; the lock beside the disk names it too.
    expect(Number((await readFile(runFilesOf(spec).pidfile, 'utf8')).trim())).toBe(vm.pid);
    expect(JSON.parse(await readFile(diskLockFile(disk), 'utf8'))).toMatchObject({ pid: vm.pid, guest: 'first' });

    // A second guest (other name, other runDir) on the same disk: refused, nothing started.
    const second = await specFor('second', disk);
    const problems = await backend.validate(second);
    expect(problems.map((p) => p.message).join('\n')).toMatch(new RegExp(`disk ${disk} is in use by guest 'first' \\(pid ${vm.pid}\\)`));
    const spawnsBefore = spawned.length;
    await expect(backend.start(second)).rejects.toThrow(/in use by guest 'first'/);
    expect(spawned.length).toBe(spawnsBefore);
    expect(await exists(runFilesOf(second).pidfile)).toBe(false);

    // Ask (ACPI power button via QMP), the guest powers off, qemu exits 0.
    const result = await vm.stop({ timeoutMs: 30_000 });
    expect(result.how).toBe('backend'); // QMP system_powerdown: these bare VMs lend no control command
    expect(result.status).toEqual({ code: 0, signal: null });
    expect(vm.console.history()).toContain('FERRY-TEST-POWER-BUTTON');
    expect(isProcessAlive(vm.pid)).toBe(false);
    expect(await exists(runFilesOf(spec).pidfile)).toBe(false);
    expect(await exists(runFilesOf(spec).qmpSocket)).toBe(false);
    expect(await exists(diskLockFile(disk))).toBe(false);

    // The disk is free again.
    expect(await backend.validate(second)).toEqual([]);
  });

  it('falls back to quit when the guest ignores the power button, and leaves nothing behind', async () => {
    const backend = createQemuBackend({ runner });
    const spec = await specFor('deaf', await newDisk('deaf'), 'ferry.test.ignore_powerdown');
    const vm = await backend.start(spec);
    running.push(vm);
    await vm.waitForLine(/FERRY-TEST-READY/, 60_000);
    const started = Date.now();
    const result = await vm.stop({ timeoutMs: 2000 });
    expect(result.how).toBe('hard-stop'); // QMP quit
    expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
    expect(vm.console.history()).not.toContain('FERRY-TEST-POWER-BUTTON');
    expect(isProcessAlive(vm.pid)).toBe(false);
    expect(await readdir(spec.runDir)).toEqual(['console.log']);
  });

  it('a hard stop kills qemu at once and still removes the pidfile qemu could not', async () => {
    const backend = createQemuBackend({ runner });
    const spec = await specFor('hard', await newDisk('hard'));
    const vm = await backend.start(spec);
    running.push(vm);
    await vm.waitForLine(/FERRY-TEST-READY/, 60_000);
    const result = await vm.stop({ hard: true });
    expect(result).toMatchObject({ how: 'killed', status: { code: null, signal: 'SIGKILL' } });
    expect(isProcessAlive(vm.pid)).toBe(false);
    expect(await readdir(spec.runDir)).toEqual(['console.log']);
    // A second stop is harmless.
    expect((await vm.stop()).how).toBe('killed');
  });

  it('a wrong kernel path is refused before anything starts', async () => {
    const backend = createQemuBackend({ runner });
    const spec = { ...(await specFor('nokernel', await newDisk('nokernel'))), kernel: path.join(work, 'no-such-vmlinuz') };
    const spawnsBefore = spawned.length;
    await expect(backend.start(spec)).rejects.toThrow(`kernel: kernel file not found: ${spec.kernel}`);
    expect(spawned.length).toBe(spawnsBefore);
  });

  it('waitForLine fails with the reason when the guest dies before the line', async () => {
    const backend = createQemuBackend({ runner });
    // rdinit points nowhere: the kernel panics, panic=-1 reboots, -no-reboot makes qemu exit.
    const spec = await specFor('panic', await newDisk('panic'), 'rdinit=/nonexistent');
    const vm = await backend.start(spec);
    running.push(vm);
    await expect(vm.waitForLine(/FERRY-TEST-READY/, 60_000)).rejects.toThrow(/the VM exited \(exit code 0\)/);
    expect(vm.console.history().some((line) => /Kernel panic/.test(line))).toBe(true);
    await vm.exited;
    expect(await readdir(spec.runDir)).toEqual(['console.log']);
  });
});
