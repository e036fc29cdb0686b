/**
 * The HyperKit backend (Intel Macs). Syntax from moby/hyperkit: src/hyperkit.c (usage, the
 * `-f kexec,KERNEL,INITRD,CMDLINE` firmware parser, `-F` pidfile), src/lib/block_if.c (the `ro`
 * disk option), src/lib/uart_emul.c (`com1,autopty=PATH,log=PATH`). Not run on real hardware
 * here: the argv is checked flag by flag in test/unit/vm-argv.test.ts.
 */
import { createHash } from 'node:crypto';
import { appendFile, open } from 'node:fs/promises';
import tty from 'node:tty';
import { createExecaRunner, type ChildHandle, type Runner } from '../process/runner.js';
import { bootCmdline, type RunningVm, type SpecProblem, type VmBackend, type VmHooks, type VmSpec } from './backend.js';
import type { LineConsole } from './console.js';
import { BACKEND_FACTS, installHint, thisHost, type HostPlatform } from './facts.js';
import { attachVm, launch, problemsError, type ConsoleFeed, type HypervisorControl } from './process-vm.js';
import { runFilesOf } from './run-files.js';
import { validateCommon, validateNoCommas } from './validate.js';

export interface HyperkitArgvOptions {
  pidfile: string;
  tty: string;
  consoleRing: string;
}

/**
 * A stable UUID per guest name: hyperkit's vmnet derives the guest's MAC from it, so the guest
 * keeps its DHCP lease (and address) across boots instead of taking a new one each time.
 */
export function hyperkitUuid(name: string): string {
  const hex = createHash('sha256').update(`ferry:${name}`).digest('hex');
  // RFC 4122 version 4 layout (variant bits set), derived rather than random.
  const variant = ((parseInt(hex[16], 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

export function buildHyperkitArgv(spec: VmSpec, options: HyperkitArgvOptions): string[] {
  const argv = [
    '-A', // ACPI tables: the guest sees a power button (SIGTERM presses it)
    '-u', // the RTC keeps UTC
    '-F', options.pidfile,
    '-U', hyperkitUuid(spec.name),
    '-c', String(spec.cpus),
    '-m', `${spec.memoryBytes / 2 ** 20}M`,
    '-s', '0:0,hostbridge',
    '-s', '31,lpc',
    '-s', '1:0,virtio-net',
  ];
  let slot = 2;
  for (const disk of spec.disks) {
    argv.push('-s', `${slot}:0,virtio-blk,${disk.path}${disk.readOnly ? ',ro' : ''}`);
    slot++;
  }
  argv.push('-s', `${slot}:0,virtio-rnd`);
  argv.push('-l', `com1,autopty=${options.tty},log=${options.consoleRing}`);
  // One argv element; no shell, so no quotes: hyperkit splits on the first three commas only,
  // and the rest (commas included) is the kernel command line.
  argv.push('-f', `kexec,${spec.kernel},${spec.initrd},${bootCmdline(BACKEND_FACTS.hyperkit, spec)}`);
  return argv;
}

export interface HyperkitBackendOptions {
  runner?: Runner;
  host?: HostPlatform;
}

export function createHyperkitBackend(options: HyperkitBackendOptions = {}): VmBackend {
  const runner = options.runner ?? createExecaRunner();
  const host = options.host ?? thisHost();
  const facts = BACKEND_FACTS.hyperkit;

  async function validate(spec: VmSpec): Promise<SpecProblem[]> {
    const problems = await validateCommon(spec);
    problems.push(...validateNoCommas(spec, 'hyperkit'));
    const systems = facts.systemsOn(host);
    if (!systems.includes(spec.system)) {
      problems.push({
        field: 'system',
        message: systems.length ? `hyperkit runs ${systems.join(', ')} guests only, got ${spec.system}` : `hyperkit runs on Intel Macs only (this host is ${host.platform} ${host.arch})`,
      });
    }
    if (spec.rosetta) problems.push({ field: 'rosetta', message: 'Rosetta needs vfkit on Apple silicon, not hyperkit' });
    if (!(await runner.which(facts.binary(spec.system)))) {
      problems.push({ field: 'backend', message: 'hyperkit not found on PATH', hint: `install it: ${installHint(facts, host)}` });
    }
    return problems;
  }

  function control(spec: VmSpec): HypervisorControl {
    return {
      facts,
      spec,
      // -A: SIGTERM presses the guest's ACPI power button.
      requestStop: async (child: ChildHandle) => {
        if (!child.kill('SIGTERM')) throw new Error('hyperkit is gone');
      },
      runFilesToRemove: [runFilesOf(spec).hyperkitTty],
    };
  }

  async function start(spec: VmSpec, hooks?: VmHooks): Promise<RunningVm> {
    const problems = await validate(spec);
    if (problems.length) throw problemsError('hyperkit', spec, problems);
    const files = runFilesOf(spec);
    return launch(
      {
        ...control(spec),
        runner,
        binary: (await runner.which(facts.binary(spec.system)))!,
        // hyperkit creates its pidfile with O_EXCL and refuses to start if one is left over;
        // validate() has already removed a stale one.
        args: buildHyperkitArgv(spec, { pidfile: files.pidfile, tty: files.hyperkitTty, consoleRing: files.hyperkitConsoleRing }),
        writePidfile: false,
        // `log=` is a 64 KiB ring, not a growing file; the pty carries the live console.
        feedConsole: (console) => followPty(files.hyperkitTty, spec.consoleLog, console),
      },
      hooks,
    );
  }

  return { facts, validate, start, attach: (recorded, hooks) => attachVm(control(recorded.spec), recorded, hooks) };
}

/**
 * Reads the guest console from the pty hyperkit links at `ttyPath` (once it appears), and
 * appends it to `logFile` so the console log means the same for every backend. Raw mode: with
 * the default line discipline the pty would echo the guest's output back to it as input.
 */
function followPty(ttyPath: string, logFile: string, console: LineConsole): ConsoleFeed {
  let stream: tty.ReadStream | undefined;
  let stopped = false;
  let writing = Promise.resolve();
  const attach = async (): Promise<void> => {
    while (!stopped && !stream) {
      try {
        const handle = await open(ttyPath, 'r');
        stream = new tty.ReadStream(handle.fd);
        stream.setRawMode(true);
        stream.setEncoding('utf8');
        stream.on('data', (text: string) => {
          console.push(text);
          writing = writing.then(() => appendFile(logFile, text)).catch(() => {});
        });
        stream.on('error', () => {});
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  void attach();
  return {
    stop: async () => {
      stopped = true;
      stream?.destroy();
      await writing;
    },
  };
}
