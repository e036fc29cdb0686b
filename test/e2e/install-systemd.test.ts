/**
 * The systemd unit `ferry install` writes is honoured: the daemon started with exactly its
 * ExecStart and Environment (no systemd runs here, so the test plays systemd's part), and the
 * real `nix-build` — through the machines line and the ssh alias install wrote — builds a
 * derivation in the guest. This proves the wiring works, not only that it is well-formed.
 *
 * Everything lives under a temp root (`--root`, HOME inside it); images come from the shared
 * test cache (~/.cache/ferry-test/ferry-cache, content-addressed). systemctl is never really run.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os, { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callDaemon } from '../../src/daemon/control-client.js';
import { MACHINES_MARKER } from '../../src/install/nix-wiring.js';
import { parseUnit, userUnitLaunch } from '../../src/install/service.js';
import { freePort } from '../../src/vm/free-port.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const CACHE = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');

let root: string;
let home: string;
let port: number;
let daemon: ResultPromise | undefined;
let daemonOutput = '';

const stateDir = () => path.join(home, '.local/state/ferry');

async function qemuUsing(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('qemu-system') && cmdline.includes(dir)) found.push(Number(entry));
  }
  return found;
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ferry-install-e2e-'));
  home = path.join(root, 'home/builder-user');
  port = await freePort();
  mkdirSync(path.join(home, '.config/ferry'), { recursive: true });
  mkdirSync(path.join(root, 'etc/nix'), { recursive: true });
  mkdirSync(CACHE, { recursive: true });
  writeFileSync(
    path.join(home, '.config/ferry/ferry.toml'),
    `[guest]\npreset = "debian"\nmemory = "1GiB"\ncpus = 2\n\n[guest.nix]\nextra-config = "substituters ="\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n\n[daemon]\nport = ${port}\n`,
  );
});

afterAll(async () => {
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  for (const pid of await qemuUsing(root)) process.kill(pid, 'SIGKILL');
  await rm(root, { recursive: true, force: true });
});

describe('the systemd unit written by ferry install, started as systemd would', () => {
  it('there is no systemd here: install only records systemctl under --root', async () => {
    const pidof = await execa('pidof', ['systemd'], { reject: false });
    expect(pidof.stdout.trim()).toBe('');
    const installed = await execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), 'install', '--root', root, '--no-build', '--yes'], {
      cwd: REPO,
      reject: false,
      env: { HOME: home, PATH: process.env.PATH, FERRY_CACHE_DIR: CACHE },
      extendEnv: false,
    });
    expect(installed.exitCode, installed.stderr).toBe(0);
    expect(installed.stdout).toContain('record (not run, --root): systemctl --user enable --now ferry.service');
    expect(readFileSync(path.join(root, 'etc/nix/machines'), 'utf8')).toContain(MACHINES_MARKER);
  });

  it('the daemon runs with exactly ExecStart and Environment, and the real nix-build builds in the guest', async () => {
    const unit = parseUnit(readFileSync(path.join(home, '.config/systemd/user/ferry.service'), 'utf8'));
    expect(unit.environment.FERRY_STATE_DIR).toBe(stateDir());
    expect(unit.environment.FERRY_CACHE_DIR).toBe(CACHE);
    // systemd gives a user service HOME, USER and the unit's Environment=; nothing else.
    const { file, args, cwd, env } = userUnitLaunch(unit, { home, user: 'root' });
    daemon = execa(file, args, { cwd, env, extendEnv: false, reject: false, all: true, buffer: false, forceKillAfterDelay: false }); // like systemd's TimeoutStopSec=90, not execa's 5 s
    daemon.all?.on('data', (chunk: Buffer) => (daemonOutput = (daemonOutput + chunk.toString()).slice(-20_000)));

    const socket = path.join(stateDir(), 'ferry.sock');
    let status: { daemon: { listen: string } } | undefined;
    for (let i = 0; i < 600 && !status; i++) {
      status = await callDaemon<{ daemon: { listen: string } }>(socket, 'GET', '/status', 2000).catch(() => undefined);
      if (!status) {
        expect(daemon.exitCode, `the daemon exited:\n${daemonOutput}`).toBeNull(); // null while it runs
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    expect(status?.daemon.listen, daemonOutput).toBe(`127.0.0.1:${port}`);

    const marker = `ferry-install-e2e-${Date.now()}`;
    const expression = `derivation { name = "ferry-e2e"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "read h < /proc/sys/kernel/hostname; read r < /proc/sys/kernel/osrelease; echo ${marker} $h $r > $out" ]; }`;
    const started = performance.now();
    const build = await execa(
      'nix-build',
      ['--no-out-link', '--max-jobs', '0', '--option', 'substituters', '', '--builders', `@${path.join(root, 'etc/nix/machines')}`, '-E', expression],
      { reject: false, timeout: 540_000, env: { NIX_SSHOPTS: `-F ${path.join(root, 'etc/ssh/ssh_config.d/ferry.conf')}` } },
    );
    console.log(`nix-build through the installed wiring: ${Math.round(performance.now() - started)} ms (guest boot under tcg included)`);
    expect(build.exitCode, `${build.stderr}\n--- daemon:\n${daemonOutput}`).toBe(0);
    const out = build.stdout.trim().split('\n').at(-1)!;
    expect(out).toMatch(/^\/nix\/store\/[a-z0-9]{32}-ferry-e2e$/);
    // Built in the guest's sandbox: Nix's own hostname there, and the guest's kernel, not this machine's.
    const [seenMarker, hostname, release] = readFileSync(out, 'utf8').trim().split(' ');
    expect([seenMarker, hostname]).toEqual([marker, 'localhost']);
    expect(release).toMatch(/^\d+\.\d+\.\d+[-+]/); // 6.1.0-…-cloud-amd64, 6.12.118+deb13-cloud-amd64
    expect(release).not.toBe(os.release());
    // The daemon saw the session (counted when it ends, which may trail nix-build's exit a little).
    let total = 0;
    for (let i = 0; i < 20 && total === 0; i++) {
      const after = await callDaemon<{ sessions: { total: number; open: number }; recentSessions: unknown[] }>(socket, 'GET', '/status', 5000);
      total = after.sessions.total;
      if (total === 0) await new Promise((r) => setTimeout(r, 500));
      if (i === 19) console.log(JSON.stringify(after));
    }
    expect(total).toBeGreaterThanOrEqual(1);
  }, 900_000);

  it('SIGTERM stops the daemon and its guest', async () => {
    expect(daemon).toBeDefined();
    daemon!.kill('SIGTERM');
    const result = await Promise.race([daemon!, new Promise((r) => setTimeout(() => r('timeout'), 120_000))]);
    expect(result, daemonOutput).not.toBe('timeout');
    const ended = result as { exitCode?: number; signal?: string };
    expect({ exitCode: ended.exitCode, signal: ended.signal }, daemonOutput.slice(-3000)).toEqual({ exitCode: 0, signal: undefined });
    expect(await qemuUsing(root)).toEqual([]);
  }, 180_000);
});
