/**
 * The LaunchAgent `ferry install` writes on a Mac, run here as launchd runs it: `ferry install`
 * with the darwin layout (FERRY_PLATFORM=darwin, --root), the launchctl commands it and
 * `ferry uninstall` issue replayed into a launchd stand-in (test/support/launchd.ts, written from
 * launchd.plist(5), launchctl(1) and launchd's source — see there), which loads the plist and
 * spawns the daemon with exactly the environment, working directory, stdio and argv launchd gives
 * an agent, keeps it alive as KeepAlive and ThrottleInterval say, reaps the job's process group
 * (qemu with it) when the daemon dies, and SIGKILLs only after ExitTimeOut. The daemon runs as Linux
 * underneath (FERRY_PLATFORM stays with install, by design), so it boots the real guest under qemu,
 * and the real `nix-build` goes through the machines line and the ssh alias install wrote.
 * The plist is also checked with a real plist tool: libplist's `plistutil` (Debian's
 * libplist-utils), XML → binary → XML, the same values each way.
 *
 * Everything lives under a temp root; images come from the shared test cache. No launchctl runs.
 */
import { execa } from 'execa';
import { mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync, existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os, { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import plist from 'plist';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callDaemon } from '../../src/daemon/control-client.js';
import { LAUNCHD_LABEL } from '../../src/install/layout.js';
import { MACHINES_MARKER } from '../../src/install/nix-wiring.js';
import { isLoadedCommand, SERVICE_STOP_TIMEOUT_S } from '../../src/install/service.js';
import { freePort } from '../../src/vm/free-port.js';
import { runCli } from '../support/in-process-cli.js';
import { DEFAULT_EXIT_TIMEOUT_S, LAUNCHD_DEFAULT_PATH, LaunchdStandIn, PlistRefused, readJob, type JobRun } from '../support/launchd.js';

const CACHE = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');
const UID = process.getuid?.() ?? 0;

let root: string;
let home: string;
let port: number;
let launchd: LaunchdStandIn;
let session: { uid: number; home: string; user: string; shell: string; tmpdir: string };

const stateDir = () => path.join(home, '.local/state/ferry');
const agentFile = () => path.join(home, 'Library/LaunchAgents', `${LAUNCHD_LABEL}.plist`);
const daemonLog = () => readFileSync(readJob(agentFile()).standardOutPath!, 'utf8').slice(-6000);

async function qemuUsing(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('qemu-system') && cmdline.includes(dir)) found.push(Number(entry));
  }
  return found;
}

/** `ferry …` as the user runs it on a Mac: FERRY_PLATFORM=darwin lays the files out as there. */
async function ferry(...args: string[]): Promise<string> {
  const run = await runCli([...args, '--root', root, '--yes'], { HOME: home, PATH: process.env.PATH, FERRY_CACHE_DIR: CACHE, FERRY_PLATFORM: 'darwin' });
  expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
  return run.stdout;
}

/** The launchctl commands a --root run recorded (it prints them instead of running them). */
function launchctlLines(stdout: string): string[][] {
  return [...stdout.matchAll(/^record \(not run, --root\): launchctl (\S.*?)(?: \([^)]*\))?$/gm)].map((match) => match[1].split(' '));
}

/**
 * Each recorded command through the stand-in's launchctl: documented syntax (never exit 64,
 * usage), and ferry's own job's commands must succeed — except bootout of a job not loaded yet
 * (3), which install expects and ignores. A command for another job (the host's nix-daemon) is
 * checked for syntax only: that job is not in this launchd.
 */
async function replay(stdout: string): Promise<string[]> {
  const shown: string[] = [];
  for (const args of launchctlLines(stdout)) {
    const result = await launchd.launchctl(args);
    shown.push(`launchctl ${args.join(' ')} → ${result.exitCode}`);
    expect(result.exitCode, `launchctl ${args.join(' ')}: ${result.stderr}`).not.toBe(64);
    const ours = args.some((arg) => arg.endsWith(`/${LAUNCHD_LABEL}`) || arg === agentFile());
    if (!ours) continue;
    if (args[0] === 'bootout' && !launchd.commands.slice(0, -1).some((c) => c[0] === 'bootstrap')) expect(result.exitCode).toBe(3);
    else expect(result.exitCode, `launchctl ${args.join(' ')}: ${result.stderr}`).toBe(0);
  }
  return shown;
}

async function waitForStatus(run: JobRun, expectListen: string): Promise<void> {
  const socket = path.join(stateDir(), 'ferry.sock');
  for (let i = 0; i < 600; i++) {
    const status = await callDaemon<{ daemon: { listen: string } }>(socket, 'GET', '/status', 2000).catch(() => undefined);
    if (status) {
      expect(status.daemon.listen).toBe(expectListen);
      return;
    }
    expect(run.endedAt, `the daemon exited:\n${daemonLog()}`).toBeUndefined();
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the daemon did not answer on ${socket}:\n${daemonLog()}`);
}

/** The real nix-build through the machines line and alias install wrote, checked to have run in the guest. */
async function buildInGuest(what: string): Promise<void> {
  const marker = `ferry-launchd-e2e-${Date.now()}`;
  // The guest builds in Nix's sandbox: no guest paths, hostname "localhost", shell builtins only.
  const expression = `derivation { name = "ferry-e2e"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "read h < /proc/sys/kernel/hostname; read r < /proc/sys/kernel/osrelease; echo ${marker} $h $r > $out" ]; }`;
  const started = performance.now();
  const build = await execa(
    'nix-build',
    ['--no-out-link', '--max-jobs', '0', '--option', 'substituters', '', '--builders', `@${path.join(root, 'etc/nix/machines')}`, '-E', expression],
    { reject: false, timeout: 540_000, env: { NIX_SSHOPTS: `-F ${path.join(root, 'etc/ssh/ssh_config.d/ferry.conf')}` } },
  );
  console.log(`nix-build through the LaunchAgent's daemon (${what}): ${Math.round(performance.now() - started)} ms (guest boot under tcg included)`);
  const consoleLog = () => readFileSync(path.join(path.dirname(readJob(agentFile()).standardOutPath!), 'console.log'), 'utf8').slice(-4000);
  expect(build.exitCode, `${build.stderr}\n--- daemon:\n${daemonLog()}\n--- guest console:\n${consoleLog()}`).toBe(0);
  const out = build.stdout.trim().split('\n').at(-1)!;
  expect(out).toMatch(/^\/nix\/store\/[a-z0-9]{32}-ferry-e2e$/);
  const [seenMarker, hostname, release] = readFileSync(out, 'utf8').trim().split(' ');
  expect([seenMarker, hostname]).toEqual([marker, 'localhost']);
  expect(release).toMatch(/^\d+\.\d+\.\d+[-+]/); // 6.1.0-…-amd64 (Debian 12), 6.12.118+deb13-… (13)
  expect(release).not.toBe(os.release());
  expect(await qemuUsing(root)).toHaveLength(1);
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ferry-launchd-e2e-'));
  home = path.join(root, 'Users/builder-user');
  port = await freePort();
  // A Mac's per-user temporary directory, with the trailing slash launchd's TMPDIR has there.
  const tmp = path.join(root, 'private/var/folders/zz/abc123/T');
  mkdirSync(tmp, { recursive: true });
  const me = os.userInfo();
  session = { uid: UID, home, user: me.username, shell: me.shell ?? '/bin/zsh', tmpdir: `${tmp}/` };
  launchd = new LaunchdStandIn(session);
  mkdirSync(path.join(home, '.config/ferry'), { recursive: true });
  mkdirSync(path.join(root, 'etc/nix'), { recursive: true });
  mkdirSync(CACHE, { recursive: true });
  writeFileSync(
    path.join(home, '.config/ferry/ferry.toml'),
    `[guest]\npreset = "debian"\nmemory = "1GiB"\ncpus = 2\n\n[guest.nix]\nextra-config = "substituters ="\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n\n[daemon]\nport = ${port}\n`,
  );
});

afterAll(async () => {
  await launchd?.shutdown();
  for (const pid of await qemuUsing(root)) process.kill(pid, 'SIGKILL');
  await rm(root, { recursive: true, force: true });
});

describe('the LaunchAgent written by ferry install, run as launchd runs it', () => {
  it('the stand-in refuses what launchd refuses, and what it does not implement', async () => {
    const dir = path.join(root, 'refused');
    mkdirSync(dir, { recursive: true });
    const write = (name: string, body: string) => {
      const file = path.join(dir, `${name}.plist`);
      writeFileSync(file, `<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>${body}</dict></plist>\n`);
      return file;
    };
    const args = '<key>ProgramArguments</key><array><string>/bin/true</string></array>';
    expect(() => readJob(write('no-label', args))).toThrow(/Label is required/);
    expect(() => readJob(write('args-not-strings', '<key>Label</key><string>x</string><key>ProgramArguments</key><array><string>/bin/true</string><integer>1</integer></array>'))).toThrow(/array> of <string>/);
    expect(() => readJob(write('args-a-string', '<key>Label</key><string>x</string><key>ProgramArguments</key><string>/bin/true</string>'))).toThrow(/array> of <string>/);
    expect(() => readJob(write('no-program', '<key>Label</key><string>x</string>'))).toThrow(/Program or ProgramArguments/);
    expect(() => readJob(write('unknown-key', `<key>Label</key><string>x</string>${args}<key>StartInterval</key><integer>5</integer>`))).toThrow(PlistRefused);
    expect(() => readJob(write('keepalive-dict', `<key>Label</key><string>x</string>${args}<key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>`))).toThrow(/KeepAlive must be a <boolean>/);
    // launchctl(1)'s syntax: a service target is <domain>/<label>, bootstrap takes a domain and paths.
    const standIn = new LaunchdStandIn(session);
    const good = write('good', `<key>Label</key><string>x</string>${args}`);
    expect((await standIn.launchctl(['bootstrap', `gui/${UID}/x`, good])).exitCode).toBe(64);
    expect((await standIn.launchctl(['bootstrap', `gui/${UID}`])).exitCode).toBe(64);
    expect((await standIn.launchctl(['bootout', 'x'])).exitCode).toBe(64);
    expect((await standIn.launchctl(['kickstart', '-k', `gui/${UID}`])).exitCode).toBe(64);
    expect((await standIn.launchctl(['kickstart', '-s', `gui/${UID}/x`])).exitCode).toBe(64);
    expect((await standIn.launchctl(['load', good])).exitCode).toBe(64);
    expect((await standIn.launchctl(['bootstrap', `gui/${UID}`, write('no-label-2', args)])).exitCode).toBe(5);
    expect((await standIn.launchctl(['bootout', `gui/${UID}/x`])).exitCode).toBe(3);
    expect((await standIn.launchctl(['kickstart', `gui/${UID}/x`])).exitCode).toBe(113);
    await standIn.shutdown();
  });

  it('install writes a plist that plistutil round-trips, and bootout + bootstrap in launchctl syntax start the agent', async () => {
    const stdout = await ferry('install', '--no-build');
    expect(readFileSync(path.join(root, 'etc/nix/machines'), 'utf8')).toContain(MACHINES_MARKER);
    const file = agentFile();
    const xml = readFileSync(file, 'utf8');
    // libplist reads what ferry (the `plist` package) wrote, and its binary form holds the same values.
    const binary = path.join(root, 'agent.bplist');
    const back = path.join(root, 'agent.xml');
    await execa('plistutil', ['-i', file, '-o', binary, '-f', 'bin']);
    expect(readFileSync(binary).subarray(0, 8).toString('latin1')).toBe('bplist00');
    await execa('plistutil', ['-i', binary, '-o', back, '-f', 'xml']);
    expect(plist.parse(readFileSync(back, 'utf8'))).toEqual(plist.parse(xml));

    const commands = await replay(stdout);
    console.log(`install's launchctl commands through the stand-in:\n  ${commands.join('\n  ')}`);
    expect(launchd.commands.filter((c) => c.some((arg) => arg.includes(LAUNCHD_LABEL)))).toEqual([
      ['bootout', `gui/${UID}/${LAUNCHD_LABEL}`],
      ['bootstrap', `gui/${UID}`, file],
    ]);
    expect(launchd.isLoaded(LAUNCHD_LABEL)).toBe(true);
    // launchd's default ExitTimeOut (20 s) is shorter than the daemon's own stop ladder: the plist
    // sets the systemd unit's stop timeout instead, or a slow guest poweroff ends in SIGKILL.
    const job = readJob(file);
    expect(job.exitTimeOutS).toBe(SERVICE_STOP_TIMEOUT_S);
    expect(job.exitTimeOutS).toBeGreaterThan(DEFAULT_EXIT_TIMEOUT_S);
  });

  it('the daemon runs with launchd\'s environment plus EnvironmentVariables only, in /, stdin /dev/null, output to StandardOutPath, argv as ProgramArguments', async () => {
    const job = readJob(agentFile());
    const [run] = launchd.runs(LAUNCHD_LABEL);
    expect(run).toBeDefined();
    await waitForStatus(run, `127.0.0.1:${port}`);
    const environ = Object.fromEntries(
      readFileSync(`/proc/${run.pid}/environ`, 'utf8').split('\0').filter(Boolean).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
    );
    expect(environ).toEqual({ PATH: LAUNCHD_DEFAULT_PATH, HOME: home, USER: session.user, LOGNAME: session.user, SHELL: session.shell, TMPDIR: session.tmpdir, ...job.environmentVariables });
    // PATH is the plist's (launchd's default would find neither node nor nix); FERRY_PLATFORM stays with install.
    expect(environ.PATH).not.toBe(LAUNCHD_DEFAULT_PATH);
    expect(environ.FERRY_PLATFORM).toBeUndefined();
    expect(environ.FERRY_STATE_DIR).toBe(stateDir());
    expect(readFileSync(`/proc/${run.pid}/cmdline`, 'utf8').split('\0').slice(0, -1)).toEqual(job.programArguments);
    expect(readlinkSync(`/proc/${run.pid}/cwd`)).toBe('/');
    expect(readlinkSync(`/proc/${run.pid}/fd/0`)).toBe('/dev/null');
    expect(readlinkSync(`/proc/${run.pid}/fd/1`)).toBe(job.standardOutPath);
    expect(readlinkSync(`/proc/${run.pid}/fd/2`)).toBe(job.standardErrorPath);
    expect(job.standardOutPath!.startsWith(path.join(home, 'Library/Logs/ferry/'))).toBe(true);
    expect(readFileSync(job.standardOutPath!, 'utf8').length).toBeGreaterThan(0);
  }, 180_000);

  it('KeepAlive: after a SIGKILL the daemon is started again, not sooner than ThrottleInterval after its last start', async () => {
    const job = readJob(agentFile());
    expect(job.keepAlive).toBe(true);
    const nextRun = async (after: JobRun): Promise<JobRun> => {
      for (let i = 0; i < 300 && launchd.runs(LAUNCHD_LABEL).at(-1) === after; i++) await new Promise((r) => setTimeout(r, 100));
      const next = launchd.runs(LAUNCHD_LABEL).at(-1)!;
      expect(next).not.toBe(after);
      return next;
    };
    const kill = async (run: JobRun) => {
      process.kill(run.pid, 'SIGKILL');
      await run.ended;
      expect(run.signal).toBe('SIGKILL');
    };
    // Killed once it has run for a while: started again right away (if it ran ThrottleInterval).
    const first = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    await kill(first);
    const second = await nextRun(first);
    // Killed a second after it started: launchd holds the next start back to ThrottleInterval.
    await new Promise((r) => setTimeout(r, 1000));
    await kill(second);
    const third = await nextRun(second);
    for (const [what, before, after] of [['first', first, second], ['second', second, third]] as const) {
      console.log(`respawn after the ${what} SIGKILL: ${after.startedAt - before.startedAt} ms after the last start, ${after.startedAt - before.endedAt!} ms after the kill (ThrottleInterval ${job.throttleIntervalS} s)`);
      expect(after.startedAt - before.startedAt).toBeGreaterThanOrEqual(job.throttleIntervalS * 1000);
    }
    expect(third.startedAt - second.endedAt!).toBeGreaterThan(job.throttleIntervalS * 1000 - 3000);
    await waitForStatus(third, `127.0.0.1:${port}`);
  }, 120_000);

  it('the real nix-build goes through the machines line and the alias install wrote, into the guest', async () => {
    await buildInGuest('first');
  }, 600_000);

  it('a SIGKILL while the guest runs: launchd SIGTERMs the job\'s process group, so qemu goes too, and the next daemon builds again', async () => {
    const [qemu] = await qemuUsing(root);
    expect(qemu).toBeDefined();
    const killed = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    process.kill(killed.pid, 'SIGKILL');
    await killed.ended;
    // qemu is the daemon's child, in the process group launchd made the job lead (AbandonProcessGroup false).
    for (let i = 0; i < 100 && (await qemuUsing(root)).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await qemuUsing(root)).toEqual([]);
    for (let i = 0; i < 200 && launchd.runs(LAUNCHD_LABEL).at(-1) === killed; i++) await new Promise((r) => setTimeout(r, 100));
    const next = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    expect(next).not.toBe(killed);
    await waitForStatus(next, `127.0.0.1:${port}`);
    // The state disk was in use when qemu went: the guest boots from it again (ext4's journal).
    await buildInGuest('after the kill');
  }, 600_000);

  it('install --port with the agent loaded: launchctl print (loaded), then kickstart -k, and the daemon comes back on the new port', async () => {
    const newPort = await freePort();
    const before = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    const from = launchd.commands.length;
    const stdout = await ferry('install', '--no-build', '--port', String(newPort));
    const commands = await replay(stdout);
    console.log(`install --port's launchctl commands through the stand-in:\n  ${commands.join('\n  ')}`);
    expect(launchd.commands.slice(from).filter((c) => c.some((arg) => arg.includes(LAUNCHD_LABEL)))).toEqual([['kickstart', '-k', `gui/${UID}/${LAUNCHD_LABEL}`]]);
    // Before it, install asked whether the agent is loaded — quietly, so not in its output: the
    // same command from service.ts, which the (recording) runner answered 0, as launchd does here.
    const probe = isLoadedCommand('launchd', false, UID);
    expect(probe.args).toEqual(['print', `gui/${UID}/${LAUNCHD_LABEL}`]);
    expect(await launchd.launchctl(probe.args)).toMatchObject({ exitCode: 0, stdout: expect.stringMatching(/state = running/) });
    // kickstart -k: SIGTERM, and the daemon powered the guest off within launchd's ExitTimeOut.
    expect({ exitCode: before.exitCode, signal: before.signal, killedAfterExitTimeOut: before.killedAfterExitTimeOut }, daemonLog()).toEqual({ exitCode: 0, signal: null, killedAfterExitTimeOut: undefined });
    console.log(`kickstart -k: the daemon, guest running, exited ${before.endedAt! - before.stopRequestedAt!} ms after SIGTERM (ExitTimeOut ${readJob(agentFile()).exitTimeOutS} s)`);
    expect(await qemuUsing(root)).toEqual([]);
    const after = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    expect(after).not.toBe(before);
    await waitForStatus(after, `127.0.0.1:${newPort}`);
  }, 180_000);

  it('uninstall: bootout stops the agent for good, and the plist is gone', async () => {
    const last = launchd.runs(LAUNCHD_LABEL).at(-1)!;
    const from = launchd.commands.length;
    const stdout = await ferry('uninstall');
    await replay(stdout);
    expect(launchd.commands.slice(from).filter((c) => c.some((arg) => arg.includes(LAUNCHD_LABEL)))).toEqual([['bootout', `gui/${UID}/${LAUNCHD_LABEL}`]]);
    expect(last.endedAt).toBeDefined();
    expect({ exitCode: last.exitCode, signal: last.signal }).toEqual({ exitCode: 0, signal: null });
    expect(launchd.isLoaded(LAUNCHD_LABEL)).toBe(false);
    const runs = launchd.runs(LAUNCHD_LABEL).length;
    await new Promise((r) => setTimeout(r, 1500));
    expect(launchd.runs(LAUNCHD_LABEL)).toHaveLength(runs);
    expect(existsSync(agentFile())).toBe(false);
    expect(await qemuUsing(root)).toEqual([]);
  }, 120_000);
});
