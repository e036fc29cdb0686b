/**
 * The daemon as the service manager runs it: `ferry install --root` into a temp root (HOME
 * inside it) writes the systemd unit, the machines line and the ssh alias; the daemon is started
 * with exactly the unit's ExecStart and Environment (no systemd runs here: this plays its part, as
 * test/e2e/install-systemd.test.ts does), and after a crash it is started again the same way
 * after the unit's RestartSec (`Restart=always`).
 *
 * Builds go through what install wrote: the machines line (its host key, its client key) and the
 * alias config, with the line's protocol swapped to `ssh://` for the legacy protocol.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import { callDaemon } from '../../src/daemon/control-client.js';
import type { DaemonStatus } from '../../src/daemon/status.js';
import { parseUnit, userUnitLaunch } from '../../src/install/service.js';
import { MACHINES_MARKER } from '../../src/install/nix-wiring.js';
import { freePort } from '../../src/vm/free-port.js';
import { hypervisorsUsing, IMAGE_CACHE, ROOT, sleep } from './daemon.js';

export class ServiceDaemon {
  #child: ResultPromise | undefined;
  #output = '';
  /** Every daemon process this service ran, in order. */
  readonly pids: number[] = [];

  private constructor(
    readonly root: string,
    readonly home: string,
    readonly port: number,
    readonly paths: FerryPaths,
    readonly unit: ReturnType<typeof parseUnit>,
  ) {}

  /** Installs into a fresh temp root with `config(port)` as ferry.toml; the daemon is not started yet. */
  static async install(config: (port: number) => string): Promise<ServiceDaemon> {
    const root = await mkdtemp(path.join(tmpdir(), 'ferry-soak-'));
    const home = path.join(root, 'home/builder-user');
    const port = await freePort();
    mkdirSync(path.join(home, '.config/ferry'), { recursive: true });
    mkdirSync(path.join(root, 'etc/nix'), { recursive: true });
    mkdirSync(IMAGE_CACHE, { recursive: true });
    writeFileSync(path.join(home, '.config/ferry/ferry.toml'), config(port));
    const installed = await execa('node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), 'install', '--root', root, '--no-build', '--yes'], {
      cwd: ROOT,
      reject: false,
      env: { HOME: home, PATH: process.env.PATH, FERRY_CACHE_DIR: IMAGE_CACHE },
      extendEnv: false,
    });
    if (installed.exitCode !== 0) throw new Error(`ferry install failed:\n${installed.stderr}`);
    const unit = parseUnit(readFileSync(path.join(home, '.config/systemd/user/ferry.service'), 'utf8'));
    const paths = resolvePaths({ env: { ...unit.environment, HOME: home } });
    return new ServiceDaemon(root, home, port, paths, unit);
  }

  get configFile(): string {
    return this.paths.configFile;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** What the daemons printed (the last 200 kB). */
  output(): string {
    return this.#output;
  }

  /** Starts ExecStart with the unit's environment (plus HOME and USER, as systemd gives a user service) and waits until it answers with an image. */
  async start(timeoutMs = 600_000): Promise<DaemonStatus> {
    const { file, args, cwd, env } = userUnitLaunch(this.unit, { home: this.home, user: 'root' });
    const child = execa(file, args, { cwd, env, extendEnv: false, reject: false, all: true, buffer: false, forceKillAfterDelay: false });
    this.#child = child;
    this.pids.push(child.pid!);
    child.all?.on('data', (chunk: Buffer) => (this.#output = (this.#output + chunk.toString()).slice(-200_000)));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`the daemon exited (${child.exitCode}) before it answered:\n${this.#output.slice(-4000)}`);
      const status = await this.status().catch(() => undefined);
      if (status && (status.guest.image !== undefined || status.daemon.buildError !== undefined)) return status;
      if (Date.now() > deadline) throw new Error(`the daemon did not answer with an image within ${timeoutMs} ms:\n${this.#output.slice(-4000)}`);
      await sleep(250);
    }
  }

  /** SIGKILL, as a crash; then, after RestartSec, ExecStart again, as `Restart=always` does. */
  async crashAndRestart(): Promise<DaemonStatus> {
    this.signal('SIGKILL');
    await this.#child?.catch(() => {});
    await sleep(this.unit.restartSec * 1000);
    return this.start();
  }

  signal(name: NodeJS.Signals): void {
    if (this.#child?.pid) process.kill(this.#child.pid, name);
  }

  /** Boots the guest, as `ferry start` does. */
  startGuest(): Promise<DaemonStatus> {
    return callDaemon<DaemonStatus>(this.paths.controlSocket, 'POST', '/start', 180_000);
  }

  status(): Promise<DaemonStatus> {
    return callDaemon<DaemonStatus>(this.paths.controlSocket, 'GET', '/status', 5000);
  }

  /** The daemon's resident memory (KiB), from /proc. */
  rssKiB(): number {
    const pid = this.#child?.pid;
    const text = pid ? readFileSync(`/proc/${pid}/status`, 'utf8') : '';
    return Number(/^VmRSS:\s+(\d+)/m.exec(text)?.[1] ?? Number.NaN);
  }

  /** The machines line install wrote, for `proto` (`ssh` swaps the URI scheme, all else stays). */
  builders(proto: 'ssh-ng' | 'ssh'): string {
    const line = readFileSync(path.join(this.root, 'etc/nix/machines'), 'utf8')
      .split('\n')
      .find((l) => l.startsWith('ssh-ng://'));
    if (!line) throw new Error(`no ssh-ng line in the machines file install wrote (marker ${MACHINES_MARKER})`);
    return proto === 'ssh' ? line.replace(/^ssh-ng:\/\//, 'ssh://') : line;
  }

  /** The ssh_config alias install wrote (NIX_SSHOPTS -F). */
  get sshAlias(): string {
    return path.join(this.root, 'etc/ssh/ssh_config.d/ferry.conf');
  }

  /** The hypervisor processes using this root. */
  hypervisors(): Promise<number[]> {
    return hypervisorsUsing(this.root);
  }

  /** SIGTERM (the daemon powers the guest off), then whatever is left is killed; `keep` keeps the temp root. */
  async stop(options: { keep?: boolean } = {}): Promise<{ exitCode: number | undefined; leftBehind: number[] }> {
    let exitCode: number | undefined;
    if (this.#child && this.#child.exitCode === null) {
      this.#child.kill('SIGTERM');
      const timer = setTimeout(() => this.#child?.kill('SIGKILL'), 120_000);
      exitCode = (await this.#child).exitCode;
      clearTimeout(timer);
    }
    const leftBehind = await this.hypervisors();
    for (const pid of leftBehind) process.kill(pid, 'SIGKILL');
    if (!options.keep) await rm(this.root, { recursive: true, force: true });
    return { exitCode, leftBehind };
  }
}
