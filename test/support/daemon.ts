/**
 * A real ferry daemon for end-to-end tests: `ferry daemon` (from source, through tsx) in a temp
 * state dir with a free port, the shared image cache (~/.cache/ferry-test/ferry-cache; images are
 * content-addressed, so sharing is safe), its log collected, and helpers that drive it the way a
 * user does — the CLI, the control socket, and the host's real `nix-build` with the daemon as a
 * remote builder through the ssh_config alias the daemon writes.
 *
 * `stop()` sends SIGTERM (the daemon powers the guest off) and, whatever happened, kills any qemu
 * still using the temp dir, so nothing of a test keeps running.
 */
import { execa } from 'execa';

/** What the tests read of a finished command (execa's result, with string output). */
export interface Result {
  exitCode?: number;
  signal?: string;
  stdout: string;
  stderr: string;
  failed: boolean;
  timedOut: boolean;
}
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import { callDaemon } from '../../src/daemon/control-client.js';
import { BUILDER_ALIAS } from '../../src/daemon/ssh-alias.js';
import { freePort } from '../../src/vm/free-port.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const IMAGE_CACHE = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');

/** What `ferry status --json` answers (the parts the tests read). */
import type { DaemonStatus } from '../../src/daemon/status.js';

export type { DaemonStatus };

export interface ConfigOptions {
  maxJobs?: number | string;
  idleTimeout?: string;
  readyTimeout?: string;
  /** `[daemon] listen` (the daemon's default, 127.0.0.1, when absent). */
  listen?: '127.0.0.1' | '::1';
  /** Raw TOML appended at the end (e.g. `[[image.layers]]`). */
  extra?: string;
}

/**
 * The test config: the debian preset under tcg (KVM may misbehave on CI machines), a small
 * guest, no substituters in the guest (no network), and no bzip2 of build logs in the guest,
 * which under tcg is the slowest part of a build with a big log.
 */
export function configText(port: number, options: ConfigOptions = {}): string {
  const maxJobs = options.maxJobs === undefined ? '' : `max-jobs = ${typeof options.maxJobs === 'string' ? JSON.stringify(options.maxJobs) : options.maxJobs}\n`;
  return [
    '[guest]',
    'preset = "debian"',
    'cpus = 2',
    'memory = "1GiB"',
    'state-disk-size = "4GiB"',
    '',
    '[guest.nix]',
    maxJobs + 'extra-config = "substituters =\\ncompress-build-log = false"',
    '',
    '[vm]',
    'accel = "tcg"',
    '',
    '[daemon]',
    `port = ${port}`,
    ...(options.listen === undefined ? [] : [`listen = "${options.listen}"`]),
    `idle-timeout = "${options.idleTimeout ?? '5m'}"`,
    `ready-timeout = "${options.readyTimeout ?? '90s'}"`,
    '',
    options.extra ?? '',
  ].join('\n');
}

export interface BuildOptions {
  /** `ssh-ng` (nix-daemon --stdio) or `ssh` (nix-store --serve --write). */
  proto?: 'ssh-ng' | 'ssh';
  /** Where nix-build's stderr goes (a big log); otherwise it is kept in the result. */
  stderrFile?: string;
  timeoutMs?: number;
}

export interface BuildResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  ms: number;
  name: string;
  exprFile: string;
}

export class TestDaemon {
  readonly #child: ChildProcess;
  readonly #output: string[] = [];
  #exited: Promise<number | null>;

  private constructor(
    readonly work: string,
    readonly env: Record<string, string>,
    readonly paths: FerryPaths,
    readonly port: number,
    child: ChildProcess,
    /** The network namespace the daemon runs in (ip netns exec); its loopback is not the test's. */
    readonly netns?: string,
  ) {
    this.#child = child;
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => this.#output.push(chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => this.#output.push(chunk));
    this.#exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /**
   * Starts `ferry daemon` with `config(port)` and waits until its control socket answers and its
   * first image build has ended (an image, or the build's error, in its status) — the daemon
   * answers from its first second, long before a cold image is built. `answering` returns as
   * soon as the control socket answers, for tests of that first second. With `freshImages`, its
   * image cache is its own and empty but for the shared downloads (the base packages): its first
   * image is really built (the system disk written), not found cached.
   */
  static async start(
    config: (port: number) => string,
    options: { readyTimeoutMs?: number; freshImages?: boolean; env?: Record<string, string>; netns?: string; answering?: boolean } = {},
  ): Promise<TestDaemon> {
    const work = await mkdtemp(path.join(tmpdir(), 'ferry-daemon-'));
    await mkdir(path.join(IMAGE_CACHE, 'downloads'), { recursive: true });
    let cacheDir = IMAGE_CACHE;
    if (options.freshImages) {
      cacheDir = path.join(work, 'cache');
      await mkdir(cacheDir);
      await symlink(path.join(IMAGE_CACHE, 'downloads'), path.join(cacheDir, 'downloads'));
    }
    const env: Record<string, string> = {
      ...(process.env as Record<string, string>),
      FERRY_STATE_DIR: path.join(work, 'state'),
      FERRY_CACHE_DIR: cacheDir,
      FERRY_CONFIG: path.join(work, 'ferry.toml'),
      ...options.env,
    };
    const port = await freePort();
    await writeFile(env.FERRY_CONFIG, config(port));
    const [command, args] = inNetns(options.netns, 'node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), 'daemon', '--json-logs']);
    const child = spawn(command, args, {
      env,
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const daemon = new TestDaemon(work, env, resolvePaths({ env }), port, child, options.netns);
    const deadline = Date.now() + (options.readyTimeoutMs ?? 300_000);
    let exitCode: number | null | undefined;
    void daemon.#exited.then((code) => (exitCode = code));
    for (;;) {
      if (exitCode !== undefined) throw new Error(`ferry daemon exited (${exitCode}) before it was ready:\n${daemon.log()}`);
      try {
        const status = await daemon.status();
        if (options.answering || status.guest.image !== undefined || status.daemon.buildError !== undefined) return daemon;
      } catch {
        // not answering yet
      }
      if (Date.now() > deadline) {
        await daemon.stop();
        throw new Error(`ferry daemon did not answer on its control socket with its first image built in time:\n${daemon.log()}`);
      }
      await sleep(200);
    }
  }

  /** Everything the daemon printed (JSON log lines). */
  log(): string {
    return this.#output.join('');
  }

  /** The daemon's log lines, parsed. */
  logEntries(): Array<Record<string, unknown> & { msg?: string }> {
    return this.log()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  /**
   * Waits until a log line matches. The daemon's status can answer before the line written in the
   * same tick has come through its stdout pipe, so a check right after a status wait must poll.
   */
  async waitForLog(predicate: (entry: Record<string, unknown> & { msg?: string }) => boolean, timeoutMs: number, what: string): Promise<Record<string, unknown> & { msg?: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.logEntries().find(predicate);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for the log line: ${what}\nlog tail:\n${this.log().slice(-4000)}`);
      await sleep(100);
    }
  }

  get pid(): number {
    return this.#child.pid!;
  }

  status(): Promise<DaemonStatus> {
    return callDaemon<DaemonStatus>(this.paths.controlSocket, 'GET', '/status', 5000);
  }

  /** Polls the status until `predicate` holds. */
  async waitForStatus(predicate: (status: DaemonStatus) => boolean, timeoutMs: number, what: string): Promise<DaemonStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: DaemonStatus | undefined;
    for (;;) {
      last = await this.status();
      if (predicate(last)) return last;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; status:\n${JSON.stringify(last, null, 2)}\nlog tail:\n${this.log().slice(-4000)}`);
      await sleep(250);
    }
  }

  /** The ferry CLI from source with this daemon's directories. */
  ferry(args: string[], timeoutMs = 120_000): Promise<Result> {
    return execa(...inNetns(this.netns, 'node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), ...args]), { env: this.env, cwd: ROOT, reject: false, timeout: timeoutMs }) as Promise<Result>;
  }

  writeConfig(options: ConfigOptions): Promise<void> {
    return writeFile(this.env.FERRY_CONFIG, configText(this.port, options));
  }

  /** OpenSSH to the daemon's front through the alias it wrote, plus `extra` options. */
  ssh(args: string[], options: { timeoutMs?: number; extra?: string[] } = {}): Promise<Result> {
    return execa(...inNetns(this.netns, 'ssh', ['-F', this.paths.builderSshConfig, ...(options.extra ?? []), BUILDER_ALIAS, ...args]), {
      reject: false,
      timeout: options.timeoutMs ?? 120_000,
      stdin: 'ignore',
    });
  }

  /**
   * The host's real nix-build with the daemon as its only builder (`--max-jobs 0`): builds a
   * derivation named `label-<nonce>` (so it is really built) whose builder runs `script` with
   * /bin/sh in the guest and no PATH.
   */
  async nixBuild(label: string, script: string, options: BuildOptions = {}): Promise<BuildResult> {
    const name = `ferry-e2e-${label}-${randomUUID().slice(0, 8)}`;
    const exprFile = path.join(this.work, `${name}.nix`);
    await writeFile(exprFile, derivationExpr(name, script));
    return { ...(await this.nixBuildFile(exprFile, options)), name, exprFile };
  }

  /** The host's real nix-build of the expression in `exprFile`, with the daemon as its only builder. */
  async nixBuildFile(exprFile: string, options: BuildOptions & { systems?: string; maxJobs?: number } = {}): Promise<Omit<BuildResult, 'name' | 'exprFile'>> {
    const proto = options.proto ?? 'ssh-ng';
    const started = performance.now();
    const result = await execa(
      ...inNetns(this.netns, 'nix-build', [
        '--no-out-link',
        '--max-jobs', '0',
        '--option', 'substituters', '',
        '--builders', `${proto}://${BUILDER_ALIAS} ${options.systems ?? 'x86_64-linux'} ${this.paths.clientKey} ${options.maxJobs ?? 4}`,
        exprFile,
      ]),
      {
        env: { ...this.env, NIX_SSHOPTS: `-F ${this.paths.builderSshConfig}` },
        reject: false,
        timeout: options.timeoutMs ?? 180_000,
        stdin: 'ignore',
        stderr: options.stderrFile ? { file: options.stderrFile } : 'pipe',
      },
    );
    return {
      exitCode: result.exitCode,
      stdout: String(result.stdout ?? ''),
      stderr: options.stderrFile ? '' : String(result.stderr ?? ''),
      ms: Math.round(performance.now() - started),
    };
  }

  /** Stops the daemon (SIGTERM, then SIGKILL after `graceMs`) and removes its temp dir. */
  async stop(graceMs = 60_000): Promise<number | null> {
    let code: number | null = null;
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      this.#child.kill('SIGTERM');
      const timer = setTimeout(() => this.#child.kill('SIGKILL'), graceMs);
      code = await this.#exited;
      clearTimeout(timer);
    } else {
      code = this.#child.exitCode;
    }
    for (const pid of await hypervisorsUsing(this.work)) process.kill(pid, 'SIGKILL');
    // FERRY_E2E_KEEP=1 keeps the state dir (console log, daemon log) to look at after a failure.
    if (process.env.FERRY_E2E_KEEP) console.log(`kept ${this.work}`);
    else await rm(this.work, { recursive: true, force: true });
    return code;
  }
}

/** `command args` as run inside network namespace `netns` (`ip netns exec`, which execs: same pid), or as it is. */
function inNetns(netns: string | undefined, command: string, args: string[]): [string, string[]] {
  return netns ? ['ip', ['netns', 'exec', netns, command, ...args]] : [command, args];
}

/** A derivation whose builder is `/bin/sh -c script` (no `${` in scripts: Nix would interpolate it). */
export function derivationExpr(name: string, script: string): string {
  if (script.includes('${')) throw new Error('derivationExpr: the script must not contain "${"');
  return `derivation { name = ${JSON.stringify(name)}; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ${JSON.stringify(script)} ]; }\n`;
}

/** qemu processes whose command line mentions `dir`. */
export async function hypervisorsUsing(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('qemu-system') && cmdline.includes(dir)) found.push(Number(entry));
  }
  return found;
}

/** What a TCP connect to host:port comes to: 'connected' or the error code. */
export function connectOutcome(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
