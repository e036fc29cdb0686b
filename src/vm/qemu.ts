/**
 * The qemu backend: direct kernel boot, virtio disks, user networking with the guest's sshd
 * forwarded to 127.0.0.1, console to a log file, and a QMP socket to ask for power-off.
 */
import { constants as fsConstants } from 'node:fs';
import { access } from 'node:fs/promises';
import { createExecaRunner, type Runner } from '../process/runner.js';
import { bootCmdline, type RunningVm, type SpecProblem, type VmBackend, type VmHooks, type VmSpec } from './backend.js';
import { BACKEND_FACTS, installHint, thisHost, type HostPlatform, type QemuAccelerator } from './facts.js';
import { attachVm, launch, problemsError, type HypervisorControl } from './process-vm.js';
import { connectQmpWhenReady, QmpClient } from './qmp.js';
import { runFilesOf } from './run-files.js';
import { validateCommon } from './validate.js';

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

  argv.push('-kernel', spec.kernel, '-initrd', spec.initrd, '-append', bootCmdline(BACKEND_FACTS.qemu, spec));

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

export interface QemuBackendOptions {
  runner?: Runner;
  host?: HostPlatform;
  /** `[vm] accel`: "auto" takes the best that works here; any other value is that one or a refusal. */
  accel?: QemuAccelerator | 'auto';
  kvmDevice?: string;
  /** How long the KVM probe may take to print the kernel banner. */
  probeTimeoutMs?: number;
}

export interface QemuBackend extends VmBackend {
  /** The accelerator qemu will use for this spec on this host (probed once per binary), or why the configured one cannot work. */
  chooseAccelerator(spec: VmSpec): Promise<QemuAccelerator | SpecProblem>;
}

export function createQemuBackend(options: QemuBackendOptions = {}): QemuBackend {
  const runner = options.runner ?? createExecaRunner();
  const host = options.host ?? thisHost();
  const wanted = options.accel ?? 'auto';
  const facts = BACKEND_FACTS.qemu;
  const kvm = kvmProber(runner, options.kvmDevice ?? '/dev/kvm', options.probeTimeoutMs ?? 3000);

  async function works(accelerator: QemuAccelerator, spec: VmSpec): Promise<string | undefined> {
    if (accelerator === 'kvm') return kvm(spec);
    return undefined; // hvf: Hypervisor.framework is on every Mac ferry supports; tcg always works
  }

  async function chooseAccelerator(spec: VmSpec): Promise<QemuAccelerator | SpecProblem> {
    const usable = facts.acceleratorsFor(host, spec.system) as readonly QemuAccelerator[];
    if (wanted !== 'auto') {
      if (!usable.includes(wanted)) {
        const why = `this host is ${host.platform} ${host.arch} and the guest is ${spec.system}; here qemu can use ${usable.join(', ')}`;
        return { field: 'accel', message: `accel "${wanted}" cannot work: ${why}`, hint: 'use accel = "auto" or "tcg"' };
      }
      const failure = await works(wanted, spec);
      return failure ? { field: 'accel', message: `accel "${wanted}" cannot work: ${failure}`, hint: 'use accel = "auto" or "tcg"' } : wanted;
    }
    for (const accelerator of usable) if ((await works(accelerator, spec)) === undefined) return accelerator;
    return 'tcg';
  }

  const validate = (spec: VmSpec): Promise<SpecProblem[]> => validateQemuSpec(spec, runner, host);

  async function start(spec: VmSpec, hooks?: VmHooks): Promise<RunningVm> {
    const problems = await validate(spec);
    const accelerator = problems.length ? 'tcg' : await chooseAccelerator(spec);
    if (typeof accelerator !== 'string') problems.push(accelerator);
    if (problems.length || typeof accelerator !== 'string') throw problemsError('qemu', spec, problems);
    const binary = (await runner.which(facts.binary(spec.system)))!;
    const files = runFilesOf(spec);
    const vmControl = qemuControl(spec);
    return launch(
      {
        ...vmControl,
        runner,
        binary,
        args: buildQemuArgv(spec, { accelerator, qmpSocket: files.qmpSocket, pidfile: files.pidfile }),
        writePidfile: false,
        // The greeting proves qemu is up; the connection is then closed, not held: qemu serves one
        // QMP client at a time, and a held one locked out every other (`ferry down` from another
        // process, a user's qmp-shell, bench/soak.ts's `stop`). Stops connect again when needed.
        afterSpawn: async (child) => {
          (await connectQmpWhenReady(files.qmpSocket, { timeoutMs: 15_000, gaveUp: child.exited })).close();
        },
      },
      hooks,
    );
  }

  return {
    facts,
    validate,
    start,
    attach: (recorded, hooks) => attachVm(qemuControl(recorded.spec), recorded, hooks),
    chooseAccelerator,
  };
}

async function validateQemuSpec(spec: VmSpec, runner: Runner, host: HostPlatform): Promise<SpecProblem[]> {
  const facts = BACKEND_FACTS.qemu;
  const problems = await validateCommon(spec);
  const binary = facts.binary(spec.system);
  if (!(await runner.which(binary))) {
    problems.push({ field: 'system', message: `${binary} not found on PATH`, hint: `install it: ${installHint(facts, host)}` });
  }
  if (spec.sshPortOnHost !== undefined && !(Number.isInteger(spec.sshPortOnHost) && spec.sshPortOnHost > 0 && spec.sshPortOnHost < 65536)) {
    problems.push({ field: 'sshPortOnHost', message: `expected a TCP port 1–65535, got ${spec.sshPortOnHost}` });
  }
  problems.push(...socketPathProblems(runFilesOf(spec).qmpSocket));
  return problems;
}

/** qemu's own stops go through QMP, connected when first needed. */
function qemuControl(spec: VmSpec): HypervisorControl {
  const socket = runFilesOf(spec).qmpSocket;
  let qmp: QmpClient | undefined;
  const connection = async (): Promise<QmpClient> => (qmp ??= await QmpClient.connect(socket, 3000));
  return {
    facts: BACKEND_FACTS.qemu,
    spec,
    requestStop: async () => void (await (await connection()).execute('system_powerdown')),
    // `quit` closes the connection as qemu exits; the reply may never come.
    hardStop: async () => void (await Promise.race([(await connection()).execute('quit'), new Promise((r) => setTimeout(r, 1000))])),
    runFilesToRemove: [socket],
    close: () => qmp?.close(),
  };
}

/**
 * Whether KVM works, per qemu binary (the probe costs up to `timeoutMs`): undefined when it does,
 * else why not. /dev/kvm existing is not enough: nested KVM can hang for ever in the firmware or
 * the kernel's real-mode setup, so the probe boots the real kernel for a moment and looks for its
 * banner. The probe boots an x86 machine; on arm64 Linux hosts /dev/kvm is trusted.
 */
function kvmProber(runner: Runner, kvmDevice: string, timeoutMs: number): (spec: VmSpec) => Promise<string | undefined> {
  const probes = new Map<string, Promise<string | undefined>>();
  const probe = async (binary: string, kernel: string): Promise<string | undefined> => {
    const result = await runner.run(
      binary,
      [
        '-accel', 'kvm', '-cpu', 'host', '-machine', 'q35', '-m', '128M', '-nodefaults', '-no-user-config',
        '-display', 'none', '-no-reboot', '-kernel', kernel,
        '-append', 'console=ttyS0 earlyprintk=serial panic=-1', '-serial', 'stdio',
      ],
      { timeoutMs },
    );
    if (/Linux version/.test(result.stdout)) return undefined;
    return result.timedOut
      ? `a probe boot under KVM printed nothing within ${timeoutMs} ms (nested KVM often hangs like this)`
      : `a probe boot under KVM failed: ${(result.stderr.trim().split('\n').pop() ?? '') || `exit code ${result.exitCode}`}`;
  };
  return async (spec) => {
    try {
      await access(kvmDevice, fsConstants.R_OK | fsConstants.W_OK);
    } catch (error) {
      return `${kvmDevice} is not usable (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
    }
    if (spec.system !== 'x86_64-linux') return undefined;
    const binary = (await runner.which(BACKEND_FACTS.qemu.binary(spec.system))) ?? BACKEND_FACTS.qemu.binary(spec.system);
    let result = probes.get(binary);
    if (!result) {
      result = probe(binary, spec.kernel);
      probes.set(binary, result);
    }
    return result;
  };
}

/** sun_path holds 104 bytes on macOS, 108 on Linux; a longer socket path fails at bind time. */
export function socketPathProblems(socket: string): SpecProblem[] {
  return Buffer.byteLength(socket) > 103
    ? [{ field: 'runDir', message: `socket path is ${Buffer.byteLength(socket)} bytes, longer than a unix socket allows (103): ${socket}`, hint: 'use a shorter runDir' }]
    : [];
}
