/**
 * What every backend does around its hypervisor process: take the disk locks, spawn through the
 * Runner (or take charge of a process another ferry started), follow the console, stop it with the
 * one stop ladder, and on exit — however it happens — remove the run files in the reverse order
 * they were made.
 */
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { diskLockFile } from '../config/paths.js';
import { ExitCode, FerryError } from '../errors.js';
import { existingProcess } from '../process/existing.js';
import { ProcessError } from '../process/process-error.js';
import type { ChildHandle, ExitStatus, Runner } from '../process/runner.js';
import type { GuestEndpoint, RecordedVm, RunningVm, SpecProblem, StopOptions, StopResult, VmHooks, VmSpec } from './backend.js';
import { FileTail, LineConsole } from './console.js';
import type { BackendFacts } from './facts.js';
import { acquireDiskLocks, runFilesOf } from './run-files.js';
import { runStopLadder } from './stop-ladder.js';

export interface ConsoleFeed {
  /** Reads what is left and stops. */
  stop(): Promise<void>;
}

/** What a backend lends the common code for one VM: its facts and its own ways to stop it. */
export interface HypervisorControl {
  facts: BackendFacts;
  spec: VmSpec;
  /** facts.stop: QMP system_powerdown, vfkit's REST `Stop`, SIGTERM (ACPI) for hyperkit. */
  requestStop: (child: ChildHandle) => Promise<void>;
  /** Ends the hypervisor without the guest's help but gracefully for the host (QMP quit, `HardStop`). */
  hardStop?: (child: ChildHandle) => Promise<void>;
  /** Run files (sockets) removed after exit, besides the pidfile and the disk locks. */
  runFilesToRemove: string[];
  /** Releases what the control holds (a QMP connection) once the VM has exited. */
  close?: () => void;
}

export interface LaunchPlan extends HypervisorControl {
  runner: Runner;
  binary: string;
  args: string[];
  /** ferry writes the pidfile (vfkit has no option for it); qemu and hyperkit write their own. */
  writePidfile: boolean;
  /** Where console lines come from; default: follow spec.consoleLog as it grows. */
  feedConsole?: (console: LineConsole, child: ChildHandle) => ConsoleFeed;
  /** Runs once the process is up (e.g. connect to its control socket); a throw stops the VM. */
  afterSpawn?: (child: ChildHandle) => Promise<void>;
}

export function problemsError(backend: string, spec: VmSpec, problems: SpecProblem[]): FerryError {
  const lines = problems.map((p) => `  - ${p.field}: ${p.message}${p.hint ? ` (${p.hint})` : ''}`);
  return new FerryError(`cannot start guest '${spec.name}' with ${backend}:\n${lines.join('\n')}`, {
    exitCode: ExitCode.Config,
  });
}

type Cleanup = () => Promise<void>;

export async function launch(plan: LaunchPlan, hooks: VmHooks = {}): Promise<RunningVm> {
  const { spec } = plan;
  const backend = plan.facts.name;
  await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
  await mkdir(path.dirname(spec.consoleLog), { recursive: true });
  // The console log holds this boot only, so readiness never matches a line from the last one.
  await writeFile(spec.consoleLog, '');

  const locks = await acquireDiskLocks(spec, { pid: process.pid, guest: spec.name, runDir: spec.runDir });
  if (!locks.ok) {
    throw problemsError(backend, spec, [
      { field: 'disks', message: `disk ${locks.disk.path} is in use by guest '${locks.owner.guest}' (pid ${locks.owner.pid})` },
    ]);
  }
  const cleanups: Cleanup[] = [locks.release, ...runFileCleanups(plan)];
  const child = plan.runner.spawn(plan.binary, plan.args);
  if (child.pid === undefined) {
    const status = await child.exited;
    await runCleanups(cleanups);
    const result = { exitCode: undefined, signal: undefined, stdout: '', stderr: child.output(), timedOut: false, error: status.error };
    throw new ProcessError(plan.binary, plan.args, result, { label: `${backend} (${plan.binary})`, exitCode: ExitCode.Unavailable });
  }
  await locks.setPid(child.pid);
  if (plan.writePidfile) await writeFile(runFilesOf(spec).pidfile, `${child.pid}\n`);

  const console = new LineConsole(`guest '${spec.name}' (${backend})`);
  const feed = plan.feedConsole ? plan.feedConsole(console, child) : followFile(spec.consoleLog, console);
  const vm = superviseVm(plan, child, child.pid, console, feed, cleanups, hooks);

  if (plan.afterSpawn) {
    try {
      await plan.afterSpawn(child);
    } catch (error) {
      await vm.stop({ hard: true });
      const output = child.output().trim();
      throw new FerryError(`${backend}: guest '${spec.name}' did not start: ${(error as Error).message}`, {
        cause: error,
        hint: output ? `${backend} said: ${output.split('\n').slice(-5).join('\n')}` : undefined,
      });
    }
  }
  return vm;
}

/**
 * A VM another process started, stopped through the same ladder. Its console is not followed (the
 * guest is past booting); its disk locks, which name its pid, are removed once it is gone.
 */
export function attachVm(control: HypervisorControl, recorded: RecordedVm, hooks: VmHooks = {}): RunningVm {
  const child = existingProcess(recorded.pid);
  const console = new LineConsole(`guest '${control.spec.name}' (${control.facts.name})`);
  const releaseLocks: Cleanup = async () => {
    for (const disk of control.spec.disks.filter((d) => !d.readOnly)) {
      const file = diskLockFile(disk.path);
      const owner = await readFile(file, 'utf8').then((text) => (JSON.parse(text) as { pid?: number }).pid, () => undefined);
      if (owner === recorded.pid) await unlink(file).catch(() => {});
    }
  };
  const noFeed: ConsoleFeed = { stop: async () => {} };
  return superviseVm(control, child, recorded.pid, console, noFeed, [releaseLocks, ...runFileCleanups(control)], hooks);
}

function runFileCleanups(control: HypervisorControl): Cleanup[] {
  const files = [runFilesOf(control.spec).pidfile, ...control.runFilesToRemove];
  return files.map((file) => () => unlink(file).catch(() => {}));
}

async function runCleanups(cleanups: Cleanup[]): Promise<void> {
  while (cleanups.length) await cleanups.pop()!().catch(() => {});
}

function superviseVm(
  control: HypervisorControl,
  child: ChildHandle,
  pid: number,
  console: LineConsole,
  feed: ConsoleFeed,
  cleanups: Cleanup[],
  hooks: VmHooks,
): RunningVm {
  const { spec, facts } = control;
  let hasExited = false;
  const exited: Promise<ExitStatus> = child.exited.then(async (status) => {
    hasExited = true;
    await feed.stop().catch(() => {});
    const output = child.output().trim();
    console.close(`the VM exited (${describeExit(status)})${output ? `: ${output.split('\n').slice(-5).join(' | ')}` : ''}`);
    control.close?.();
    await runCleanups(cleanups);
    return { code: status.code, signal: status.signal };
  });
  const waitExit = (ms: number): Promise<boolean> =>
    Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);

  let stopping: Promise<StopResult> | undefined;
  const stop = (options: StopOptions = {}): Promise<StopResult> => {
    stopping ??= (async (): Promise<StopResult> => {
      const started = performance.now();
      const how = hasExited
        ? 'already-exited'
        : await runStopLadder(
            {
              powerOffGuest: hooks.powerOffGuest,
              requestStop: () => control.requestStop(child),
              hardStop: control.hardStop && (() => control.hardStop!(child)),
              signal: (name) => void child.kill(name),
              waitExit,
            },
            options,
          );
      return { how, status: await exited, ms: Math.round(performance.now() - started) };
    })();
    return stopping;
  };

  return {
    backend: facts.name,
    spec,
    pid,
    console,
    waitForLine: (pattern, timeoutMs) => console.waitForLine(pattern, timeoutMs),
    ready: async (timeoutMs) => {
      const [line] = await console.waitForLine(READY_LINE, timeoutMs);
      return endpointFrom(facts.reach, spec, line);
    },
    stop,
    exited,
  };
}

/** The guest contract's readiness line, e.g. `FERRY-READY ip=192.168.64.5 boot_ms=1234`. */
export const READY_LINE = /\bFERRY-READY\b.*$/;

export function endpointFrom(reach: BackendFacts['reach'], spec: VmSpec, readyLine: string): GuestEndpoint {
  if (reach === 'forwarded-port') {
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
