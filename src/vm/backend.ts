/**
 * The one interface every VM backend (qemu, hyperkit, vfkit) implements. The daemon branches on
 * `capabilities` — what a backend can do — never on its name (the pattern of Lima's driver
 * interface).
 */
import type { ExitStatus } from '../process/runner.js';
import type { ConsoleStream } from './console.js';

export type { ExitStatus };

export type GuestSystem = 'x86_64-linux' | 'aarch64-linux';

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

export interface BackendCapabilities {
  /** The host reaches the guest's sshd through a forwarded port on 127.0.0.1 (qemu -netdev user). */
  userNetworkingPortForward: boolean;
  /** The guest gets its own address on a host NAT network and announces it on the console. */
  natNetworking: boolean;
  rosetta: boolean;
  /** Whether a disk can be attached read-only by the hypervisor itself (else only the guest's mount). */
  readOnlyDisks: boolean;
  /** Guest architectures this backend can run on this host. */
  systems: GuestSystem[];
  /** Hardware or software accelerators the backend may use, best first. */
  accelerators: string[];
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
  /** How long to wait for the guest to power off after asking, before killing it. Default 30 s. */
  timeoutMs?: number;
}

export interface StopResult {
  /** How the VM ended: 'clean' when the guest powered off after being asked. */
  how: 'clean' | 'quit' | 'killed' | 'already-exited';
  status: ExitStatus;
}

export interface GuestEndpoint {
  host: string;
  port: number;
  /** The whole FERRY-READY line, for the boot time and anything else the guest reports. */
  readyLine: string;
}

export interface RunningVm {
  readonly backend: string;
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
  /** Ask, wait, then kill. Resolves once the process is gone and its run files are removed. */
  stop(options?: StopOptions): Promise<StopResult>;
  /** Resolves when the hypervisor process exits, whoever ended it. */
  readonly exited: Promise<ExitStatus>;
}

export interface VmBackend {
  readonly name: 'qemu' | 'hyperkit' | 'vfkit';
  readonly capabilities: BackendCapabilities;
  /** The guest kernel's name for the console this backend logs (`console=` on the cmdline). */
  consoleDevice(system: GuestSystem): string;
  /** Every problem with `spec` on this host (empty when it can start); removes stale run files. */
  validate(spec: VmSpec): Promise<SpecProblem[]>;
  /** Validates, then starts the VM. Throws FerryError listing the problems; nothing is left running. */
  start(spec: VmSpec): Promise<RunningVm>;
}
