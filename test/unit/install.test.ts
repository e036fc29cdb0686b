/**
 * `ferry install` / `uninstall` / `doctor` against a temp dir as the file system root (HOME inside
 * it): the files written, checked field by field (the plist through the plist library, key by key
 * against the template in launchd/; the machines line, the ssh alias, the systemd unit), the
 * launchctl/systemctl commands issued through the runner in order, the tree back byte for byte after uninstall, idempotence, dry run,
 * nix-darwin, and doctor reporting each broken piece with its fix. As a user (FERRY_AS_USER=1):
 * each change under /etc is a `sudo …` argv through the runner (executed here as the plain command)
 * and nothing else touches root's directories.
 */
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { execa } from 'execa';
import plist from 'plist';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExitCode, FerryError } from '../../src/errors.js';
import { doctor, renderChecks, type Check } from '../../src/install/doctor.js';
import { install, type InstallOptions } from '../../src/install/install.js';
import { BUILDERS_USE_SUBSTITUTES, MACHINES_MARKER, NIX_CONF_MARKER } from '../../src/install/nix-wiring.js';
import { daemonArgv, launchdTemplatePath, parseUnit, readLaunchdTemplate } from '../../src/install/service.js';
import { uninstall, type UninstallOptions } from '../../src/install/uninstall.js';
import { findOnPath, RecordingRunner, type RunResult } from '../../src/process/runner.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const OTHER_BUILDER = 'ssh://mac-mini.lan aarch64-darwin /etc/nix/id_builder 4 2 big-parallel - -\n';
const UID = 501;

let root: string;
let home: string;
let out: string[];
let runner: RecordingRunner;

/** Every entry under `dir`: path, type, permission bits, content hash or link target. */
function treeHash(dir: string): string {
  const lines: string[] = [];
  const walk = (current: string) => {
    for (const name of readdirSync(current).sort()) {
      const full = path.join(current, name);
      const st = lstatSync(full);
      const rel = path.relative(dir, full);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) lines.push(`L ${rel} ${readlinkSync(full)}`);
      else if (st.isDirectory()) {
        lines.push(`D ${rel} ${mode}`);
        walk(full);
      } else lines.push(`F ${rel} ${mode} ${createHash('sha256').update(readFileSync(full)).digest('hex')}`);
    }
  };
  walk(dir);
  return createHash('sha256').update(lines.join('\n')).digest('hex');
}

function options(extra: Partial<InstallOptions & UninstallOptions> = {}): InstallOptions & UninstallOptions {
  return {
    root,
    env: { HOME: home, PATH: process.env.PATH },
    uid: UID,
    runner,
    out: (line) => out.push(line),
    build: false,
    daemonArgv: ['/usr/local/bin/node', '/opt/ferry/dist/cli.js', 'daemon'],
    nodePath: '/usr/local/bin/node',
    ...extra,
  };
}

const commandsOf = (r: RecordingRunner) => r.commands.map((c) => [c.file, ...c.args].join(' '));
const stateDir = () => path.join(home, '.local/state/ferry');
const clientKey = () => path.join(stateDir(), 'keys/client_ed25519');
const hostKeyPub = () => path.join(stateDir(), 'keys/ssh_host_ed25519_key.pub');
const machinesFile = () => path.join(root, 'etc/nix/machines');
const nixConfFile = () => path.join(root, 'etc/nix/nix.conf');
const NIX_CONF = 'experimental-features = nix-command flakes\n';
/** What install makes of NIX_CONF: ferry's line, under its marker, at the end. */
const NIX_CONF_WIRED = `${NIX_CONF}${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\n`;
const aliasFile = () => path.join(root, 'etc/ssh/ssh_config.d/ferry.conf');
const plistFile = () => path.join(home, 'Library/LaunchAgents/dev.ferry.daemon.plist');
/** The keys install adds to the template: the program, its environment, its output log, its stop timeout. */
const FILLED_KEYS = ['ProgramArguments', 'EnvironmentVariables', 'StandardOutPath', 'StandardErrorPath', 'ExitTimeOut'];
/** The template in the repository's launchd/ folder, read here on its own (not through install's reader). */
const launchdTemplate = () => plist.parse(readFileSync(path.join(REPO, 'launchd/ferry-daemon.plist'), 'utf8')) as Record<string, unknown>;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ferry-install-'));
  home = path.join(root, 'Users/alice');
  mkdirSync(home, { recursive: true });
  mkdirSync(path.join(root, 'etc/nix'), { recursive: true });
  writeFileSync(machinesFile(), OTHER_BUILDER, { mode: 0o644 });
  chmodSync(machinesFile(), 0o644);
  writeFileSync(nixConfFile(), NIX_CONF);
  out = [];
  runner = new RecordingRunner();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('ferry install on macOS (LaunchAgent)', () => {
  it('writes the plist, the machines line and the alias; launchctl bootout then bootstrap', async () => {
    const result = await install(options({ platform: 'darwin', port: 31999 }));

    // The plist, parsed back: the template's keys with the template's values, plus what install fills in.
    const parsed = plist.parse(readFileSync(plistFile(), 'utf8')) as Record<string, unknown>;
    const template = launchdTemplate();
    for (const [key, value] of Object.entries(template)) expect(parsed[key], `template key ${key}`).toEqual(value);
    expect(Object.keys(parsed).sort()).toEqual([...Object.keys(template), ...FILLED_KEYS].sort());
    expect(parsed.ProgramArguments).toEqual(['/usr/local/bin/node', '/opt/ferry/dist/cli.js', 'daemon']);
    expect(parsed.StandardOutPath).toBe(path.join(home, 'Library/Logs/ferry/daemon.out.log'));
    expect(parsed.StandardErrorPath).toBe(parsed.StandardOutPath);
    expect(existsSync(path.dirname(parsed.StandardOutPath as string))).toBe(true); // launchd does not create it
    const env = parsed.EnvironmentVariables as Record<string, string>;
    const pathDirs = env.PATH.split(':');
    for (const dir of ['/nix/var/nix/profiles/default/bin', '/run/current-system/sw/bin', '/opt/homebrew/bin', '/usr/local/bin']) expect(pathDirs).toContain(dir);
    expect(env.FERRY_CONFIG).toBe(path.join(home, '.config/ferry/ferry.toml'));
    expect(env.FERRY_STATE_DIR).toBe(stateDir());
    expect(env.FERRY_CACHE_DIR).toBe(path.join(home, 'Library/Caches/ferry'));
    expect(env.FERRY_LOG_DIR).toBe(path.join(home, 'Library/Logs/ferry'));

    // The keys: the client key is private to its owner.
    expect(statSync(clientKey()).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(stateDir(), 'keys/ssh_host_ed25519_key')).mode & 0o777).toBe(0o600);

    // The machines file: the other builder kept, ferry's line field by field.
    const machines = readFileSync(machinesFile(), 'utf8');
    expect(machines.startsWith(OTHER_BUILDER)).toBe(true);
    const lines = machines.split('\n');
    expect(lines[1]).toBe(MACHINES_MARKER);
    const fields = lines[2].split(' ');
    expect(fields).toHaveLength(8);
    expect(fields[0]).toBe('ssh-ng://ferry-builder');
    expect(fields[1]).toBe('x86_64-linux'.replace('x86_64', process.arch === 'arm64' ? 'aarch64' : 'x86_64'));
    expect(fields[2]).toBe(clientKey());
    expect(Number(fields[3])).toBeGreaterThanOrEqual(1);
    expect(fields[4]).toBe('1');
    expect(fields[5]).toBe('benchmark,big-parallel');
    expect(fields[6]).toBe('-');
    expect(Buffer.from(fields[7], 'base64').toString('utf8')).toBe(readFileSync(hostKeyPub(), 'utf8').trim());
    expect(Buffer.from(fields[7], 'base64').toString('utf8')).toMatch(/^ssh-ed25519 AAAA\S+ /);
    expect(lines.slice(3)).toEqual(['']);

    // The alias carries the port, 127.0.0.1 and the client key; never localhost.
    const alias = readFileSync(aliasFile(), 'utf8');
    expect(alias).toMatch(/^Host ferry-builder$/m);
    expect(alias).toMatch(/^\s+HostName 127\.0\.0\.1$/m);
    expect(alias).toMatch(/^\s+Port 31999$/m);
    expect(alias).toContain(`IdentityFile ${clientKey()}\n`);
    expect(alias).not.toMatch(/localhost/);
    const knownHosts = /UserKnownHostsFile (\S+)/.exec(alias)![1];
    expect(readFileSync(knownHosts, 'utf8')).toBe(`ferry-builder ${readFileSync(hostKeyPub(), 'utf8').trim().split(' ').slice(0, 2).join(' ')}\n`);
    expect(readFileSync(path.join(home, '.config/ferry/ferry.toml'), 'utf8')).toMatch(/^\[daemon\]\n(?:#.*\n)*port = 31999$/m);

    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/dev.ferry.daemon`, `launchctl bootstrap gui/${UID} ${plistFile()}`]);
    // Every change printed.
    for (const file of [plistFile(), machinesFile(), aliasFile(), clientKey()]) expect(out.join('\n')).toContain(file);
    expect(result.changes).toBeGreaterThan(0);
  });

  it('with [daemon] listen = "::1": the alias goes to ::1 (as OpenSSH reads it) and the machines line names only the alias', async () => {
    const configFile = path.join(home, '.config/ferry/ferry.toml');
    mkdirSync(path.dirname(configFile), { recursive: true });
    writeFileSync(configFile, '[daemon]\nlisten = "::1"\nport = 31888\n');
    await install(options({ platform: 'darwin' }));

    const alias = readFileSync(aliasFile(), 'utf8');
    expect(alias).toMatch(/^\s+HostName ::1$/m);
    expect(alias).not.toMatch(/127\.0\.0\.1|\[/);
    const resolved = await execa('ssh', ['-G', '-F', aliasFile(), 'ferry-builder']);
    expect(resolved.stdout).toMatch(/^hostname ::1$/m);
    expect(resolved.stdout).toMatch(/^port 31888$/m);
    expect(out.join('\n')).toContain('ssh alias ferry-builder → [::1]:31888');

    // Nix reaches the builder by the alias alone: no address in the line to go stale.
    const line = readFileSync(machinesFile(), 'utf8').split('\n')[2]!;
    expect(line.split(' ')[0]).toBe('ssh-ng://ferry-builder');
    expect(line).not.toMatch(/127\.0\.0\.1|::1/);
  });

  it('uninstall leaves the root byte for byte as it was, and bootouts the agent', async () => {
    const before = treeHash(root);
    await install(options({ platform: 'darwin' }));
    expect(treeHash(root)).not.toBe(before);
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'darwin' }));
    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/dev.ferry.daemon`]);
    expect(treeHash(root)).toBe(before);
    expect(readFileSync(machinesFile(), 'utf8')).toBe(OTHER_BUILDER);
  });

  it('uninstall with a damaged install.json says so, naming it, and changes nothing', async () => {
    await install(options({ platform: 'darwin' }));
    const record = path.join(stateDir(), 'install.json');
    for (const damaged of ['{"version": 1, "files": [', 'null', '[]', '{"version": 2, "files": [], "dirs": []}']) {
      writeFileSync(record, damaged);
      const before = treeHash(root);
      runner = new RecordingRunner();
      const error = await uninstall(options({ platform: 'darwin' })).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(FerryError);
      expect((error as FerryError).exitCode).toBe(ExitCode.DataError);
      expect((error as FerryError).message).toMatch(new RegExp(`^the install record ${record} is damaged: (not valid JSON|not an install record).*; nothing was changed$`));
      expect(commandsOf(runner)).toEqual([]);
      expect(treeHash(root)).toBe(before);
    }
  });

  it('a second install changes nothing and says so', async () => {
    await install(options({ platform: 'darwin' }));
    const after = treeHash(root);
    out = [];
    runner = new RecordingRunner(); // `launchctl print` answers 0: the agent is loaded
    const again = await install(options({ platform: 'darwin' }));
    expect(again.changes).toBe(0);
    expect(out.at(-1)).toMatch(/^nothing to change/);
    expect(out.filter((line) => /^(create|update)/.test(line))).toEqual([]);
    expect(commandsOf(runner)).toEqual([`launchctl print gui/${UID}/dev.ferry.daemon`]);
    expect(treeHash(root)).toBe(after);
  });

  it('a second install bootstraps the agent again if it is not loaded', async () => {
    await install(options({ platform: 'darwin' }));
    runner = new RecordingRunner([], (file, args) => ({ exitCode: args[0] === 'print' ? 113 : 0, signal: undefined, stdout: '', stderr: '', timedOut: false }));
    await install(options({ platform: 'darwin' }));
    expect(commandsOf(runner)).toEqual([
      `launchctl print gui/${UID}/dev.ferry.daemon`,
      `launchctl bootout gui/${UID}/dev.ferry.daemon`,
      `launchctl bootstrap gui/${UID} ${plistFile()}`,
    ]);
  });

  it('--dry-run prints the plan and writes nothing', async () => {
    const before = treeHash(root);
    const plan = await install(options({ platform: 'darwin', dryRun: true }));
    expect(treeHash(root)).toBe(before);
    expect(runner.commands).toEqual([]);
    expect(plan.changes).toBeGreaterThan(0);
    const text = out.join('\n');
    expect(text).toContain(`would create ${plistFile()}`);
    expect(text).toContain(`would update ${machinesFile()}`);
    expect(text).toContain(`would run launchctl bootstrap gui/${UID} ${plistFile()}`);
  });

  it('an upgrade (new ferry path) reloads the agent, keeps the state disk, and uninstall still restores the first "before"', async () => {
    const before = treeHash(root);
    await install(options({ platform: 'darwin' }));
    const stateDisk = path.join(stateDir(), 'vm/state.img');
    mkdirSync(path.dirname(stateDisk), { recursive: true });
    writeFileSync(stateDisk, 'the guest /nix');
    runner = new RecordingRunner();
    await install(options({ platform: 'darwin', port: 32000, daemonArgv: ['/usr/local/bin/node', '/opt/ferry-2/dist/cli.js', 'daemon'] }));
    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/dev.ferry.daemon`, `launchctl bootstrap gui/${UID} ${plistFile()}`]);
    expect((plist.parse(readFileSync(plistFile(), 'utf8')) as { ProgramArguments: string[] }).ProgramArguments[1]).toBe('/opt/ferry-2/dist/cli.js');
    expect(readFileSync(stateDisk, 'utf8')).toBe('the guest /nix');
    expect(readFileSync(machinesFile(), 'utf8').split(MACHINES_MARKER)).toHaveLength(2); // one ferry line, replaced

    out = [];
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(stateDisk, 'utf8')).toBe('the guest /nix');
    expect(out.join('\n')).toMatch(/keep .*\(the state disk with the guest's \/nix\)/);
    expect(readFileSync(machinesFile(), 'utf8')).toBe(OTHER_BUILDER);
    await uninstall(options({ platform: 'darwin', purge: true }));
    expect(treeHash(root)).toBe(before);
  });

  it('a machines file edited after install only loses ferry\'s line on uninstall', async () => {
    await install(options({ platform: 'darwin' }));
    const added = 'ssh://linux-box x86_64-linux /k 8 1 - - -\n';
    writeFileSync(machinesFile(), readFileSync(machinesFile(), 'utf8') + added);
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(machinesFile(), 'utf8')).toBe(OTHER_BUILDER + added);
  });

  it('with nix-darwin (nix.conf a symlink into the store): edits nothing there, prints the module snippet', async () => {
    await rm(path.join(root, 'etc/nix'), { recursive: true });
    mkdirSync(path.join(root, 'etc/nix'));
    mkdirSync(path.join(root, 'etc/static/nix'), { recursive: true });
    symlinkSync('/etc/static/nix/nix.conf', path.join(root, 'etc/nix/nix.conf'));
    symlinkSync('/nix/store/0000000000000000000000000000000a-nix.conf', path.join(root, 'etc/static/nix/nix.conf'));
    const before = treeHash(path.join(root, 'etc/nix'));
    const result = await install(options({ platform: 'darwin' }));
    expect(treeHash(path.join(root, 'etc/nix'))).toBe(before);
    expect(existsSync(machinesFile())).toBe(false);
    const snippet = result.nixDarwinSnippet!;
    expect(snippet).toContain('nix.distributedBuilds = true;');
    expect(snippet).toContain('nix.settings.builders-use-substitutes = true;');
    expect(snippet).toContain('hostName = "ferry-builder";');
    expect(snippet).toContain('protocol = "ssh-ng";');
    expect(snippet).toContain(`sshKey = "${clientKey()}";`);
    const hostKey = /publicHostKey = "([^"]+)"/.exec(snippet)![1];
    expect(Buffer.from(hostKey, 'base64').toString('utf8')).toBe(readFileSync(hostKeyPub(), 'utf8').trim());
    expect(out.join('\n')).toContain(snippet);
    expect(out.join('\n')).toMatch(/managed by nix-darwin \(\/nix\/store\//);
    // ferry's own module first, then the snippet for those who do not use it.
    const text = out.join('\n');
    expect(text).toContain('`ferry.darwinModules.default`');
    expect(text).toContain('`services.ferry.enable = true;`');
    expect(text.indexOf('darwinModules.default')).toBeLessThan(text.indexOf(snippet));
  });

  it('--system: a LaunchDaemon in /Library/LaunchDaemons, system paths under the root, the system domain', async () => {
    await install(options({ platform: 'darwin', system: true }));
    const file = path.join(root, 'Library/LaunchDaemons/dev.ferry.daemon.plist');
    const parsed = plist.parse(readFileSync(file, 'utf8')) as { EnvironmentVariables: Record<string, string>; StandardOutPath: string };
    for (const [key, value] of Object.entries(launchdTemplate())) expect((parsed as Record<string, unknown>)[key], `template key ${key}`).toEqual(value);
    expect(parsed.EnvironmentVariables.FERRY_STATE_DIR).toBe(path.join(root, 'var/lib/ferry'));
    expect(parsed.StandardOutPath).toBe(path.join(root, 'Library/Logs/ferry/daemon.out.log'));
    expect(readFileSync(machinesFile(), 'utf8')).toContain(path.join(root, 'var/lib/ferry/keys/client_ed25519'));
    expect(commandsOf(runner)).toEqual(['launchctl bootout system/dev.ferry.daemon', `launchctl bootstrap system ${file}`]);
  });

  it('the launchd/ template holds the static keys, and launchctl and the file name use its Label', async () => {
    const template = launchdTemplate();
    expect(Object.keys(template).sort()).toEqual(['KeepAlive', 'Label', 'ProcessType', 'RunAtLoad', 'ThrottleInterval']);
    await install(options({ platform: 'darwin' }));
    const agent = path.join(home, 'Library/LaunchAgents', `${template.Label as string}.plist`);
    expect(existsSync(agent)).toBe(true);
    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/${template.Label as string}`, `launchctl bootstrap gui/${UID} ${agent}`]);
    // The record names the same label, so uninstall boots out the job install loaded.
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'darwin' }));
    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/${template.Label as string}`]);
  });

  it('a template whose Label differs from the one install loads, or that sets a key install fills, is refused with what to fix', () => {
    const dir = path.join(root, 'templates');
    mkdirSync(dir);
    const text = readFileSync(path.join(REPO, 'launchd/ferry-daemon.plist'), 'utf8');
    const relabelled = path.join(dir, 'relabelled.plist');
    writeFileSync(relabelled, text.replace('<string>dev.ferry.daemon</string>', '<string>org.example.other</string>'));
    expect(() => readLaunchdTemplate(relabelled)).toThrow(/Label is "org\.example\.other", but ferry loads and unloads the job as "dev\.ferry\.daemon".*make them the same/);
    const withProgram = path.join(dir, 'with-program.plist');
    writeFileSync(withProgram, text.replace('<dict>', '<dict>\n\t<key>ProgramArguments</key>\n\t<array><string>/bin/false</string></array>'));
    expect(() => readLaunchdTemplate(withProgram)).toThrow(/ProgramArguments is filled in by install; remove it from the template/);
    expect(() => readLaunchdTemplate(path.join(dir, 'absent.plist'))).toThrow(/absent\.plist: missing/);
    // The one install reads by default is the repository's.
    expect(launchdTemplatePath()).toBe(path.join(REPO, 'launchd/ferry-daemon.plist'));
  });
});

/**
 * A runner for ferry running as a user: `sudo …` is executed as the plain command (this test is
 * the only one allowed to touch root's files), everything else (launchctl) just answers 0. Between
 * two sudo commands root's directories must not change — so nothing was written there directly.
 */
class SudoRunner extends RecordingRunner {
  readonly temps: string[] = [];

  constructor(guarded: () => string[]) {
    const snapshot = () => guarded().map((dir) => (existsSync(dir) ? treeHash(dir) : '-')).join(' ');
    let expected = snapshot();
    super([], (file, args): RunResult => {
      const ok: RunResult = { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false };
      if (file !== 'sudo') return ok;
      expect(snapshot(), `root's files changed without sudo before \`sudo ${args.join(' ')}\``).toBe(expected);
      if (args[0] === 'install') this.temps.push(args.at(-2)!);
      if (args[0] === 'launchctl') return ok; // the host's nix-daemon restart: recorded (no launchd here)
      const ran = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
      expected = snapshot();
      return { ...ok, exitCode: ran.status ?? undefined, stderr: ran.stderr };
    });
    this.checkRootUntouched = () => expect(snapshot(), "root's files changed without sudo after the last sudo command").toBe(expected);
  }

  /** Nothing changed under root's directories since the last sudo command. */
  checkRootUntouched: () => void;
}

describe('ferry install as a user (not root): root\'s files through sudo', () => {
  const etc = () => [path.join(root, 'etc'), path.join(root, 'Library')];
  /** The sudo commands issued, the user's temp copy shown as TEMP. */
  const sudoCommands = (r: RecordingRunner) =>
    commandsOf(r)
      .filter((line) => line.startsWith('sudo '))
      .map((line) => line.replace(/ \S*\/ferry-sudo-[^/ ]+\/[^ ]+ /, ' TEMP '));
  const asUser = (extra: Partial<InstallOptions & UninstallOptions> = {}) =>
    options({ platform: 'darwin', env: { HOME: home, PATH: process.env.PATH, FERRY_AS_USER: '1' }, ...extra });

  it('install: sudo mkdir/install for each file under /etc, in order, then launchctl as the user; uninstall: the matching restores, byte for byte', async () => {
    chmodSync(machinesFile(), 0o640); // a mode other than the one install writes: the restore must bring it back
    mkdirSync(path.join(root, 'Library/LaunchDaemons'), { recursive: true });
    writeFileSync(path.join(root, 'Library/LaunchDaemons/org.nixos.nix-daemon.plist'), '');
    const before = treeHash(root);
    const sudo = new SudoRunner(etc);
    runner = sudo;
    await install(asUser({ port: 31999 }));
    sudo.checkRootUntouched();

    const alias = aliasFile();
    expect(sudoCommands(runner)).toEqual([
      `sudo mkdir -m 0755 ${path.join(root, 'etc/ssh')}`,
      `sudo mkdir -m 0755 ${path.dirname(alias)}`,
      `sudo install -m 0644 TEMP ${alias}`,
      `sudo install -m 0644 TEMP ${machinesFile()}`,
      `sudo install -m 0644 TEMP ${nixConfFile()}`,
      'sudo launchctl kickstart -k system/org.nixos.nix-daemon',
    ]);
    // The launchd agent stays the user's: gui/UID, the plist in HOME, never through sudo.
    expect((plist.parse(readFileSync(plistFile(), 'utf8')) as { EnvironmentVariables: Record<string, string> }).EnvironmentVariables.FERRY_AS_USER).toBeUndefined();
    expect(commandsOf(runner).filter((line) => !line.startsWith('sudo '))).toEqual([`launchctl bootout gui/${UID}/dev.ferry.daemon`, `launchctl bootstrap gui/${UID} ${plistFile()}`]);
    // sudo copied the user's private temp copies, removed afterwards.
    expect(sudo.temps.map((temp) => path.basename(temp))).toEqual(['ferry.conf', 'machines', 'nix.conf']);
    for (const temp of sudo.temps) {
      expect(path.basename(path.dirname(temp))).toMatch(/^ferry-sudo-/);
      expect(existsSync(path.dirname(temp))).toBe(false);
    }
    expect(readFileSync(alias, 'utf8')).toMatch(/^\s+Port 31999$/m);
    expect(readFileSync(machinesFile(), 'utf8').startsWith(OTHER_BUILDER + MACHINES_MARKER)).toBe(true);
    expect(statSync(machinesFile()).mode & 0o777).toBe(0o644);
    const text = out.join('\n');
    expect(text).toMatch(/^record \(not run, --root\): sudo install -m 0644 \S+\/ferry-sudo-\w+\/machines /m);
    // Said before the first change to root's files, so sudo's prompt does not come out of nowhere.
    const announced = out.findIndex((line) => /sudo, which may ask for your password once/.test(line));
    expect(announced).toBeGreaterThan(0);
    expect(announced).toBeLessThan(out.findIndex((line) => line.startsWith(`create ${alias}`)));

    // A second run changes nothing, so asks sudo for nothing.
    runner = new SudoRunner(etc);
    expect((await install(asUser())).changes).toBe(0);
    expect(sudoCommands(runner)).toEqual([]);

    const undo = new SudoRunner(etc);
    runner = undo;
    await uninstall(asUser());
    undo.checkRootUntouched();
    expect(sudoCommands(runner)).toEqual([
      `sudo install -m 0644 TEMP ${nixConfFile()}`,
      `sudo install -m 0640 TEMP ${machinesFile()}`,
      `sudo rm -f ${alias}`,
      'sudo launchctl kickstart -k system/org.nixos.nix-daemon',
      `sudo rmdir ${path.dirname(alias)}`,
      `sudo rmdir ${path.join(root, 'etc/ssh')}`,
    ]);
    expect(commandsOf(runner)[0]).toBe(`launchctl bootout gui/${UID}/dev.ferry.daemon`);
    expect(treeHash(root)).toBe(before);
  });

  it('uninstall of a machines file edited after install: ferry\'s line removed through sudo, the mode kept', async () => {
    runner = new SudoRunner(etc);
    await install(asUser());
    const added = 'ssh://linux-box x86_64-linux /k 8 1 - - -\n';
    writeFileSync(machinesFile(), readFileSync(machinesFile(), 'utf8') + added);
    const undo = new SudoRunner(etc);
    runner = undo;
    await uninstall(asUser());
    undo.checkRootUntouched();
    expect(sudoCommands(runner)).toContain(`sudo install -m 0644 TEMP ${machinesFile()}`);
    expect(readFileSync(machinesFile(), 'utf8')).toBe(OTHER_BUILDER + added);
  });

  it('--dry-run prints each sudo command in the plan and runs nothing', async () => {
    const before = treeHash(root);
    await install(asUser({ dryRun: true }));
    expect(runner.commands).toEqual([]);
    expect(treeHash(root)).toBe(before);
    const text = out.join('\n');
    expect(text).toContain(`would update ${machinesFile()}`);
    expect(text).toContain(`as root: sudo install -m 0644 TEMP ${machinesFile()}`);
    expect(text).toContain(`as root: sudo mkdir -m 0755 ${path.join(root, 'etc/ssh')}`);
    expect(text).toContain(`as root: sudo install -m 0644 TEMP ${aliasFile()}`);
  });

  it('a sudo that fails (no password) stops the install naming the command; uninstall still restores everything', async () => {
    const before = treeHash(root);
    runner = new RecordingRunner([], (file) => ({ exitCode: file === 'sudo' ? 1 : 0, signal: undefined, stdout: '', stderr: 'sudo: a terminal is required to read the password', timedOut: false }));
    await expect(install(asUser())).rejects.toThrow(/`sudo mkdir -m 0755 \S+\/etc\/ssh` exited with code 1: sudo: a terminal is required/);
    runner = new SudoRunner(etc);
    await uninstall(asUser());
    expect(treeHash(root)).toBe(before);
  });

  it('--system as a user is refused (all its files are root\'s); a per-user install under sudo is refused', async () => {
    const before = treeHash(root);
    await expect(install(asUser({ system: true }))).rejects.toThrow(/--system changes only root's files .* it must run as root/);
    await expect(uninstall(asUser({ system: true }))).rejects.toThrow(/must run as root/);
    await expect(install(options({ platform: 'darwin', env: { HOME: home, PATH: process.env.PATH, SUDO_USER: 'alice' } }))).rejects.toThrow(
      /running under sudo, so it would install for root, not for alice/,
    );
    // As root, --system needs no sudo at all.
    await install(options({ platform: 'darwin', system: true }));
    expect(commandsOf(runner).filter((line) => line.startsWith('sudo'))).toEqual([]);
    expect(treeHash(root)).not.toBe(before);
    expect(runner.commands).toHaveLength(2);
  });
});

describe('ferry install on Linux (systemd)', () => {
  it('a user unit with the daemon argv and environment; systemctl --user daemon-reload, enable --now, restart', async () => {
    const before = treeHash(root);
    await install(options({ platform: 'linux', port: 31888, daemonArgv: undefined }));
    const unitFile = path.join(home, '.config/systemd/user/ferry.service');
    const unit = parseUnit(readFileSync(unitFile, 'utf8'));
    expect(unit.execStart).toEqual(daemonArgv('/usr/local/bin/node'));
    expect(unit.execStart.at(-1)).toBe('daemon');
    expect(path.isAbsolute(unit.execStart[0]) && path.isAbsolute(unit.execStart.at(-2)!)).toBe(true);
    expect(unit.environment.FERRY_STATE_DIR).toBe(stateDir());
    expect(unit.environment.FERRY_LOG_DIR).toBe(path.join(stateDir(), 'logs'));
    expect(unit.environment.PATH.split(':')).toContain('/nix/var/nix/profiles/default/bin');
    const text = readFileSync(unitFile, 'utf8');
    expect(text).toMatch(/^Restart=always$/m);
    expect(text).toMatch(/^WantedBy=default\.target$/m);
    expect(commandsOf(runner)).toEqual(['systemctl --user daemon-reload', 'systemctl --user enable --now ferry.service', 'systemctl --user restart ferry.service']);
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'linux' }));
    expect(commandsOf(runner)).toEqual(['systemctl --user disable --now ferry.service', 'systemctl --user daemon-reload']);
    expect(treeHash(root)).toBe(before);
  });

  it('--system: /etc/systemd/system/ferry.service and systemctl without --user', async () => {
    await install(options({ platform: 'linux', system: true }));
    expect(readFileSync(path.join(root, 'etc/systemd/system/ferry.service'), 'utf8')).toMatch(/^WantedBy=multi-user\.target$/m);
    expect(commandsOf(runner)).toEqual(['systemctl daemon-reload', 'systemctl enable --now ferry.service', 'systemctl restart ferry.service']);
  });

  it('a failing systemctl stops the install with its output, and what was written is recorded for uninstall', async () => {
    const before = treeHash(root);
    runner = new RecordingRunner([], (file, args) => ({ exitCode: args.includes('enable') ? 1 : 0, signal: undefined, stdout: '', stderr: 'Failed to connect to bus', timedOut: false }));
    await expect(install(options({ platform: 'linux' }))).rejects.toThrow(/systemctl --user enable --now ferry.service` exited with code 1: Failed to connect to bus/);
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'linux' }));
    expect(treeHash(root)).toBe(before);
  });
});

describe('ferry doctor', () => {
  const byName = (checks: Check[], name: string) => checks.find((check) => check.name === name)!;

  it('after install: machines line and alias pass; a missing backend, a wrong alias port and a down daemon each fail with their fix', async () => {
    await install(options({ platform: 'linux', port: 31777 }));
    // Configure tcg so the accelerator check does not depend on this machine's /dev/kvm.
    const configFile = path.join(home, '.config/ferry/ferry.toml');
    writeFileSync(configFile, readFileSync(configFile, 'utf8').replace('# accel = "auto"', 'accel = "tcg"'));

    // A PATH with nix but without qemu.
    const bin = path.join(root, 'bin');
    mkdirSync(bin);
    for (const tool of ['nix-store']) {
      const real = await findOnPath(tool);
      if (real) symlinkSync(real, path.join(bin, tool));
    }
    const env = { HOME: home, PATH: bin };
    let checks = await doctor({ ...options({ platform: 'linux' }), env, runner: undefined });
    expect(byName(checks, 'machines').status).toBe('ok');
    expect(byName(checks, 'ssh alias').status).toBe('ok');
    expect(byName(checks, 'service').status).toBe('ok');
    expect(byName(checks, 'backend')).toMatchObject({ status: 'fail', detail: expect.stringMatching(/qemu-system-x86_64|qemu-system-aarch64/) });
    expect(byName(checks, 'backend').fix).toMatch(/apt-get install qemu-system/);
    expect(byName(checks, 'daemon')).toMatchObject({ status: 'fail', detail: expect.stringContaining('not running'), fix: 'systemctl --user restart ferry.service' });

    // With the real PATH, qemu is found and its version reported.
    checks = await doctor({ ...options({ platform: 'linux' }), runner: undefined });
    expect(byName(checks, 'backend')).toMatchObject({ status: 'ok', detail: expect.stringMatching(/QEMU emulator version/) });

    // The alias edited to another port than the daemon's.
    writeFileSync(aliasFile(), readFileSync(aliasFile(), 'utf8').replace('Port 31777', 'Port 31022'));
    checks = await doctor({ ...options({ platform: 'linux' }), runner: undefined });
    expect(byName(checks, 'ssh alias')).toMatchObject({ status: 'fail', detail: expect.stringContaining('Port is 31022 but the daemon listens on 31777') });
    expect(byName(checks, 'ssh alias').fix).toMatch(/^ferry install/);
    expect(renderChecks(checks)).toMatch(/✗ ssh alias: .*\n {4}fix: ferry install/);

    // The machines line with another key.
    writeFileSync(machinesFile(), readFileSync(machinesFile(), 'utf8').replace(clientKey(), '/root/.ssh/id_other'));
    checks = await doctor({ ...options({ platform: 'linux' }), runner: undefined });
    expect(byName(checks, 'machines')).toMatchObject({ status: 'fail', detail: expect.stringContaining('the key is /root/.ssh/id_other') });
  });

  it('the CLI prints each failing check with its fix and exits non-zero (--json too)', async () => {
    const run = (args: string[]) =>
      execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), ...args], { cwd: REPO, reject: false, extendEnv: false, env: { HOME: home, PATH: process.env.PATH, FERRY_PLATFORM: 'linux' } });
    const installed = await run(['install', '--root', root, '--no-build', '--yes']);
    expect(installed.exitCode, installed.stderr).toBe(0);
    expect(installed.stdout).toContain('record (not run, --root): systemctl --user enable --now ferry.service');
    const text = await run(['doctor', '--root', root]);
    expect(text.exitCode).toBe(1);
    expect(text.stdout).toMatch(/✗ daemon: the ferry daemon is not running.*\n {4}fix: systemctl --user restart ferry\.service/);
    const json = await run(['doctor', '--root', root, '--json']);
    expect(json.exitCode).toBe(1);
    const report = JSON.parse(json.stdout) as { ok: boolean; checks: Check[] };
    expect(report.ok).toBe(false);
    expect(report.checks.find((c) => c.name === 'daemon')?.status).toBe('fail');
    const uninstalled = await run(['uninstall', '--root', root]);
    expect(uninstalled.exitCode, uninstalled.stderr).toBe(0);
    expect(readFileSync(machinesFile(), 'utf8')).toBe(OTHER_BUILDER);
  });
});

/** The "Hardening" issue: an interrupted install, a machines file install created, a new port. */
describe('an install stopped half way is undone by uninstall', () => {
  const recordFile = () => path.join(stateDir(), 'install.json');
  const onDisk = () => JSON.parse(readFileSync(recordFile(), 'utf8')) as { files: { path: string; action: string }[]; dirs: string[] };

  it('the record on disk lists each file and directory before it is made', async () => {
    const seen: string[] = [];
    runner = new RecordingRunner([], (file, args): RunResult => {
      const target = args.at(-1)!;
      if (file === 'sudo' && args[0] === 'mkdir') {
        expect(existsSync(target)).toBe(false);
        expect(onDisk().dirs).toContain(target);
        seen.push(`mkdir ${target}`);
      }
      if (file === 'sudo' && args[0] === 'install') {
        expect(onDisk().files.find((entry) => entry.path === target)?.action).toBe(existsSync(target) ? 'modified' : 'created');
        if (target === aliasFile()) expect(existsSync(target)).toBe(false);
        seen.push(`install ${target}`);
      }
      return { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false };
    });
    await install(options({ platform: 'darwin', env: { HOME: home, PATH: process.env.PATH, FERRY_AS_USER: '1' } }));
    expect(seen).toEqual([`mkdir ${path.join(root, 'etc/ssh')}`, `mkdir ${path.dirname(aliasFile())}`, `install ${aliasFile()}`, `install ${machinesFile()}`, `install ${nixConfFile()}`]);
  });

  it('a change recorded but never made (the machines file still as before) is nothing to restore, not "changed since install"', async () => {
    const before = treeHash(root);
    runner = new RecordingRunner([], (file, args) => ({ exitCode: file === 'sudo' && args.at(-1) === machinesFile() ? 1 : 0, signal: undefined, stdout: '', stderr: 'sudo: a password is required', timedOut: false }));
    const asUser = options({ platform: 'darwin', env: { HOME: home, PATH: process.env.PATH, FERRY_AS_USER: '1' } });
    await expect(install(asUser)).rejects.toThrow(/sudo install -m 0644 \S+ \S+\/etc\/nix\/machines` exited with code 1/);
    expect(onDisk().files.find((entry) => entry.path === machinesFile())?.action).toBe('modified');
    out = [];
    runner = new RecordingRunner([], (file, args) => {
      if (file === 'sudo') spawnSync(args[0], args.slice(1));
      return { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false };
    });
    const result = await uninstall(asUser);
    expect(result.kept).toEqual([]);
    expect(out.join('\n')).toContain(`nothing to restore in ${machinesFile()}: it is as it was before install`);
    expect(treeHash(root)).toBe(before);
  });

  it('a rewrite stopped before it landed (a second install with --port): the file still holds the first install\'s bytes, and uninstall removes it', async () => {
    const before = treeHash(root);
    const asUser = (extra: Partial<InstallOptions> = {}) => options({ platform: 'darwin', env: { HOME: home, PATH: process.env.PATH, FERRY_AS_USER: '1' }, ...extra });
    const sudoRuns = (fail?: string) =>
      new RecordingRunner([], (file, args) => {
        if (file !== 'sudo') return { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false };
        if (args.at(-1) === fail) return { exitCode: 1, signal: undefined, stdout: '', stderr: 'sudo: interrupted', timedOut: false };
        return { exitCode: spawnSync(args[0], args.slice(1)).status ?? 1, signal: undefined, stdout: '', stderr: '', timedOut: false };
      });
    runner = sudoRuns();
    await install(asUser({ port: 31999 }));
    runner = sudoRuns(aliasFile());
    await expect(install(asUser({ port: 32000 }))).rejects.toThrow(/exited with code 1: sudo: interrupted/);
    expect(readFileSync(aliasFile(), 'utf8')).toMatch(/^\s+Port 31999$/m);
    runner = sudoRuns();
    const result = await uninstall(asUser());
    expect(result.kept).toEqual([]);
    expect(treeHash(root)).toBe(before);
  });

  it('SIGKILL of the real `ferry install` in the middle of the image build: `ferry uninstall` leaves the root as it was', async () => {
    const before = treeHash(root);
    // The debian preset's first host command is one of apt's or dpkg's (which one depends on what
    // its private apt state already holds): each stub says it has been reached (keys, ferry.toml
    // and the guest keys are made by then) and then hangs.
    const stubs = await mkdtemp(path.join(tmpdir(), 'ferry-stubs-'));
    const reached = path.join(stubs, 'reached');
    for (const tool of ['apt-get', 'apt-cache', 'dpkg', 'dpkg-deb', 'mmdebstrap']) {
      writeFileSync(path.join(stubs, tool), `#!/bin/sh\necho $$ > ${reached}.tmp && mv ${reached}.tmp ${reached}\nexec sleep 600\n`, { mode: 0o755 });
    }
    const env = { HOME: home, PATH: `${stubs}:${process.env.PATH}`, FERRY_PLATFORM: 'linux' };
    const cli = (args: string[]) => execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), ...args, '--root', root, '--yes'], { cwd: REPO, reject: false, extendEnv: false, env });
    const installing = cli(['install']);
    try {
      for (let waited = 0; !existsSync(reached); waited += 50) {
        if (waited > 60_000 || installing.exitCode !== null) throw new Error(`install never reached apt or dpkg: ${(await installing).stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      installing.kill('SIGKILL');
      expect((await installing).signal).toBe('SIGKILL');
    } finally {
      if (existsSync(reached)) spawnSync('kill', ['-KILL', readFileSync(reached, 'utf8').trim()]);
      await rm(stubs, { recursive: true, force: true });
    }
    expect(existsSync(path.join(stateDir(), 'keys/guest_ssh_host_ed25519_key'))).toBe(true);
    // What a kill while writing the system disk leaves: the writer's temporary, named by its pid.
    const images = path.join(home, '.cache/ferry/images');
    const temporary = path.join(images, `system-0123.img.tmp-${installing.pid}`);
    writeFileSync(temporary, 'half an image');

    const uninstalled = await cli(['uninstall']);
    expect(uninstalled.exitCode, uninstalled.stderr).toBe(0);
    expect(uninstalled.stdout).toContain(`remove ${temporary} (left by an image build that was stopped)`);
    expect(uninstalled.stdout).not.toMatch(/^keep /m);
    expect(treeHash(root)).toBe(before);
  });
});

describe('uninstall of a machines file install created', () => {
  it('keeps the lines the user added after install, without ferry\'s', async () => {
    rmSync(machinesFile());
    await install(options({ platform: 'darwin' }));
    const added = 'ssh://linux-box x86_64-linux /k 8 1 - - -\n';
    writeFileSync(machinesFile(), readFileSync(machinesFile(), 'utf8') + added);
    const result = await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(machinesFile(), 'utf8')).toBe(added);
    expect(result.kept).toEqual([]);
  });

  it('removes it when nothing but whitespace is left besides ferry\'s line', async () => {
    rmSync(machinesFile());
    const before = treeHash(root);
    await install(options({ platform: 'darwin' }));
    writeFileSync(machinesFile(), `\n${readFileSync(machinesFile(), 'utf8')}  \n\n`);
    await uninstall(options({ platform: 'darwin' }));
    expect(existsSync(machinesFile())).toBe(false);
    expect(treeHash(root)).toBe(before);
  });
});

describe('a new port restarts the daemon, which binds its port only when it starts', () => {
  it('launchd: a second install with --port kickstarts the agent; with the same port, nothing', async () => {
    await install(options({ platform: 'darwin', port: 31999 }));
    runner = new RecordingRunner();
    await install(options({ platform: 'darwin', port: 31999 }));
    expect(commandsOf(runner)).toEqual([`launchctl print gui/${UID}/dev.ferry.daemon`]);

    out = [];
    runner = new RecordingRunner();
    const plan = await install(options({ platform: 'darwin', port: 32000, dryRun: true }));
    expect(runner.commands).toEqual([]);
    expect(plan.commands.map((c) => [c.file, ...c.args].join(' '))).toEqual([`launchctl kickstart -k gui/${UID}/dev.ferry.daemon`]);
    expect(out).toContain(`would run launchctl kickstart -k gui/${UID}/dev.ferry.daemon`);
    expect(out.join('\n')).toContain('would restart the daemon: it takes [daemon] listen and port only when it starts (ferry.toml: 127.0.0.1:31999 → 127.0.0.1:32000)');

    out = [];
    await install(options({ platform: 'darwin', port: 32000 }));
    expect(commandsOf(runner)).toEqual([`launchctl print gui/${UID}/dev.ferry.daemon`, `launchctl kickstart -k gui/${UID}/dev.ferry.daemon`]);
    expect(readFileSync(aliasFile(), 'utf8')).toMatch(/^\s+Port 32000$/m);
  });

  it('launchd --system: the system domain', async () => {
    await install(options({ platform: 'darwin', system: true }));
    runner = new RecordingRunner();
    await install(options({ platform: 'darwin', system: true, port: 32001 }));
    expect(commandsOf(runner)).toEqual(['launchctl print system/dev.ferry.daemon', 'launchctl kickstart -k system/dev.ferry.daemon']);
  });

  it('systemd: systemctl --user restart; also when ferry.toml\'s port was edited by hand and install rewrites the alias', async () => {
    await install(options({ platform: 'linux' }));
    runner = new RecordingRunner();
    await install(options({ platform: 'linux', port: 32002 }));
    expect(commandsOf(runner)).toEqual(['systemctl --user is-active --quiet ferry.service', 'systemctl --user restart ferry.service']);

    const configFile = path.join(home, '.config/ferry/ferry.toml');
    writeFileSync(configFile, readFileSync(configFile, 'utf8').replace('port = 32002', 'port = 32003'));
    runner = new RecordingRunner();
    await install(options({ platform: 'linux' }));
    expect(commandsOf(runner)).toEqual(['systemctl --user is-active --quiet ferry.service', 'systemctl --user restart ferry.service']);
    expect(out.join('\n')).toContain('(the alias ferry-builder now goes to 127.0.0.1:32003)');

    runner = new RecordingRunner();
    await install(options({ platform: 'linux' }));
    expect(commandsOf(runner)).toEqual(['systemctl --user is-active --quiet ferry.service']);
  });
});

describe('builders-use-substitutes for the host\'s Nix', () => {
  const daemonPlist = (label: string) => {
    mkdirSync(path.join(root, 'Library/LaunchDaemons'), { recursive: true });
    writeFileSync(path.join(root, `Library/LaunchDaemons/${label}.plist`), '');
  };

  it('a line added to nix.conf, the host nix-daemon restarted; a second install changes nothing; uninstall: nix.conf byte for byte, restarted again', async () => {
    daemonPlist('org.nixos.nix-daemon');
    const before = treeHash(root);
    await install(options({ platform: 'darwin' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(NIX_CONF_WIRED);
    expect(commandsOf(runner)).toContain('launchctl kickstart -k system/org.nixos.nix-daemon');
    const text = out.join('\n');
    expect(text).toContain(`update ${nixConfFile()} (builders-use-substitutes = true, in the host Nix)`);
    // Said before it happens, with what it costs.
    expect(text).toMatch(/restart the host's nix-daemon \(launchctl kickstart -k system\/org\.nixos\.nix-daemon\) so it reads builders-use-substitutes: .*builds running in it now are interrupted/);

    runner = new RecordingRunner();
    out = [];
    expect((await install(options({ platform: 'darwin' }))).changes).toBe(0);
    expect(commandsOf(runner)).not.toContain('launchctl kickstart -k system/org.nixos.nix-daemon');
    expect(out).toContain(`unchanged ${nixConfFile()} (builders-use-substitutes = true)`);

    runner = new RecordingRunner();
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(NIX_CONF);
    expect(commandsOf(runner)).toEqual([`launchctl bootout gui/${UID}/dev.ferry.daemon`, 'launchctl kickstart -k system/org.nixos.nix-daemon']);
    expect(treeHash(root)).toBe(before);
  });

  it('--dry-run: the edit and the restart are in the plan; nothing is written or run', async () => {
    daemonPlist('org.nixos.nix-daemon');
    const before = treeHash(root);
    await install(options({ platform: 'darwin', dryRun: true }));
    expect(treeHash(root)).toBe(before);
    expect(runner.commands).toEqual([]);
    const text = out.join('\n');
    expect(text).toContain(`would update ${nixConfFile()} (builders-use-substitutes = true, in the host Nix)`);
    expect(text).toMatch(/would restart the host's nix-daemon \(launchctl kickstart -k system\/org\.nixos\.nix-daemon\)/);
    expect(text).toContain('  as root: launchctl kickstart -k system/org.nixos.nix-daemon');
  });

  it('a nix.conf that sets it to false: said, and that line changed; uninstall puts it back; edited since, only ferry\'s line goes', async () => {
    const original = 'max-jobs = 4\nbuilders-use-substitutes = false # slow link\nsandbox = true\n';
    writeFileSync(nixConfFile(), original);
    await install(options({ platform: 'darwin' }));
    expect(out.join('\n')).toContain(`note: ${nixConfFile()} has \`builders-use-substitutes = false # slow link\`: ferry changes that line to builders-use-substitutes = true`);
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(`max-jobs = 4\n${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\nsandbox = true\n`);
    // Idempotent: ferry's line is now the one in effect.
    expect((await install(options({ platform: 'darwin' }))).changes).toBe(0);
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(original);

    // Again, and the user adds a line after install: uninstall takes out ferry's line only.
    await install(options({ platform: 'darwin' }));
    writeFileSync(nixConfFile(), `${readFileSync(nixConfFile(), 'utf8')}keep-outputs = true\n`);
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe('max-jobs = 4\nsandbox = true\nkeep-outputs = true\n');
  });

  it('already true in nix.conf (the user\'s own line): nothing written, nothing restarted', async () => {
    daemonPlist('org.nixos.nix-daemon');
    writeFileSync(nixConfFile(), 'builders-use-substitutes = true\n');
    await install(options({ platform: 'darwin' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe('builders-use-substitutes = true\n');
    expect(commandsOf(runner).filter((line) => line.includes('nix-daemon'))).toEqual([]);
  });

  it('Determinate Nix: nix.conf (which it rewrites) left alone, the line in nix.custom.conf, its own daemon restarted; uninstall removes the file it created', async () => {
    daemonPlist('systems.determinate.nix-daemon');
    const determinateConf = '# Generated by https://github.com/DeterminateSystems/nix-installer.\n\nextra-experimental-features = nix-command flakes\n\n!include nix.custom.conf\n';
    writeFileSync(nixConfFile(), determinateConf);
    const before = treeHash(root);
    await install(options({ platform: 'darwin' }));
    const custom = path.join(root, 'etc/nix/nix.custom.conf');
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(determinateConf);
    expect(readFileSync(custom, 'utf8')).toBe(`${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\n`);
    expect(out.join('\n')).toContain(`create ${custom} (builders-use-substitutes = true, in Determinate Nix's file for your settings`);
    expect(commandsOf(runner)).toContain('launchctl kickstart -k system/systems.determinate.nix-daemon');
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'darwin' }));
    expect(existsSync(custom)).toBe(false);
    expect(commandsOf(runner)).toContain('launchctl kickstart -k system/systems.determinate.nix-daemon');
    expect(treeHash(root)).toBe(before);
  });

  it('Determinate Nix with a nix.custom.conf of the user\'s: the line appended there, and only it removed later', async () => {
    writeFileSync(nixConfFile(), '!include nix.custom.conf\n');
    const custom = path.join(root, 'etc/nix/nix.custom.conf');
    writeFileSync(custom, 'trusted-users = root alice\n');
    await install(options({ platform: 'darwin' }));
    expect(readFileSync(custom, 'utf8')).toBe(`trusted-users = root alice\n${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\n`);
    writeFileSync(custom, `${readFileSync(custom, 'utf8')}max-jobs = 8\n`);
    await uninstall(options({ platform: 'darwin' }));
    expect(readFileSync(custom, 'utf8')).toBe('trusted-users = root alice\nmax-jobs = 8\n');
  });

  it('Linux without a nix.conf: one is created, `systemctl restart nix-daemon.service` where the unit exists; uninstall removes it', async () => {
    rmSync(nixConfFile());
    mkdirSync(path.join(root, 'etc/systemd/system'), { recursive: true });
    writeFileSync(path.join(root, 'etc/systemd/system/nix-daemon.service'), '');
    const before = treeHash(root);
    await install(options({ platform: 'linux' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(`${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\n`);
    expect(commandsOf(runner)).toContain('systemctl restart nix-daemon.service');
    runner = new RecordingRunner();
    await uninstall(options({ platform: 'linux' }));
    expect(commandsOf(runner)).toContain('systemctl restart nix-daemon.service');
    expect(treeHash(root)).toBe(before);
  });

  it('no nix-daemon service (a single-user Nix): the file is written and nothing restarted, which is said', async () => {
    await install(options({ platform: 'linux' }));
    expect(readFileSync(nixConfFile(), 'utf8')).toBe(NIX_CONF_WIRED);
    expect(commandsOf(runner).filter((line) => line.includes('nix-daemon'))).toEqual([]);
    expect(out.join('\n')).toMatch(/no nix-daemon service found to restart/);
  });
});
