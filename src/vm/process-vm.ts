/**
 * What every backend does around its hypervisor process: take the disk locks, spawn through the
 * Runner, follow the console, and on exit — however it happens — remove the run files in the
 * reverse order they were made. `stop()` is "ask, wait, then kill".
 */
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ExitCode, FerryError } from '../errors.js';
import type { ExitStatus, GuestEndpoint, RunningVm, SpecProblem, StopOptions, StopResult, VmBackend, VmSpec } from './backend.js';
import { FileTail, LineConsole } from './console.js';
import { acquireDiskLocks, runFiles } from './run-files.js';
import type { ChildHandle, Runner } from '../process/runner.js';

export interface ConsoleFeed {
  /** Reads what is left and stops. */
  stop(): Promise<void>;
}

export interface LaunchPlan {
  backend: VmBackend['name'];
  spec: VmSpec;
  runner: Runner;
  binary: string;
  args: string[];
  /** ferry writes the pidfile (vfkit has no option for it); qemu and hyperkit write their own. */
  writePidfile: boolean;
  /** Where console lines come from; default: follow spec.consoleLog as it grows. */
  feedConsole?: (console: LineConsole, child: ChildHandle) => ConsoleFeed;
  /** Runs once the process is up (e.g. connect to its control socket); a throw stops the VM. */
  afterSpawn?: (child: ChildHandle) => Promise<void>;
  /** Asks the guest to power off: QMP system_powerdown, vfkit's REST Stop, SIGTERM for hyperkit. */
  askPowerOff: (child: ChildHandle) => Promise<void>;
  /** Ends the hypervisor without the guest's help but gracefully for the host (QMP quit). */
  quit?: (child: ChildHandle) => Promise<void>;
  /** How the host reaches the guest's sshd: a forwarded port, or the address the guest announces. */
  endpoint: 'forwarded-port' | 'announced-ip';
  /** Extra run files (sockets) removed after exit. */
  runFilesToRemove: string[];
}

const DEFAULT_STOP_TIMEOUT_MS = 30_000;
const QUIT_GRACE_MS = 3_000;
const TERM_GRACE_MS = 3_000;

export function problemsError(backend: string, spec: VmSpec, problems: SpecProblem[]): FerryError {
  const lines = problems.map((p) => `  - ${p.field}: ${p.message}${p.hint ? ` (${p.hint})` : ''}`);
  return new FerryError(`cannot start guest '${spec.name}' with ${backend}:\n${lines.join('\n')}`, {
    exitCode: ExitCode.Config,
  });
}

export async function launch(plan: LaunchPlan): Promise<RunningVm> {
  const { spec } = plan;
  await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
  await mkdir(path.dirname(spec.consoleLog), { recursive: true });
  // The console log holds this boot only, so readiness never matches a line from the last one.
  await writeFile(spec.consoleLog, '');

  const cleanups: Array<() => Promise<void>> = [];
  const runCleanups = async (): Promise<void> => {
    while (cleanups.length) await cleanups.pop()!().catch(() => {});
  };

  const locks = await acquireDiskLocks(spec, { pid: process.pid, guest: spec.name, runDir: spec.runDir });
  if (!locks.ok) {
    throw problemsError(plan.backend, spec, [
      { field: 'disks', message: `disk ${locks.disk.path} is in use by guest '${locks.owner.guest}' (pid ${locks.owner.pid})` },
    ]);
  }
  cleanups.push(locks.release);
  const pidfile = runFiles.pidfile(spec);
  cleanups.push(() => unlink(pidfile).catch(() => {}));
  for (const file of plan.runFilesToRemove) cleanups.push(() => unlink(file).catch(() => {}));

  const child = plan.runner.spawn(plan.binary, plan.args);
  if (child.pid === undefined) {
    const status = await child.exited;
    await runCleanups();
    throw new FerryError(`${plan.backend}: could not start ${plan.binary}: ${(status as { error?: string }).error ?? 'unknown error'}`, {
      exitCode: ExitCode.Unavailable,
    });
  }
  const pid = child.pid;
  await locks.setPid(pid);
  if (plan.writePidfile) await writeFile(pidfile, `${pid}\n`);

  const console = new LineConsole(`guest '${spec.name}' (${plan.backend})`);
  const feed = plan.feedConsole ? plan.feedConsole(console, child) : followFile(spec.consoleLog, console);

  let hasExited = false;
  const exited: Promise<ExitStatus> = child.exited.then(async (status) => {
    hasExited = true;
    await feed.stop().catch(() => {});
    const output = child.output().trim();
    console.close(`the VM exited (${describeExit(status)})${output ? `: ${output.split('\n').slice(-5).join(' | ')}` : ''}`);
    await runCleanups();
    return { code: status.code, signal: status.signal };
  });

  const waitExit = (ms: number): Promise<boolean> =>
    Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);

  let stopping: Promise<StopResult> | undefined;
  const stop = (options: StopOptions = {}): Promise<StopResult> => {
    stopping ??= (async (): Promise<StopResult> => {
      if (hasExited) return { how: 'already-exited', status: await exited };
      if (!options.hard) {
        // Ask the guest; it syncs its disks and powers off.
        const asked = await plan.askPowerOff(child).then(
          () => true,
          () => false,
        );
        if (asked && (await waitExit(options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS))) return { how: 'clean', status: await exited };
        if (plan.quit) {
          await plan.quit(child).catch(() => {});
          if (await waitExit(QUIT_GRACE_MS)) return { how: 'quit', status: await exited };
        }
        child.kill('SIGTERM');
        if (await waitExit(TERM_GRACE_MS)) return { how: 'quit', status: await exited };
      }
      child.kill('SIGKILL');
      return { how: 'killed', status: await exited };
    })();
    return stopping;
  };

  const vm: RunningVm = {
    backend: plan.backend,
    spec,
    pid,
    console,
    waitForLine: (pattern, timeoutMs) => console.waitForLine(pattern, timeoutMs),
    ready: async (timeoutMs) => {
      const [line] = await console.waitForLine(READY_LINE, timeoutMs);
      return endpointFrom(plan.endpoint, spec, line);
    },
    stop,
    exited,
  };

  if (plan.afterSpawn) {
    try {
      await plan.afterSpawn(child);
    } catch (error) {
      await stop({ hard: true });
      const output = child.output().trim();
      throw new FerryError(`${plan.backend}: guest '${spec.name}' did not start: ${(error as Error).message}`, {
        cause: error,
        hint: output ? `${plan.backend} said: ${output.split('\n').slice(-5).join('\n')}` : undefined,
      });
    }
  }
  return vm;
}

/** The guest contract's readiness line, e.g. `FERRY-READY ip=192.168.64.5 boot_ms=1234`. */
export const READY_LINE = /\bFERRY-READY\b.*$/;

export function endpointFrom(kind: LaunchPlan['endpoint'], spec: VmSpec, readyLine: string): GuestEndpoint {
  if (kind === 'forwarded-port') {
    if (spec.sshPortOnHost === undefined) throw new FerryError(`guest '${spec.name}': no sshPortOnHost was given, so its sshd is unreachable`);
    return { host: '127.0.0.1', port: spec.sshPortOnHost, readyLine };
  }
  const ip = /\bip=([0-9a-fA-F.:]+)/.exec(readyLine)?.[1];
  if (!ip) {
    throw new FerryError(`guest '${spec.name}' announced readiness without its address: expected 'ip=…' in ${JSON.stringify(readyLine)}`);
  }
  return { host: ip, port: 22, readyLine };
}

function followFile(file: string, console: LineConsole): ConsoleFeed {
  const tail = new FileTail(file, (text) => console.push(text));
  tail.start();
  return tail;
}

export function describeExit(status: ExitStatus): string {
  if (status.signal) return `signal ${status.signal}`;
  return `exit code ${status.code}`;
}
