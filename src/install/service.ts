/**
 * What the service manager runs: the absolute argv of `ferry daemon` and its environment, and the
 * launchd plist (launchd/ferry-daemon.plist's static keys with those filled in) / systemd unit
 * that carry them, and the launchctl / systemctl commands that load and unload them. The daemon gets ferry's directories as explicit FERRY_* variables, so it uses
 * exactly the paths install used whatever HOME and XDG look like under launchd or systemd.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import plist, { type PlistObject, type PlistValue } from 'plist';
import { PACKAGE_FILES, type FerryPaths } from '../config/paths.js';
import { DAEMON_NODE_FLAGS } from '../daemon/node-flags.js';
import { ExitCode, FerryError } from '../errors.js';
import { LAUNCHD_LABEL, SYSTEMD_UNIT } from './layout.js';

/** Where Nix (multi-user install, nix-darwin/NixOS) and the backends (Homebrew) live. */
export const SERVICE_PATH_DIRS = [
  '/nix/var/nix/profiles/default/bin',
  '/run/current-system/sw/bin',
  '/opt/homebrew/bin',
  '/usr/local/bin',
  '/usr/bin',
  '/bin',
  '/usr/sbin',
  '/sbin',
];

/**
 * `node FLAGS …/cli.js daemon`, absolute (FLAGS: DAEMON_NODE_FLAGS). Running from source (tsx, no dist/), the same through tsx's
 * loader by absolute URL, since launchd and systemd start in `/` where `--import tsx` resolves nothing.
 */
export function daemonArgv(nodePath = process.execPath): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const built = path.resolve(here, '..', 'cli.js');
  if (existsSync(built)) return [nodePath, ...DAEMON_NODE_FLAGS, built, 'daemon'];
  const source = path.resolve(here, '..', 'cli.ts');
  let tsx = 'tsx';
  try {
    const loader = path.join(path.dirname(createRequire(import.meta.url).resolve('tsx')), 'loader.mjs');
    if (existsSync(loader)) tsx = pathToFileURL(loader).href;
  } catch {
    // no tsx next to ferry: leave the bare name, resolved from the working directory
  }
  return [nodePath, ...DAEMON_NODE_FLAGS, '--import', tsx, source, 'daemon'];
}

const INSTALL_ONLY_VARS = ['FERRY_PLATFORM', 'FERRY_AS_USER'];

export function daemonEnvironment(paths: FerryPaths, env: Readonly<Record<string, string | undefined>>, nodePath = process.execPath): Record<string, string> {
  const dirs = [...SERVICE_PATH_DIRS];
  const nodeDir = path.dirname(nodePath);
  if (!dirs.includes(nodeDir)) dirs.push(nodeDir);
  const vars: Record<string, string> = { PATH: dirs.join(':') };
  // Any other FERRY_* setting the user runs with (e.g. FERRY_DEBUG) goes along.
  // Not the install-time test hooks: they describe who runs `ferry install`, not the daemon.
  for (const [name, value] of Object.entries(env)) if (name.startsWith('FERRY_') && !INSTALL_ONLY_VARS.includes(name) && value) vars[name] = value;
  vars.FERRY_CONFIG = paths.configFile;
  vars.FERRY_STATE_DIR = paths.stateDir;
  vars.FERRY_CACHE_DIR = paths.cacheDir;
  vars.FERRY_LOG_DIR = paths.logDir;
  return vars;
}

/**
 * launchd/ferry-daemon.plist in ferry's package: two levels up from this module, whether it runs
 * as src/install/service.ts (tsx) or as dist/install/service.js (built).
 */
export function launchdTemplatePath(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', PACKAGE_FILES.launchdTemplate);
}

/**
 * How long the service manager waits after SIGTERM before SIGKILL: the daemon powers the guest off
 * cleanly first, and its stop ladder (src/vm/stop-ladder.ts) allows the guest 30 s, then the
 * backend's own stop 10 s more. launchd's default ExitTimeOut is 20 s (LAUNCHD_DEFAULT_EXIT_TIMEOUT
 * in launchd's core.c), short of that: a poweroff slower than 20 s would be SIGKILLed there, and
 * launchd's SIGTERM to the job's process group would then end qemu with the guest still up (found by
 * test/e2e/install-launchd.test.ts; 11 s under tcg here). One value for both service managers.
 */
export const SERVICE_STOP_TIMEOUT_S = 90;

/** The keys install fills in; the template holds every other key. */
export const PLIST_FILLED_KEYS = ['ProgramArguments', 'EnvironmentVariables', 'StandardOutPath', 'StandardErrorPath', 'ExitTimeOut'] as const;

/** The template's static keys (Label, RunAtLoad, KeepAlive, …), checked against what install relies on. */
export function readLaunchdTemplate(file = launchdTemplatePath()): PlistObject {
  const broken = (problem: string, cause?: unknown) =>
    new FerryError(`ferry's launchd template ${file}: ${problem}`, { exitCode: ExitCode.Software, hint: 'the template ships in ferry\'s package beside src/ and dist/; reinstall ferry if it is missing', cause });
  let parsed: PlistValue;
  try {
    parsed = plist.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw broken((error as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `unreadable (${(error as Error).message})`, error);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || Buffer.isBuffer(parsed) || parsed instanceof Date) {
    throw broken('expected a plist whose top level is a dict');
  }
  const template = parsed as PlistObject;
  // launchctl bootout/print and the plist's file name use the label from paths.ts.
  if (template.Label !== LAUNCHD_LABEL) {
    throw broken(`Label is ${JSON.stringify(template.Label)}, but ferry loads and unloads the job as ${JSON.stringify(LAUNCHD_LABEL)} (SERVICE_NAMES.launchdLabel in src/config/paths.ts); make them the same`);
  }
  const filled = PLIST_FILLED_KEYS.filter((key) => key in template);
  if (filled.length > 0) throw broken(`${filled.join(', ')} ${filled.length === 1 ? 'is' : 'are'} filled in by install; remove ${filled.length === 1 ? 'it' : 'them'} from the template`);
  return template;
}

/** The template's keys, then the program, its environment and its output log. */
export function renderPlist(argv: readonly string[], environment: Record<string, string>, paths: FerryPaths, template = readLaunchdTemplate()): string {
  const filled: Record<(typeof PLIST_FILLED_KEYS)[number], PlistObject[string]> = {
    ProgramArguments: [...argv],
    EnvironmentVariables: environment,
    StandardOutPath: paths.daemonOutput,
    StandardErrorPath: paths.daemonOutput,
    ExitTimeOut: SERVICE_STOP_TIMEOUT_S,
  };
  return plist.build({ ...template, ...filled }) + '\n';
}

/** The service file install writes: the launchd plist, or the systemd unit (system-wide or per user). */
export function renderServiceFile(kind: 'launchd' | 'systemd', argv: readonly string[], environment: Record<string, string>, paths: FerryPaths): string {
  return kind === 'launchd' ? renderPlist(argv, environment, paths) : renderUnit(argv, environment, paths, paths.system);
}

export function renderUnit(argv: readonly string[], environment: Record<string, string>, paths: FerryPaths, system: boolean): string {
  return [
    '# generated by `ferry install`; `ferry uninstall` removes it',
    '[Unit]',
    'Description=ferry: the Linux builder VM for Nix',
    'After=network.target',
    '',
    '[Service]',
    `ExecStart=${argv.map(quoteSystemd).join(' ')}`,
    ...Object.entries(environment).map(([name, value]) => `Environment=${quoteSystemd(`${name}=${value}`)}`),
    'Restart=always',
    'RestartSec=5',
    // The daemon powers the guest off cleanly on SIGTERM; give it the time that takes.
    'KillSignal=SIGTERM',
    `TimeoutStopSec=${SERVICE_STOP_TIMEOUT_S}`,
    `StandardOutput=append:${paths.daemonOutput}`,
    `StandardError=append:${paths.daemonOutput}`,
    '',
    '[Install]',
    `WantedBy=${system ? 'multi-user.target' : 'default.target'}`,
    '',
  ].join('\n');
}

/** One word for systemd's command-line and Environment= syntax: quoted when needed, `%` doubled. */
export function quoteSystemd(word: string): string {
  const escaped = word.replace(/%/g, '%%');
  if (/^[^\s"'\\;]+$/.test(escaped) && escaped !== '') return escaped;
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Splits a systemd ExecStart=/Environment= value into words (double quotes, backslash escapes, %%). */
export function splitSystemdWords(value: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < value.length) {
    while (i < value.length && /\s/.test(value[i])) i++;
    if (i >= value.length) break;
    let word = '';
    let quote: string | undefined;
    for (; i < value.length; i++) {
      const c = value[i];
      if (quote) {
        if (c === quote) quote = undefined;
        else if (c === '\\' && i + 1 < value.length) word += value[++i];
        else word += c;
      } else if (c === '"' || c === "'") quote = c;
      else if (/\s/.test(c)) break;
      else if (c === '\\' && i + 1 < value.length) word += value[++i];
      else word += c;
    }
    words.push(word.replace(/%%/g, '%'));
  }
  return words;
}

/** ExecStart argv, Environment variables and RestartSec (seconds) of a unit file, as systemd would read them. */
export function parseUnit(text: string): { execStart: string[]; environment: Record<string, string>; restartSec: number } {
  let execStart: string[] = [];
  const environment: Record<string, string> = {};
  let restartSec = 0.1; // systemd's default
  for (const line of text.split('\n')) {
    const match = /^(ExecStart|Environment|RestartSec)=(.*)$/.exec(line.trim());
    if (!match) continue;
    if (match[1] === 'ExecStart') execStart = splitSystemdWords(match[2]);
    else if (match[1] === 'RestartSec') restartSec = Number.parseFloat(match[2]);
    else
      for (const assignment of splitSystemdWords(match[2])) {
        const eq = assignment.indexOf('=');
        if (eq > 0) environment[assignment.slice(0, eq)] = assignment.slice(eq + 1);
      }
  }
  return { execStart, environment, restartSec };
}

/**
 * How `systemctl --user start` runs a parsed unit: ExecStart in `/`, with the unit's Environment=
 * plus HOME and USER and nothing else. For the checks that play systemd's part where no systemd
 * runs (the install e2e test, the soak, scripts/check-platform.ts): one statement of it.
 */
export function userUnitLaunch(unit: ReturnType<typeof parseUnit>, session: { home: string; user: string }): { file: string; args: string[]; cwd: string; env: Record<string, string> } {
  const [file, ...args] = unit.execStart;
  if (file === undefined) throw new Error('the unit has no ExecStart');
  return { file, args, cwd: '/', env: { ...unit.environment, HOME: session.home, USER: session.user } };
}

export interface ServiceCommand {
  file: string;
  args: string[];
  /** A failure is expected and fine (bootout of a service that is not loaded). */
  mayFail?: boolean;
}

export function launchdDomain(system: boolean, uid: number): string {
  return system ? 'system' : `gui/${uid}`;
}

/** (Re)load: bootout of an older one (ignoring "not loaded"), then bootstrap. */
export function loadCommands(kind: 'launchd' | 'systemd', system: boolean, uid: number, serviceFile: string): ServiceCommand[] {
  if (kind === 'launchd') {
    const domain = launchdDomain(system, uid);
    return [
      { file: 'launchctl', args: ['bootout', `${domain}/${LAUNCHD_LABEL}`], mayFail: true },
      { file: 'launchctl', args: ['bootstrap', domain, serviceFile] },
    ];
  }
  const scope = system ? [] : ['--user'];
  return [
    { file: 'systemctl', args: [...scope, 'daemon-reload'] },
    { file: 'systemctl', args: [...scope, 'enable', '--now', SYSTEMD_UNIT] },
    // enable --now does not restart a unit that already runs the old command line.
    restartCommand(kind, system, uid),
  ];
}

/** Is it loaded/running? (Used when nothing changed, to start it only if it is not.) */
export function isLoadedCommand(kind: 'launchd' | 'systemd', system: boolean, uid: number): ServiceCommand {
  if (kind === 'launchd') return { file: 'launchctl', args: ['print', `${launchdDomain(system, uid)}/${LAUNCHD_LABEL}`], mayFail: true };
  return { file: 'systemctl', args: [...(system ? [] : ['--user']), 'is-active', '--quiet', SYSTEMD_UNIT], mayFail: true };
}

/**
 * Restarts a loaded service in place, so the daemon reads ferry.toml again from the start: launchd's
 * `kickstart -k` stops the running job (SIGTERM) and starts it without unloading it.
 */
export function restartCommand(kind: 'launchd' | 'systemd', system: boolean, uid: number): ServiceCommand {
  if (kind === 'launchd') return { file: 'launchctl', args: ['kickstart', '-k', `${launchdDomain(system, uid)}/${LAUNCHD_LABEL}`] };
  return { file: 'systemctl', args: [...(system ? [] : ['--user']), 'restart', SYSTEMD_UNIT] };
}

export function unloadCommands(kind: 'launchd' | 'systemd', system: boolean, uid: number): { before: ServiceCommand[]; after: ServiceCommand[] } {
  if (kind === 'launchd') return { before: [{ file: 'launchctl', args: ['bootout', `${launchdDomain(system, uid)}/${LAUNCHD_LABEL}`], mayFail: true }], after: [] };
  const scope = system ? [] : ['--user'];
  return {
    before: [{ file: 'systemctl', args: [...scope, 'disable', '--now', SYSTEMD_UNIT], mayFail: true }],
    after: [{ file: 'systemctl', args: [...scope, 'daemon-reload'], mayFail: true }],
  };
}
