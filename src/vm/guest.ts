/**
 * The guest: one built image booted as a VM — the spec (kernel, initrd, command line with the
 * per-boot clock and network mode, system disk read-only, state disk read-write, ssh port), the
 * wait for FERRY-READY, a record of the running guest in the state dir, and the clean way down
 * (the root control command `poweroff` over ssh, then QMP, then kill).
 *
 * A record on disk, not a process in memory, says which guest runs: `ferry up` may return while
 * qemu keeps running, and `ferry down` is another process.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { FerryConfig } from '../config/types.js';
import type { FerryPaths } from '../config/paths.js';
import { writeFileAtomic } from '../atomic-file.js';
import { ExitCode, FerryError } from '../errors.js';
import type { ImageManifest } from '../image/build.js';
import type { ExitStatus, GuestEndpoint, RunningVm, VmBackend, VmSpec } from './backend.js';
import { createQemuBackend } from './qemu.js';
import { QmpClient } from './qmp.js';
import { isProcessAlive, readDiskLock, runFiles } from './run-files.js';
import { createExecaRunner, type ChildHandle, type Runner } from '../process/runner.js';
import { freePort } from './free-port.js';
import { selectBackend } from './index.js';

/** The guest's name in pidfiles and sockets; one guest per state dir. */
export const GUEST_NAME = 'ferry';
/** ssh_config host names: the builder, and root's forced control command. */
export const SSH_HOST = 'ferry-guest';
export const SSH_CONTROL_HOST = 'ferry-guest-control';

/** Files of the running guest, beside the VM's run files in the vm dir. */
export const guestFilesOf = (paths: FerryPaths) => ({
  record: join(paths.vmDir, 'guest.json'),
  knownHosts: join(paths.vmDir, 'known_hosts'),
  /** qemu's own stdout and stderr when it runs detached (its errors, e.g. a taken port). */
  hypervisorLog: join(paths.logDir, 'hypervisor.log'),
});

export interface GuestRecord {
  name: string;
  backend: string;
  pid: number;
  sshHost: string;
  sshPort: number;
  imageId: string;
  manifestPath: string;
  runDir: string;
  stateDisk: string;
  startedAt: string;
  readyLine: string;
  /** ms from starting the hypervisor to FERRY-READY. */
  readyMs: number;
}

export interface GuestSpecInput {
  manifest: ImageManifest;
  config: FerryConfig;
  paths: FerryPaths;
  sshPort?: number;
  net: 'user' | 'dhcp';
  /** Seconds since the epoch, for the guest's clock (it has no RTC to trust). */
  now?: number;
}

export function guestCmdline(manifest: ImageManifest, config: FerryConfig, net: 'user' | 'dhcp', now: number): string {
  const parts = [manifest.cmdline, `ferry.time=${now}`, `ferry.net=${net}`];
  if (config.vm.kernelCmdlineExtra.trim()) parts.push(config.vm.kernelCmdlineExtra.trim());
  return parts.join(' ');
}

export function guestVmSpec(input: GuestSpecInput): VmSpec {
  const { manifest, config, paths } = input;
  return {
    name: GUEST_NAME,
    system: config.guest.system,
    cpus: config.guest.cpus,
    memoryBytes: config.guest.memoryBytes,
    kernel: manifest.kernel.path,
    initrd: manifest.initrd.path,
    cmdline: guestCmdline(manifest, config, input.net, input.now ?? Math.floor(Date.now() / 1000)),
    disks: [
      { path: manifest.systemDisk.path, readOnly: true },
      { path: paths.stateDisk, readOnly: false },
    ],
    sshPortOnHost: input.net === 'user' ? input.sshPort : undefined,
    // vfkit shares Rosetta with the guest (virtiofs tag `rosetta`); stage 2 registers it with binfmt_misc.
    rosetta: config.guest.interpreter === 'rosetta',
    consoleLog: paths.consoleLog,
    runDir: paths.vmDir,
  };
}

/**
 * The real runner, except that the hypervisor is started in its own session with its output in
 * a file, so it keeps running after ferry exits (`ferry up` without --foreground).
 */
export function createDetachedRunner(outputFile: string): Runner {
  const base = createExecaRunner();
  return {
    ...base,
    spawn(file, args, options = {}): ChildHandle {
      const fd = openSync(outputFile, 'w');
      const child = spawn(file, [...args], { detached: true, stdio: ['ignore', fd, fd], env: options.env ?? process.env });
      closeSync(fd);
      const exited = new Promise<ExitStatus & { error?: string }>((resolve) => {
        child.once('error', (error) => resolve({ code: null, signal: null, error: error.message }));
        child.once('exit', (code, signal) => resolve({ code, signal }));
      });
      child.unref();
      return {
        pid: child.pid,
        exited,
        kill: (signal = 'SIGTERM') => child.kill(signal),
        output: () => {
          try {
            return readFileSync(outputFile, 'utf8').slice(-8192);
          } catch {
            return '';
          }
        },
      };
    },
  };
}

export interface BootOptions {
  manifest: ImageManifest;
  config: FerryConfig;
  paths: FerryPaths;
  /** Keep the hypervisor running after this process exits. */
  detached: boolean;
  readyTimeoutMs?: number;
  onConsoleLine?: (line: string) => void;
  /** Tests: a backend to use instead of the configured one, or a runner to find and start it with. */
  backend?: VmBackend;
  runner?: Runner;
}

export interface BootedGuest {
  vm: RunningVm;
  endpoint: GuestEndpoint;
  record: GuestRecord;
}

const FAILED_LINE = /\bFERRY-FAILED\b.*$/;

export async function chooseBackend(config: FerryConfig, runner?: Runner): Promise<VmBackend> {
  if (config.vm.backend === 'qemu' || config.vm.backend === 'auto') {
    const backend = await selectBackend(config.vm.backend, { system: config.guest.system, runner });
    // `accel = "tcg"` in the config: no KVM probe, no KVM (a machine where KVM misbehaves).
    if (backend.name === 'qemu' && config.vm.accel === 'tcg') return createQemuBackend({ runner, kvmDevice: '/nonexistent/kvm-disabled-by-config' });
    return backend;
  }
  return selectBackend(config.vm.backend, { system: config.guest.system, runner });
}

/** Boots `manifest`, waits for FERRY-READY, records the guest. On any failure nothing is left running. */
export async function bootGuest(options: BootOptions): Promise<BootedGuest> {
  const { manifest, config, paths } = options;
  const files = guestFilesOf(paths);
  await mkdir(paths.vmDir, { recursive: true, mode: 0o700 });
  await mkdir(paths.logDir, { recursive: true });
  const runner = options.runner ?? (options.detached ? createDetachedRunner(files.hypervisorLog) : undefined);
  const backend = options.backend ?? (await chooseBackend(config, runner));
  const net = backend.capabilities.userNetworkingPortForward ? 'user' : 'dhcp';
  const spec = guestVmSpec({ manifest, config, paths, net, sshPort: net === 'user' ? await freePort() : undefined });

  const started = performance.now();
  const vm = await backend.start(spec);
  const unsubscribe = options.onConsoleLine ? vm.console.onLine(options.onConsoleLine) : undefined;
  let endpoint: GuestEndpoint;
  try {
    const timeout = options.readyTimeoutMs ?? config.daemon.readyTimeoutMs;
    endpoint = await Promise.race([
      vm.ready(timeout),
      vm.waitForLine(FAILED_LINE, timeout + 1000).then(([line]) => {
        throw new FerryError(`the guest failed to boot: ${line}`);
      }),
    ]);
  } catch (error) {
    unsubscribe?.();
    await vm.stop({ hard: true });
    const tail = vm.console.history().slice(-15).join('\n');
    throw new FerryError(`guest '${spec.name}' did not become ready: ${(error as Error).message}`, {
      cause: error,
      hint: tail ? `the last console lines (${spec.consoleLog}):\n${tail}` : `see ${spec.consoleLog}`,
    });
  }
  unsubscribe?.();
  const record: GuestRecord = {
    name: spec.name,
    backend: backend.name,
    pid: vm.pid,
    sshHost: endpoint.host,
    sshPort: endpoint.port,
    imageId: manifest.id,
    manifestPath: manifest.manifestPath,
    runDir: spec.runDir,
    stateDisk: paths.stateDisk,
    startedAt: new Date().toISOString(),
    readyLine: endpoint.readyLine,
    readyMs: Math.round(performance.now() - started),
  };
  await writeSshConfig(paths, record);
  await writeFileAtomic(files.record, `${JSON.stringify(record, null, 2)}\n`, 0o600);
  return { vm, endpoint, record };
}

/** The running guest, from its record; a record whose process is gone is removed. */
export async function runningGuest(paths: FerryPaths): Promise<GuestRecord | undefined> {
  const file = guestFilesOf(paths).record;
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const record = JSON.parse(text) as GuestRecord;
  if (isProcessAlive(record.pid) && (await pidIsHypervisor(record.pid))) return record;
  await unlink(file).catch(() => {});
  return undefined;
}

/** A pid can be reused after a reboot; on Linux check it is still a hypervisor process. */
async function pidIsHypervisor(pid: number): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined);
  return cmdline === undefined || /qemu|hyperkit|vfkit/.test(cmdline);
}

/**
 * OpenSSH client config for `ferry ssh`/`ferry exec` and for the control command. The guest's
 * host key is pinned under an alias, so the port may change from boot to boot.
 */
export function sshConfigText(paths: FerryPaths, record: Pick<GuestRecord, 'sshHost' | 'sshPort'>): string {
  const files = guestFilesOf(paths);
  const common = [
    `  HostName ${record.sshHost}`,
    `  Port ${record.sshPort}`,
    `  IdentityFile ${paths.guestClientKey}`,
    '  IdentitiesOnly yes',
    `  UserKnownHostsFile ${files.knownHosts}`,
    `  HostKeyAlias ${SSH_HOST}`,
    '  StrictHostKeyChecking yes',
    '  GlobalKnownHostsFile /dev/null',
    '  BatchMode yes',
    '  ConnectTimeout 10',
    '  LogLevel ERROR',
  ];
  return [
    '# generated by ferry: the running guest (rewritten at every boot)',
    `Host ${SSH_HOST}`,
    '  User builder',
    ...common,
    '',
    '# root may only run the control command (poweroff, settime, time)',
    `Host ${SSH_CONTROL_HOST}`,
    '  User root',
    ...common,
    '',
  ].join('\n');
}

export async function writeSshConfig(paths: FerryPaths, record: Pick<GuestRecord, 'sshHost' | 'sshPort'>): Promise<void> {
  const hostKey = (await readFile(`${paths.guestHostKey}.pub`, 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ');
  await writeFileAtomic(guestFilesOf(paths).knownHosts, `${SSH_HOST} ${hostKey}\n`, 0o600);
  await writeFileAtomic(paths.sshConfig, sshConfigText(paths, record), 0o600);
}

/** argv for OpenSSH to run `command` (words, quoted for the remote shell) as the builder. */
export function sshArgv(paths: FerryPaths, command: readonly string[], options: { host?: string; tty?: boolean } = {}): string[] {
  const argv = ['-F', paths.sshConfig];
  if (options.tty) argv.push('-t');
  argv.push(options.host ?? SSH_HOST);
  if (command.length) argv.push('--', command.map(shellQuote).join(' '));
  return argv;
}

/** POSIX shell single-quoting, so the remote shell sees exactly these words. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

export interface StopGuestOptions {
  hard?: boolean;
  /** How long the guest gets to power off after being asked. */
  timeoutMs?: number;
}

export interface StopGuestResult {
  how: 'not-running' | 'clean' | 'qmp-powerdown' | 'quit' | 'killed';
  ms: number;
}

/**
 * Stops the recorded guest from any process: ask the guest (root's control command over ssh),
 * wait; ask through QMP (powerdown, then quit), wait; SIGTERM; SIGKILL. Removes its run files.
 */
export async function stopGuest(paths: FerryPaths, options: StopGuestOptions = {}): Promise<StopGuestResult> {
  const started = performance.now();
  const record = await runningGuest(paths);
  const done = async (how: StopGuestResult['how']): Promise<StopGuestResult> => {
    await removeRunFiles(paths);
    return { how, ms: Math.round(performance.now() - started) };
  };
  if (!record) return done('not-running');
  const finish = async (how: StopGuestResult['how']): Promise<StopGuestResult> => {
    // The lock names the hypervisor's pid, which may still be a zombie for a moment: drop it by owner.
    const lock = runFiles.diskLock({ path: record.stateDisk, readOnly: false });
    const owner = await readFile(lock, 'utf8').then((t) => (JSON.parse(t) as { pid: number }).pid, () => undefined);
    if (owner === record.pid) await unlink(lock).catch(() => {});
    return done(how);
  };
  const { pid } = record;
  const timeoutMs = options.timeoutMs ?? 30_000;
  if (!options.hard) {
    const asked = await execa('ssh', sshArgv(paths, ['poweroff'], { host: SSH_CONTROL_HOST }), { reject: false, stdin: 'ignore', timeout: 15_000 });
    // A dropped connection (255) may still mean the guest is going down: give it a moment.
    if (await waitForExit(pid, asked.exitCode === 0 ? timeoutMs : 5000)) return finish('clean');
    const qmpSocket = join(record.runDir, `${record.name}.qmp`);
    const qmp = await QmpClient.connect(qmpSocket, 3000).catch(() => undefined);
    if (qmp) {
      try {
        await qmp.execute('system_powerdown').catch(() => {});
        if (await waitForExit(pid, Math.min(timeoutMs, 10_000))) return finish('qmp-powerdown');
        await Promise.race([qmp.execute('quit').catch(() => {}), sleep(1000)]);
        if (await waitForExit(pid, 3000)) return finish('quit');
      } finally {
        qmp.close();
      }
    }
    signal(pid, 'SIGTERM');
    if (await waitForExit(pid, 3000)) return finish('quit');
  }
  signal(pid, 'SIGKILL');
  if (!(await waitForExit(pid, 10_000))) throw new FerryError(`guest process ${pid} did not exit after SIGKILL`);
  return finish('killed');
}

async function removeRunFiles(paths: FerryPaths): Promise<void> {
  const files = guestFilesOf(paths);
  const spec = { name: GUEST_NAME, runDir: paths.vmDir } as VmSpec;
  await unlink(files.record).catch(() => {});
  await unlink(runFiles.pidfile(spec)).catch(() => {});
  await unlink(runFiles.qmpSocket(spec)).catch(() => {});
  // Removes the lock only if its owner is gone.
  await readDiskLock({ path: paths.stateDisk, readOnly: false });
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isProcessAlive(pid) || (await isZombie(pid))) return true;
    await sleep(100);
  }
  return !isProcessAlive(pid);
}

/** A child of this very process that exited but was not reaped yet still answers kill(0). */
async function isZombie(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat !== undefined && /^\d+ \(.*\) Z/.test(stat);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function requireRunning(record: GuestRecord | undefined): GuestRecord {
  if (!record) throw new FerryError('the guest is not running', { exitCode: ExitCode.Unavailable, hint: 'start it with `ferry up`' });
  return record;
}
