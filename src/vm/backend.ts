/**
 * The one interface every VM backend (qemu, hyperkit, vfkit) implements. Code outside a backend
 * reads what a backend is and can do from its `facts` (facts.ts), never from its name (the
 * pattern of Lima's driver interface).
 */
import type { GuestSystem } from '../config/types.js';
import type { ExitStatus } from '../process/runner.js';
import type { ConsoleStream } from './console.js';
import type { BackendFacts } from './facts.js';

export type { ExitStatus, GuestSystem };

export interface VmDisk {
  /** A raw disk image on the host. */
  path: string;
  readOnly: boolean;
}

export interface VmSpec {
  /** Names the guest in pidfiles, sockets and messages; [A-Za-z0-9._-] only. */
  name: string;
  system: GuestSystem;
  cpus: number;
  memoryBytes: number;
  kernel: string;
  initrd: string;
  /**
   * The image's and this boot's kernel arguments. The backend puts its own first (`console=` for
   * the console it logs) when it boots the guest: see `bootCmdline`.
   */
  cmdline: string;
  /** In order: the first is vda, the second vdb, … */
  disks: VmDisk[];
  /** qemu user networking only: host port on 127.0.0.1 forwarded to the guest's port 22. */
  sshPortOnHost?: number;
  /** Everything the guest writes to its console is appended here. */
  consoleLog: string;
  /** Sockets, pidfiles and other per-run files live here. */
  runDir: string;
  /** vfkit only: share Apple's Rosetta with the guest to run x86_64 binaries. */
  rosetta?: boolean;
}

/** One thing wrong with a spec, naming the field (or file) and what was expected. */
export interface SpecProblem {
  field: string;
  message: string;
  hint?: string;
}


export interface StopOptions {
  /** Skip asking the guest; kill the hypervisor straight away. */
  hard?: boolean;
  /** How long the guest gets to power off after each polite request, before the next step. Default 30 s. */
  timeoutMs?: number;
}

/**
 * How a stop ended, by the step of the ladder that did it: the guest powered off when its control
 * command asked (`guest`) or when the backend asked (`backend`: QMP system_powerdown, vfkit's
 * REST `Stop`, hyperkit's ACPI power button) — both clean for the state disk; the hypervisor ended
 * without the guest (`hard-stop`: QMP quit, vfkit's `HardStop`), by SIGTERM (`terminated`) or
 * SIGKILL (`killed`); or it had already exited.
 */
export type StopHow = 'guest' | 'backend' | 'hard-stop' | 'terminated' | 'killed' | 'already-exited';

export interface StopResult {
  how: StopHow;
  status: ExitStatus;
  /** How long the stop took. */
  ms: number;
}

/** What the layer above a backend lends the VM it starts (ferry's guest: its control command). */
export interface VmHooks {
  /** Asks the guest itself to power off (the first step of every stop); rejects if it could not ask. */
  powerOffGuest?: () => Promise<void>;
}

/** A hypervisor started by another process (`ferry up` then `ferry down`), as its record names it. */
export interface RecordedVm {
  spec: VmSpec;
  pid: number;
}

export interface GuestEndpoint {
  host: string;
  port: number;
  /** The whole FERRY-READY line, for the boot time and anything else the guest reports. */
  readyLine: string;
}

export interface RunningVm {
  readonly backend: BackendFacts['name'];
  readonly spec: VmSpec;
  readonly pid: number;
  /** Console lines as the guest writes them, from the start of this boot. */
  readonly console: ConsoleStream;
  /**
   * Waits for the guest's `FERRY-READY` console line and returns where its sshd is: the forwarded
   * port on 127.0.0.1 (qemu user networking) or the `ip=` the guest announced (NAT backends).
   */
  ready(timeoutMs: number): Promise<GuestEndpoint>;
  /** Resolves with the first console line matching `pattern`; rejects on timeout or VM exit. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /**
   * The one stop ladder: the guest's own power-off (hooks.powerOffGuest), the backend's stop
   * (facts.stop), its hard stop, SIGTERM, SIGKILL — each with its timeout. Resolves once the
   * process is gone and its run files are removed; a second call joins the first.
   */
  stop(options?: StopOptions): Promise<StopResult>;
  /** Resolves when the hypervisor process exits, whoever ended it. */
  readonly exited: Promise<ExitStatus>;
}

export interface VmBackend {
  readonly facts: BackendFacts;
  /** Every problem with `spec` on this host (empty when it can start); removes stale run files. */
  validate(spec: VmSpec): Promise<SpecProblem[]>;
  /** Validates, then starts the VM. Throws FerryError listing the problems; nothing is left running. */
  start(spec: VmSpec, hooks?: VmHooks): Promise<RunningVm>;
  /** Takes charge of a VM another process started, to stop it with the same ladder. */
  attach(recorded: RecordedVm, hooks?: VmHooks): RunningVm;
}

/** The command line the guest boots with: the backend's `console=` first, then the spec's arguments. */
export function bootCmdline(facts: BackendFacts, spec: Pick<VmSpec, 'system' | 'cmdline'>): string {
  return `console=${facts.console[spec.system]} ${spec.cmdline}`.trim();
}
