/**
 * The one check of ferry on a real host, step by step as its user goes: ferry built, (the unit
 * tests,) `ferry image build`, `ferry install`, the service running the daemon, a real
 * `nix build` through ferry with each backend asked for, `ferry status --json`, `ferry doctor
 * --json`, `ferry uninstall --purge` — and then that nothing is left: every file and directory
 * ferry's layout names (install.ts/layout.ts, config/paths.ts) as it was before, no hypervisor
 * running, the service unknown to its manager.
 *
 * The macOS workflow (.github/workflows/macos.yml) runs it on GitHub's Macs, for real: launchd,
 * the host's multi-user Nix and its /etc/nix, the nixpkgs preset from the binary cache, vfkit and
 * qemu + hvf (taken from nixpkgs when not on PATH: vm/host-nix.ts). CI here runs it on its Linux
 * path (test/e2e/check-platform.test.ts): the same steps where the platform allows — everything
 * under a --root tree as the install e2e tests do, the systemd unit's ExecStart started the way
 * systemd starts it (no systemd runs here), the debian preset, qemu under tcg.
 *
 *   node --import tsx scripts/check-platform.ts [--backend vfkit --backend qemu] [--no-vm] [--unit] [--json]
 *
 * Exit 0 when every step passed; 1 at the first that failed, which is named, with what it saw.
 * Progress goes to stderr; `--json` prints the steps (name, ms, what was seen) on stdout.
 */
import { Command, Option } from 'commander';
import { execa, type ResultPromise } from 'execa';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Check } from '../src/install/doctor.js';
import { installLayout, type InstallLayout } from '../src/install/layout.js';
import { isLoadedCommand, parseUnit, userUnitLaunch } from '../src/install/service.js';
import type { DaemonStatus } from '../src/daemon/status.js';
import { nativeSystem, type BackendName } from '../src/vm/facts.js';
import { freePort } from '../src/vm/free-port.js';

const REPO = path.resolve(import.meta.dirname, '..');
const FERRY = path.join(REPO, 'bin', 'ferry');
/** The test suite's cache of fixtures and images (Linux path only): hard-linked in, so --purge removes only this run's links. */
const TEST_CACHE = path.join(os.homedir(), '.cache', 'ferry-test', 'ferry-cache');

/**
 * Unit tests that run Linux programs nixpkgs has for Linux only; the rest run on a Mac with the
 * tools the workflow takes from nixpkgs (e2fsprogs, cpio, xz, zstd, dash, ssh-audit).
 */
const LINUX_ONLY_UNIT_TESTS: Readonly<Record<string, string>> = {
  'test/unit/guest-files.test.ts': "runs the guest's scripts under busybox",
  'test/unit/initramfs.test.ts': "reads modules with kmod's modinfo",
};

interface Options {
  backend: BackendName[];
  vm: boolean;
  unit: boolean;
  json: boolean;
  allowFail: string[];
}

interface StepResult {
  name: string;
  ms: number;
  seen: string;
}

class StepFailed extends Error {}

/** Where this run installs, and how its service manager is played. */
interface Host {
  mac: boolean;
  /** `--root` for install, uninstall and doctor (Linux: a tree of its own; a Mac: the real system, none); the other commands find it through HOME. */
  rootArgs: string[];
  root: string;
  env: Record<string, string>;
  layout: InstallLayout;
  system: 'x86_64-linux' | 'aarch64-linux';
  /** What the config needs besides the backend (Linux: the debian preset, tcg, no substituters: no internet). */
  configFor(backend: BackendName | undefined): string;
  cleanup(): void;
}

const steps: StepResult[] = [];

async function step(name: string, run: () => Promise<string>): Promise<void> {
  process.stderr.write(`▶ ${name}\n`);
  const started = performance.now();
  try {
    const seen = await run();
    const ms = Math.round(performance.now() - started);
    steps.push({ name, ms, seen });
    process.stderr.write(`✓ ${name} (${(ms / 1000).toFixed(1)} s)${seen ? `: ${seen}` : ''}\n`);
  } catch (error) {
    throw new StepFailed(`${name}: ${(error as Error).message}`);
  }
}

function expectThat(condition: boolean, what: string): void {
  if (!condition) throw new Error(what);
}

async function ferry(host: Host, args: string[], allowExit: number[] = [0]): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const rooted = ['install', 'uninstall', 'doctor'].includes(args[0]) ? host.rootArgs : [];
  const result = await execa('node', [FERRY, ...args, ...rooted], { env: host.env, extendEnv: false, reject: false, timeout: 60 * 60_000, stdin: 'ignore' });
  const exitCode = result.exitCode ?? -1;
  if (!allowExit.includes(exitCode)) throw new Error(`ferry ${args.join(' ')} exited ${exitCode}:\n${result.stdout.slice(-3000)}\n${result.stderr.slice(-3000)}`);
  return { stdout: result.stdout, stderr: result.stderr, exitCode };
}

async function linuxHost(): Promise<Host> {
  // Under the test cache's directory, so the cache's images can be hard-linked in (one file system).
  mkdirSync(path.dirname(TEST_CACHE), { recursive: true });
  const root = mkdtempSync(path.join(path.dirname(TEST_CACHE), 'check-platform-'));
  const home = path.join(root, 'home/builder');
  mkdirSync(path.join(root, 'etc/nix'), { recursive: true });
  mkdirSync(home, { recursive: true });
  const env = { HOME: home, PATH: process.env.PATH ?? '/usr/bin:/bin', FERRY_CACHE_DIR: path.join(root, 'cache'), USER: os.userInfo().username };
  const port = await freePort();
  return {
    mac: false,
    rootArgs: ['--root', root],
    root,
    env,
    layout: installLayout({ platform: 'linux', system: false, root, homeDir: home, env }),
    system: 'x86_64-linux',
    configFor: (backend) =>
      `[guest]\npreset = "debian"\nmemory = "1GiB"\ncpus = 2\n\n[guest.nix]\nextra-config = "substituters ="\n\n[vm]\nbackend = "${backend ?? 'qemu'}"\naccel = "tcg"\n\n[daemon]\nport = ${port}\n`,
    cleanup: () => rmSync(root, { recursive: true, force: true, maxRetries: 3 }),
  };
}

function macHost(): Host {
  const home = os.homedir();
  const env = Object.fromEntries(Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  const system = nativeSystem({ platform: 'darwin', arch: process.arch })!;
  return {
    mac: true,
    rootArgs: [],
    root: '/',
    env,
    layout: installLayout({ platform: 'darwin', system: false, root: '/', homeDir: home, env }),
    system: system as Host['system'],
    // The nixpkgs preset (the Mac default) from the binary cache; qemu is asked for hvf, so no tcg fallback passes unseen.
    configFor: (backend) => `[guest]\npreset = "nixpkgs"\nsystem = "${system}"\n${backend ? `\n[vm]\nbackend = "${backend}"\n${backend === 'qemu' ? 'accel = "hvf"\n' : ''}` : ''}`,
    cleanup: () => {},
  };
}

/** Files up to this size are compared by content; larger ones (the state disk: 40 GiB, sparse) by size and mtime. */
const HASHED_BYTES = 64 * 2 ** 20;

/** Everything ferry's layout names, with the directories around the files it writes: path → content hash, link target or "dir". */
function snapshot(layout: InstallLayout): Map<string, string> {
  const { paths } = layout;
  const roots = [
    path.dirname(layout.machinesFile),
    path.dirname(layout.sshAlias),
    path.dirname(layout.serviceFile),
    path.dirname(paths.configFile),
    paths.stateDir,
    paths.cacheDir,
    paths.logDir,
  ];
  const seen = new Map<string, string>();
  const walk = (file: string) => {
    if (seen.has(file)) return;
    let stat;
    try {
      stat = lstatSync(file);
    } catch {
      return;
    }
    if (stat.isSymbolicLink()) seen.set(file, `-> ${readlinkSync(file)}`);
    else if (stat.isDirectory()) {
      seen.set(file, `dir ${(stat.mode & 0o7777).toString(8)}`);
      for (const name of readdirSync(file)) walk(path.join(file, name));
    } else if (stat.size > HASHED_BYTES) seen.set(file, `${(stat.mode & 0o7777).toString(8)} ${stat.size} bytes, mtime ${stat.mtimeMs}`);
    else seen.set(file, `${(stat.mode & 0o7777).toString(8)} ${createHash('sha256').update(readFileSync(file)).digest('hex')}`);
  };
  for (const root of roots) walk(root);
  return seen;
}

function differences(before: Map<string, string>, after: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [file, was] of before) if (after.get(file) !== was) out.push(`${file}: ${was} → ${after.get(file) ?? 'gone'}`);
  for (const [file, now] of after) if (!before.has(file)) out.push(`${file}: left behind (${now})`);
  return out;
}

/** Hypervisors whose command line names this install's state dir (qemu's and vfkit's disks are in it). */
async function hypervisorsOf(layout: InstallLayout): Promise<string[]> {
  const ps = await execa('ps', ['-A', '-o', 'pid=,command='], { reject: false });
  return ps.stdout.split('\n').filter((line) => line.includes(layout.paths.vmDir) && /qemu-system|vfkit|hyperkit/.test(line));
}

/** The user unit's ExecStart with its Environment, HOME and USER, in / — what `systemctl --user start` does (no systemd runs here). */
function startUnitAsSystemd(host: Host): ResultPromise {
  const unit = parseUnit(readFileSync(host.layout.serviceFile, 'utf8'));
  const { file, args, cwd, env } = userUnitLaunch(unit, { home: host.env.HOME!, user: host.env.USER! });
  return execa(file, args, { cwd, env, extendEnv: false, reject: false, stdio: 'ignore', forceKillAfterDelay: false });
}

async function waitForDaemon(host: Host, daemon: ResultPromise | undefined): Promise<DaemonStatus> {
  let last = '';
  for (let i = 0; i < 600; i++) {
    const status = await ferry(host, ['status', '--json']).catch((error: Error) => error);
    if (!(status instanceof Error)) return JSON.parse(status.stdout) as DaemonStatus;
    last = status.message;
    if (daemon && daemon.exitCode !== null) throw new Error(`the daemon exited ${daemon.exitCode}; its log: ${host.layout.paths.daemonLog}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`ferry status did not answer for 10 minutes: ${last}`);
}

/** A real `nix build` of a `system` derivation through the machines line and the alias install wrote; it must have run in ferry's guest. */
async function buildThroughFerry(host: Host, backend: BackendName): Promise<string> {
  const marker = `ferry-check-${backend}-${Date.now()}`;
  const expression = `derivation { name = "ferry-check"; system = "${host.system}"; builder = "/bin/sh"; args = [ "-c" "read h < /proc/sys/kernel/hostname; read r < /proc/sys/kernel/osrelease; echo ${marker} $h $r > $out" ]; }`;
  // --json: Nix 2.8 (Debian 12, here) has no --print-out-paths. A Mac's nix-daemon reads /etc/nix/machines itself; under --root it is named.
  const args = ['--extra-experimental-features', 'nix-command', 'build', '--no-link', '--json', '--impure', '--expr', expression];
  const env: Record<string, string> = {};
  if (!host.mac) {
    args.push('--max-jobs', '0', '--option', 'substituters', '', '--builders', `@${host.layout.machinesFile}`);
    env.NIX_SSHOPTS = `-F ${host.layout.sshAlias}`;
  }
  const started = performance.now();
  const build = await execa('nix', args, { reject: false, timeout: 30 * 60_000, env });
  expectThat(build.exitCode === 0, `nix build exited ${build.exitCode}:\n${build.stderr.slice(-4000)}`);
  const out = (JSON.parse(build.stdout) as Array<{ outputs: { out: string } }>)[0].outputs.out;
  const [seenMarker, hostname, release] = readFileSync(out, 'utf8').trim().split(' ');
  // Built in Nix's sandbox in the guest: Nix's own hostname there, and a Linux kernel that is not this host's.
  expectThat(seenMarker === marker && hostname === 'localhost', `${out} holds "${seenMarker} ${hostname}", expected "${marker} localhost"`);
  expectThat(/^\d+\.\d+\.\d+/.test(release) && release !== os.release(), `the build saw kernel ${release}, this host runs ${os.release()}`);
  return `${out} built in the guest (Linux ${release}) in ${Math.round(performance.now() - started)} ms`;
}

async function main(options: Options): Promise<void> {
  const host = process.platform === 'darwin' ? macHost() : await linuxHost();
  const backends = options.vm ? (options.backend.length ? options.backend : ['qemu' as const]) : [];
  let daemon: ResultPromise | undefined;
  try {
    await step('build ferry (tsc, as npm ci does)', async () => {
      await execa('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO });
      return path.join(REPO, 'dist');
    });
    if (options.unit) {
      await step('unit tests', async () => {
        const skipped = host.mac ? Object.keys(LINUX_ONLY_UNIT_TESTS) : [];
        await execa('npx', ['vitest', 'run', 'test/unit', ...skipped.flatMap((file) => ['--exclude', file])], { cwd: REPO, stdout: 'inherit', stderr: 'inherit' });
        return skipped.length ? `passed; not run here: ${skipped.map((file) => `${file} (${LINUX_ONLY_UNIT_TESTS[file]})`).join(', ')}` : 'passed';
      });
    }

    const before = snapshot(host.layout);
    let installed = 0;
    const configFile = host.layout.paths.configFile;
    const configDirExisted = existsSync(path.dirname(configFile));
    expectThat(!existsSync(configFile), `${configFile} exists: this check installs and uninstalls ferry, run it where ferry is not configured`);
    mkdirSync(path.dirname(configFile), { recursive: true });
    writeFileSync(configFile, host.configFor(backends[0]));
    if (!host.mac && existsSync(TEST_CACHE)) await execa('cp', ['-al', TEST_CACHE, host.layout.paths.cacheDir]);

    await step(`ferry image build (${host.mac ? 'nixpkgs' : 'debian'} preset, ${host.system})`, async () => {
      const manifest = JSON.parse((await ferry(host, ['image', 'build', '--json'])).stdout) as { id: string; kernel: { path: string }; systemDisk: { path: string } };
      for (const file of [manifest.kernel.path, manifest.systemDisk.path]) expectThat(existsSync(file), `the manifest names ${file}, which does not exist`);
      return `image ${manifest.id}`;
    });

    await step('ferry install', async () => {
      const { stdout } = await ferry(host, ['install', '--yes']);
      expectThat(readFileSync(host.layout.machinesFile, 'utf8').includes('ssh-ng://ferry-builder'), `no ferry line in ${host.layout.machinesFile}`);
      installed = snapshot(host.layout).size;
      return stdout.split('\n').filter((line) => /launchctl|systemctl/.test(line)).join('; ');
    });

    await step(host.mac ? 'launchd runs the agent' : 'the unit\'s ExecStart runs the daemon, as systemd does', async () => {
      if (host.mac) {
        const probe = isLoadedCommand('launchd', false, process.getuid!());
        const print = await execa(probe.file, probe.args, { reject: false });
        expectThat(print.exitCode === 0, `${probe.file} ${probe.args.join(' ')} exited ${print.exitCode}: ${print.stderr}`);
      } else daemon = startUnitAsSystemd(host);
      const status = await waitForDaemon(host, daemon);
      return `daemon pid ${status.daemon.pid} on ${status.daemon.listen}`;
    });

    for (const [i, backend] of backends.entries()) {
      if (i > 0) {
        await step(`switch to ${backend}: ferry stop, ferry.toml, ferry rebuild`, async () => {
          await ferry(host, ['stop']);
          writeFileSync(configFile, host.configFor(backend));
          const answer = JSON.parse((await ferry(host, ['rebuild', '--json'])).stdout) as { result: { outcome: string; error?: string } };
          expectThat(!answer.result.error, `rebuild: ${answer.result.error}`);
          return answer.result.outcome;
        });
      }
      await step(`nix build of a ${host.system} derivation through ferry (${backend})`, () => buildThroughFerry(host, backend));
      await step(`ferry status --json (${backend})`, async () => {
        let status = JSON.parse((await ferry(host, ['status', '--json'])).stdout) as DaemonStatus;
        // The session is counted when it ends, which may trail nix build's exit a little.
        for (let tries = 0; tries < 20 && status.sessions.total === 0; tries++) {
          await new Promise((r) => setTimeout(r, 500));
          status = JSON.parse((await ferry(host, ['status', '--json'])).stdout) as DaemonStatus;
        }
        expectThat(status.guest.state === 'running' && status.guest.backend === backend, `guest ${status.guest.state} with ${status.guest.backend}, expected running with ${backend}`);
        expectThat(status.sessions.total >= 1, 'the daemon counted no session');
        return `guest ${status.guest.state} (${status.guest.backend}, ready in ${status.guest.readyMs} ms), ${status.sessions.total} session(s)`;
      });
    }

    await step('ferry doctor --json', async () => {
      const { stdout } = await ferry(host, ['doctor', '--json'], [0, 1]);
      const { checks } = JSON.parse(stdout) as { ok: boolean; checks: Check[] };
      const failed = checks.filter((check) => check.status === 'fail' && !options.allowFail.includes(check.name));
      process.stderr.write(checks.map((check) => `    ${check.status} ${check.name}: ${check.detail}\n`).join(''));
      expectThat(failed.length === 0, `failed: ${failed.map((check) => `${check.name} (${check.detail})`).join('; ')}`);
      return checks.find((check) => check.name === 'backend')?.detail ?? '';
    });

    await step('ferry uninstall --purge', async () => {
      if (daemon) {
        // `systemctl --user disable --now`, which uninstall records under --root: systemd's stop is a SIGTERM.
        daemon.kill('SIGTERM');
        await daemon;
      }
      const { stdout } = await ferry(host, ['uninstall', '--purge', '--yes']);
      return stdout.split('\n').filter((line) => /launchctl|systemctl/.test(line)).join('; ');
    });

    await step('nothing left behind', async () => {
      rmSync(configFile);
      if (!configDirExisted) rmSync(path.dirname(configFile), { recursive: true });
      const left = differences(before, snapshot(host.layout));
      expectThat(left.length === 0, `differs from before install:\n  ${left.join('\n  ')}`);
      const running = await hypervisorsOf(host.layout);
      expectThat(running.length === 0, `still running: ${running.join('; ')}`);
      if (host.mac) {
        const probe = isLoadedCommand('launchd', false, process.getuid!());
        expectThat((await execa(probe.file, probe.args, { reject: false })).exitCode !== 0, `${probe.args.join(' ')}: the agent is still loaded`);
      }
      return `${installed} paths after install, now the ${before.size} of before, unchanged; no hypervisor${host.mac ? '; launchd knows no agent' : ''}`;
    });
  } finally {
    // A step failed with the daemon still running: it goes first, or it writes into what cleanup removes.
    if (daemon && daemon.exitCode === null) {
      daemon.kill('SIGTERM');
      await daemon;
    }
    host.cleanup();
  }
}

const program = new Command('check-platform')
  .description("install, build through, check and uninstall ferry on this host, as its user does (the macOS workflow's steps; Linux: under a --root tree)")
  .addOption(new Option('--backend <name...>', 'build through each of these backends in turn (default: qemu)').choices(['qemu', 'vfkit', 'hyperkit']).default([]))
  .option('--no-vm', 'boot no guest (a host that starts no VM): image build, install, status, doctor, uninstall only')
  .option('--unit', 'run the unit tests first')
  .option('--allow-fail <check...>', "doctor checks that may fail here (e.g. accelerator on a VM that offers none)", [])
  .option('--json', 'print the steps as JSON on stdout')
  .addHelpText('after', '\nExit codes: 0 every step passed, 1 a step failed (named, with what it saw).');

const options = program.parse().opts<Options>();
try {
  await main(options);
  if (options.json) process.stdout.write(`${JSON.stringify({ ok: true, steps }, null, 2)}\n`);
  process.stderr.write(`all ${steps.length} steps passed\n`);
} catch (error) {
  const message = error instanceof StepFailed ? error.message : (error as Error).stack ?? String(error);
  if (options.json) process.stdout.write(`${JSON.stringify({ ok: false, steps, failed: message }, null, 2)}\n`);
  process.stderr.write(`✗ ${message}\n`);
  process.exitCode = 1;
}
