/**
 * The qemu backend: direct kernel boot, virtio disks, user networking with the guest's sshd
 * forwarded to 127.0.0.1, console to a log file, and a QMP socket to ask for power-off.
 */
import { constants as fsConstants } from 'node:fs';
import { access } from 'node:fs/promises';
import os from 'node:os';
import type { GuestSystem, RunningVm, SpecProblem, VmBackend, VmSpec } from './backend.js';
import { launch, problemsError } from './process-vm.js';
import { connectQmpWhenReady, type QmpClient } from './qmp.js';
import { runFiles } from './run-files.js';
import { createExecaRunner, type Runner } from '../process/runner.js';
import { validateCommon } from './validate.js';

export type QemuAccelerator = 'kvm' | 'hvf' | 'tcg';

export function qemuBinaryFor(system: GuestSystem): string {
  return system === 'x86_64-linux' ? 'qemu-system-x86_64' : 'qemu-system-aarch64';
}

/** qemu's option syntax: a literal ',' inside a value is written ',,'. */
export function qemuEscape(value: string): string {
  return value.replaceAll(',', ',,');
}

export interface QemuArgvOptions {
  accelerator: QemuAccelerator;
  qmpSocket: string;
  pidfile: string;
}

/** The full qemu command line for `spec` (without the binary). Pure: same input, same argv. */
export function buildQemuArgv(spec: VmSpec, options: QemuArgvOptions): string[] {
  const x86 = spec.system === 'x86_64-linux';
  const argv: string[] = ['-name', `ferry-${spec.name}`, '-nodefaults', '-no-user-config'];

  argv.push('-machine', x86 ? 'q35' : 'virt');
  if (options.accelerator === 'tcg') {
    // MTTCG: one host thread per vCPU instead of one for all of them. On arm64, pointer
    // authentication emulated with the architected QARMA cipher dominates tcg's time; the
    // implementation-defined algorithm is much cheaper and just as good for a build guest.
    argv.push('-accel', spec.cpus > 1 ? 'tcg,thread=multi' : 'tcg', '-cpu', x86 ? 'max' : 'max,pauth-impdef=on');
  } else {
    argv.push('-accel', options.accelerator, '-cpu', 'host');
  }
  argv.push('-smp', String(spec.cpus), '-m', `${spec.memoryBytes / 2 ** 20}M`);

  argv.push('-kernel', spec.kernel, '-initrd', spec.initrd, '-append', spec.cmdline);

  for (const [index, disk] of spec.disks.entries()) {
    const drive = [
      `file=${qemuEscape(disk.path)}`,
      'if=virtio',
      'format=raw',
      `id=disk${index}`,
      `readonly=${disk.readOnly ? 'on' : 'off'}`,
      'cache=writeback',
    ];
    // Lets the guest's discards punch holes, so a sparse state disk stays sparse.
    if (!disk.readOnly) drive.push('discard=unmap');
    argv.push('-drive', drive.join(','));
  }

  if (spec.sshPortOnHost !== undefined) {
    argv.push(
      '-netdev',
      `user,id=net0,hostfwd=tcp:127.0.0.1:${spec.sshPortOnHost}-:22`,
      '-device',
      // No iPXE option ROM: the kernel is booted directly, and the firmware would run the ROM's
      // initialisation (emulated, under tcg) on every boot.
      'virtio-net-pci,netdev=net0,romfile=',
    );
  }
  argv.push('-device', 'virtio-rng-pci');

  // ttyS0 (8250) on q35, ttyAMA0 (PL011) on virt: -serial attaches to whichever the machine has.
  argv.push('-chardev', `file,id=console0,path=${qemuEscape(spec.consoleLog)}`, '-serial', 'chardev:console0');
  argv.push('-qmp', `unix:${qemuEscape(options.qmpSocket)},server=on,wait=off`);
  argv.push('-display', 'none', '-no-reboot', '-pidfile', options.pidfile);
  return argv;
}

/** Linux's name for the console that `-serial` attaches to. */
export function qemuConsoleDevice(system: GuestSystem): string {
  return system === 'x86_64-linux' ? 'ttyS0' : 'ttyAMA0';
}

export interface QemuBackendOptions {
  runner?: Runner;
  platform?: NodeJS.Platform;
  /** Host CPU architecture as node names it ('x64', 'arm64'). */
  arch?: string;
  kvmDevice?: string;
  /** How long the KVM probe may take to print the kernel banner. */
  probeTimeoutMs?: number;
}

const HOST_ARCH_SYSTEM: Record<string, GuestSystem> = { x64: 'x86_64-linux', arm64: 'aarch64-linux' };

export interface QemuBackend extends VmBackend {
  /** The accelerator qemu will use for this spec on this host (probed once per binary). */
  chooseAccelerator(spec: VmSpec): Promise<QemuAccelerator>;
}

export function createQemuBackend(options: QemuBackendOptions = {}): QemuBackend {
  const runner = options.runner ?? createExecaRunner();
  const platform = options.platform ?? process.platform;
  const hostSystem = HOST_ARCH_SYSTEM[options.arch ?? os.arch()];
  const kvmDevice = options.kvmDevice ?? '/dev/kvm';
  const probeTimeoutMs = options.probeTimeoutMs ?? 3000;
  // Per backend instance (one per daemon process): the probe costs up to probeTimeoutMs.
  const kvmProbes = new Map<string, Promise<boolean>>();

  const nativeAccelerator = platform === 'darwin' ? 'hvf' : platform === 'linux' ? 'kvm' : undefined;

  async function kvmWorks(binary: string, kernel: string): Promise<boolean> {
    try {
      await access(kvmDevice, fsConstants.R_OK | fsConstants.W_OK);
    } catch {
      return false;
    }
    // /dev/kvm existing is not enough: nested KVM can hang for ever in the firmware or the
    // kernel's real-mode setup. Boot the real kernel for a moment and look for its banner.
    const probe = await runner.run(
      binary,
      [
        '-accel', 'kvm', '-cpu', 'host', '-machine', 'q35', '-m', '128M', '-nodefaults', '-no-user-config',
        '-display', 'none', '-no-reboot', '-kernel', kernel,
        '-append', 'console=ttyS0 earlyprintk=serial panic=-1', '-serial', 'stdio',
      ],
      { timeoutMs: probeTimeoutMs },
    );
    return /Linux version/.test(probe.stdout);
  }

  async function chooseAccelerator(spec: VmSpec): Promise<QemuAccelerator> {
    if (spec.system !== hostSystem || !nativeAccelerator) return 'tcg';
    if (nativeAccelerator === 'hvf') return 'hvf';
    if (spec.system !== 'x86_64-linux') {
      // The probe boots an x86 machine; on arm64 Linux hosts trust /dev/kvm.
      return access(kvmDevice, fsConstants.R_OK | fsConstants.W_OK).then(
        () => 'kvm' as const,
        () => 'tcg' as const,
      );
    }
    const binary = (await runner.which(qemuBinaryFor(spec.system))) ?? qemuBinaryFor(spec.system);
    let probe = kvmProbes.get(binary);
    if (!probe) {
      probe = kvmWorks(binary, spec.kernel);
      kvmProbes.set(binary, probe);
    }
    return (await probe) ? 'kvm' : 'tcg';
  }

  async function validate(spec: VmSpec): Promise<SpecProblem[]> {
    const problems = await validateCommon(spec);
    const binary = qemuBinaryFor(spec.system);
    if (!(await runner.which(binary))) {
      problems.push({ field: 'system', message: `${binary} not found on PATH`, hint: qemuInstallHint(platform) });
    }
    if (spec.sshPortOnHost !== undefined && !(Number.isInteger(spec.sshPortOnHost) && spec.sshPortOnHost > 0 && spec.sshPortOnHost < 65536)) {
      problems.push({ field: 'sshPortOnHost', message: `expected a TCP port 1–65535, got ${spec.sshPortOnHost}` });
    }
    problems.push(...socketPathProblems(runFiles.qmpSocket(spec)));
    return problems;
  }

  async function start(spec: VmSpec): Promise<RunningVm> {
    const problems = await validate(spec);
    if (problems.length) throw problemsError('qemu', spec, problems);
    const binary = (await runner.which(qemuBinaryFor(spec.system)))!;
    const accelerator = await chooseAccelerator(spec);
    const qmpSocket = runFiles.qmpSocket(spec);
    const args = buildQemuArgv(spec, { accelerator, qmpSocket, pidfile: runFiles.pidfile(spec) });
    let qmp: QmpClient | undefined;
    const needQmp = (): QmpClient => {
      if (!qmp) throw new Error('no QMP connection');
      return qmp;
    };
    const vm = await launch({
      backend: 'qemu',
      spec,
      runner,
      binary,
      args,
      writePidfile: false,
      endpoint: 'forwarded-port',
      afterSpawn: async (child) => {
        qmp = await connectQmpWhenReady(qmpSocket, { timeoutMs: 15_000, gaveUp: child.exited });
      },
      askPowerOff: async () => void (await needQmp().execute('system_powerdown')),
      // `quit` closes the connection as qemu exits; the reply may never come.
      quit: async () => void (await Promise.race([needQmp().execute('quit'), new Promise((r) => setTimeout(r, 1000))])),
      runFilesToRemove: [qmpSocket],
    });
    void vm.exited.then(() => qmp?.close());
    return vm;
  }

  return {
    name: 'qemu',
    capabilities: {
      userNetworkingPortForward: true,
      natNetworking: false,
      rosetta: false,
      readOnlyDisks: true,
      systems: ['x86_64-linux', 'aarch64-linux'],
      accelerators: nativeAccelerator ? [nativeAccelerator, 'tcg'] : ['tcg'],
    },
    consoleDevice: qemuConsoleDevice,
    validate,
    start,
    chooseAccelerator,
  };
}

function qemuInstallHint(platform: NodeJS.Platform): string {
  return platform === 'darwin' ? 'install it with `brew install qemu`' : 'install it with `apt-get install qemu-system-x86` (or qemu-system-arm), or your distribution\'s qemu package';
}

/** sun_path holds 104 bytes on macOS, 108 on Linux; a longer socket path fails at bind time. */
export function socketPathProblems(socket: string): SpecProblem[] {
  return Buffer.byteLength(socket) > 103
    ? [{ field: 'runDir', message: `socket path is ${Buffer.byteLength(socket)} bytes, longer than a unix socket allows (103): ${socket}`, hint: 'use a shorter runDir' }]
    : [];
}
