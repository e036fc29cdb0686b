/**
 * The whole guest, for real: the debian preset built by `ferry image build`, booted by `ferry up`
 * under qemu (tcg here), reached by the real OpenSSH client as `builder`, a real nix-build in the
 * guest, `ferry down` leaving an ext4 state disk that `e2fsck -fn` finds clean, a SIGKILL of qemu
 * in the middle of writes recovered by the journal, a store path surviving an image rebuild with
 * a changed config (and a grown state disk), and the errors that must start nothing.
 *
 * Downloads and images go to one shared cache (~/.cache/ferry-test/ferry-cache; images are
 * content-addressed, so sharing is safe); keys, state disk and run files to a temp dir.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { FerryError } from '../../src/errors.js';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { bootGuest } from '../../src/vm/instance/boot.js';
import { runningGuest, type GuestRecord } from '../../src/vm/instance/record.js';
import { isProcessAlive } from '../../src/process/existing.js';
import { createExecaRunner } from '../../src/process/runner.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CACHE = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');
const GiB = 2 ** 30;

let work: string;
let env: Record<string, string>;
let paths: FerryPaths;
/** This test's own last build (the shared cache's latest.json may be another test's). */
let latest: ImageManifest;

function configText(maxJobs: number, stateDisk: string): string {
  return `[guest]\ncpus = 2\nmemory = "1GiB"\nstate-disk-size = "${stateDisk}"\n\n[guest.nix]\nmax-jobs = ${maxJobs}\n\n[vm]\nbackend = "qemu"\n`;
}

/** The CLI from source (no stale dist/), with this test's directories. */
function ferry(args: string[], options: { timeout?: number } = {}) {
  return execa('node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), ...args], {
    env,
    reject: false,
    timeout: options.timeout ?? 600_000,
    cwd: ROOT,
  });
}

function ssh(command: string, host = 'ferry-guest') {
  return execa('ssh', ['-F', paths.sshConfig, host, command], { reject: false, timeout: 300_000 });
}

async function up(): Promise<GuestRecord & { sshMs: number }> {
  const result = await ferry(['up', '--json']);
  expect(result.exitCode, `ferry up failed:\n${result.stderr}\n${await readFile(paths.consoleLog, 'utf8').catch(() => '')}`).toBe(0);
  return JSON.parse(result.stdout) as GuestRecord & { sshMs: number };
}

/** Gone, or a zombie that init has not reaped yet (the detached qemu's parent, `ferry up`, has exited). */
async function exited(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return !isProcessAlive(pid) || (stat !== undefined && /^\d+ \(.*\) Z/.test(stat));
}

/** qemu processes whose command line mentions `dir` (this test's run files). */
async function hypervisorsUsing(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/') && cmdline.includes('qemu-system') && cmdline.includes(dir)) found.push(Number(entry));
  }
  return found;
}

const DERIVATION = (name: string, script: string) =>
  `derivation { name = "${name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "${script}"]; }`;

function nixBuild(expression: string): string {
  return `nix-build --no-out-link --option substituters '' -E '${expression}'`;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-guest-'));
  await mkdir(CACHE, { recursive: true });
  env = {
    ...(process.env as Record<string, string>),
    FERRY_STATE_DIR: path.join(work, 'state'),
    FERRY_CACHE_DIR: CACHE,
    FERRY_CONFIG: path.join(work, 'ferry.toml'),
  };
  await writeFile(env.FERRY_CONFIG, configText(2, '2GiB'));
  paths = resolvePaths({ env });
  const built = await ferry(['image', 'build', '--json']);
  expect(built.exitCode, built.stderr).toBe(0);
}, 900_000);

afterAll(async () => {
  // Whatever happened, nothing of this test keeps running.
  for (const pid of await hypervisorsUsing(work)) process.kill(pid, 'SIGKILL');
  await rm(work, { recursive: true, force: true });
});

describe('the guest, booted from the debian preset under qemu', () => {
  let first: GuestRecord & { sshMs: number };
  let storePath: string;

  it('ferry up boots it detached, FERRY-READY on the console, and prints where it is', async () => {
    const started = performance.now();
    first = await up();
    const total = performance.now() - started;
    console.log(
      `boot timings (qemu start → FERRY-READY ${first.readyMs} ms, → first successful ssh ${first.sshMs} ms; ferry up total ${Math.round(total)} ms incl. cached image build)`,
    );
    expect(first.readyLine).toMatch(/^FERRY-READY ip=10\.0\.2\.15 uptime=\d+\.\d+/);
    expect(await readFile(paths.consoleLog, 'utf8')).toContain('FERRY-READY');
    expect(isProcessAlive(first.pid)).toBe(true); // `ferry up` has returned, qemu runs on
    expect((await runningGuest(paths))?.pid).toBe(first.pid);
    const again = await ferry(['up']);
    expect(again.stdout).toContain('already running');
  });

  it('a real OpenSSH client runs nix-store --version as builder', async () => {
    const result = await ssh('id -un && nix-store --version');
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^builder\nnix-store \(Nix\) \d+\.\d+/);
    const viaFerry = await ferry(['exec', '--', 'sh', '-c', 'echo "$1 $2"', 'sh', 'two words', "it's"]);
    expect(viaFerry.stdout.trim()).toBe("two words it's");
    expect((await ferry(['exec', '--', 'sh', '-c', 'exit 7'])).exitCode).toBe(7);
  });

  it('root can run the control command and nothing else', async () => {
    const time = await ssh('time', 'ferry-guest-control');
    expect(Math.abs(Number(time.stdout.trim()) - Date.now() / 1000)).toBeLessThan(120);
    const refused = await ssh('id', 'ferry-guest-control');
    expect(refused.exitCode).toBe(64);
    expect(refused.stderr).toContain('unknown command: id');
  });

  it('a real nix-build of a small derivation runs in the guest as builder', async () => {
    const result = await ssh(nixBuild(DERIVATION('x', 'echo hi > $out')));
    expect(result.exitCode, result.stderr).toBe(0);
    storePath = result.stdout.trim().split('\n').at(-1)!;
    expect(storePath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-x$/);
    expect((await ssh(`cat ${storePath}`)).stdout).toBe('hi');
  });

  it('ferry down powers it off cleanly, and e2fsck -fn finds the state disk clean', async () => {
    const down = await ferry(['down']);
    expect(down.stdout.trim()).toMatch(/^the guest powered off \([0-9.]+ m?s\)$/); // the control command, not QMP
    expect(await exited(first.pid)).toBe(true);
    expect(await readFile(paths.consoleLog, 'utf8')).toContain('FERRY-STOPPED');
    expect(existsSync(paths.guestRecord)).toBe(false);
    expect(existsSync(`${paths.stateDisk}.ferry-lock`)).toBe(false);
    const fsck = await execa('e2fsck', ['-fn', paths.stateDisk], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);
    expect((await ferry(['down'])).stdout).toContain('not running');
  });

  it("a guest whose control command does not answer is powered off by the hypervisor's power button (QMP system_powerdown): clean, e2fsck finds nothing", async () => {
    const booted = await up();
    // The control command cannot log in without its key: the stop ladder goes on to the backend's own step.
    const hidden = `${paths.guestClientKey}.hidden`;
    await rename(paths.guestClientKey, hidden);
    let down;
    try {
      down = await ferry(['down', '--timeout', '60']);
    } finally {
      await rename(hidden, paths.guestClientKey);
    }
    expect(down.exitCode, down.stderr).toBe(0);
    expect(down.stdout).toContain('asked through the hypervisor');
    expect(await exited(booted.pid)).toBe(true);
    const console = await readFile(paths.consoleLog, 'utf8');
    expect(console).toContain('ferry: the power button was pressed, powering off'); // stage 2's acpid ran the handler
    expect(console).toContain('FERRY-STOPPED'); // init's shutdown script unmounted the state disk
    const fsck = await execa('e2fsck', ['-fn', paths.stateDisk], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);
  });

  it('a store path survives `ferry image build` with a changed config, a grown state disk and a restart', async () => {
    await writeFile(env.FERRY_CONFIG, configText(3, '3GiB'));
    const rebuilt = await ferry(['image', 'build', '--json']);
    expect(rebuilt.exitCode, rebuilt.stderr).toBe(0);
    const manifest = JSON.parse(rebuilt.stdout) as ImageManifest;
    latest = manifest;
    expect(manifest.systemDisk.cacheHit).toBe(true); // only the config archive changed
    expect(manifest.config.cacheHit).toBe(false);
    await up();
    expect((await ssh('grep max-jobs /etc/nix/nix.conf')).stdout.trim()).toBe('max-jobs = 3');
    expect((await ssh(`nix-store --check-validity ${storePath} && cat ${storePath}`)).stdout).toBe('hi');
    const size = Number((await ssh('df -B1 --output=size /nix | tail -n 1')).stdout.trim());
    expect(size).toBeGreaterThan(2.8 * GiB); // resize2fs grew it online at boot
  });

  it('qemu killed with SIGKILL while the guest writes: the next boot comes up with what was synced', async () => {
    const synced = await ssh(`${nixBuild(DERIVATION('synced', 'echo kept > $out'))} && sync`);
    expect(synced.exitCode, synced.stderr).toBe(0);
    const syncedPath = synced.stdout.trim().split('\n').at(-1)!;
    // A build that keeps writing to the state disk when the power goes.
    await ssh(`nohup ${nixBuild(DERIVATION('busy', 'i=0; while :; do dd if=/dev/zero of=$TMPDIR/f$i bs=1M count=8 2>/dev/null; i=$((i+1)); done'))} >/dev/null 2>&1 &`);
    await new Promise((r) => setTimeout(r, 3000));
    const record = (await runningGuest(paths))!;
    process.kill(record.pid, 'SIGKILL');
    // Dead at once; but until init reaps it (this machine's pid 1 does so every few seconds) the
    // zombie still answers kill(0), and ferry's disk lock would say the state disk is in use.
    for (let i = 0; i < 300 && isProcessAlive(record.pid); i++) await new Promise((r) => setTimeout(r, 100));
    expect(isProcessAlive(record.pid)).toBe(false);

    await up(); // the stale record and lock of the killed guest are noticed and removed
    expect((await ssh(`nix-store --check-validity ${syncedPath} && cat ${syncedPath}`)).stdout).toBe('kept');
    expect((await ferry(['down'])).stdout).toMatch(/^the guest powered off/);
    const fsck = await execa('e2fsck', ['-fn', paths.stateDisk], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);
  });

  describe('errors start nothing and leave nothing running', () => {
    let manifest: ImageManifest;
    beforeAll(() => {
      manifest = latest;
    });

    it('a wrong kernel path', async () => {
      const config = await loadConfig(env.FERRY_CONFIG);
      const broken = { ...manifest, kernel: { ...manifest.kernel, path: path.join(work, 'no-such-vmlinuz') } };
      await expect(bootGuest({ manifest: broken, config, paths, detached: false })).rejects.toThrow(/kernel file not found: .*no-such-vmlinuz/);
      expect(await hypervisorsUsing(work)).toEqual([]);
      expect(await runningGuest(paths)).toBeUndefined();
      expect(existsSync(`${paths.stateDisk}.ferry-lock`)).toBe(false);
    });

    it('a kernel that crashes while booting is booted once more, then fails with the crash on the console', async () => {
      const config = await loadConfig(env.FERRY_CONFIG);
      // No init in the initramfs: the kernel panics (panic=-1, so qemu exits), every time.
      const crashing = { ...config, vm: { ...config.vm, kernelCmdlineExtra: 'rdinit=/ferry-no-such-init' } };
      const retries: Error[] = [];
      const failure = await bootGuest({ manifest, config: crashing, paths, detached: false, onRetry: (error) => retries.push(error) }).then(
        () => undefined,
        (error: unknown) => error as FerryError,
      );
      expect(failure?.message).toMatch(/did not become ready: .*the VM exited/);
      expect(retries).toHaveLength(1);
      expect(await readFile(paths.consoleLog, 'utf8')).toContain('Kernel panic - not syncing');
      expect(await hypervisorsUsing(work)).toEqual([]);
      expect(await runningGuest(paths)).toBeUndefined();
    }, 120_000);

    it('a state disk already in use by another running guest', async () => {
      const record = await up();
      const config = await loadConfig(env.FERRY_CONFIG);
      const other = { ...resolvePaths({ env: { ...env, FERRY_STATE_DIR: path.join(work, 'other') } }), stateDisk: paths.stateDisk };
      await mkdir(other.keysDir, { recursive: true });
      await expect(bootGuest({ manifest, config, paths: other, detached: false })).rejects.toThrow(/in use by guest 'ferry' \(pid \d+\)/);
      expect(await hypervisorsUsing(work)).toEqual([record.pid]);
      expect((await ferry(['down'])).stdout).toMatch(/^the guest powered off/);
      expect(await hypervisorsUsing(work)).toEqual([]);
    });

    it('a missing backend binary', async () => {
      const config = await loadConfig(env.FERRY_CONFIG);
      const noQemu = { ...createExecaRunner(), which: async () => undefined };
      await expect(bootGuest({ manifest, config, paths, detached: false, runner: noQemu })).rejects.toThrow(
        /VM backend 'qemu' needs qemu-system-x86_64, which is not on PATH/,
      );
      expect(await hypervisorsUsing(work)).toEqual([]);
      expect(await runningGuest(paths)).toBeUndefined();
    });
  });
});
