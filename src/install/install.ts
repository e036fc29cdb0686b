/**
 * `ferry install`: keys, ferry.toml, the image, the service (launchd or systemd), the Nix wiring
 * (machines line, ssh alias, builders-use-substitutes) — each step compared with what is there, written only when it
 * differs, noted in the install record and reported. A second run changes nothing and says so;
 * `--dry-run` reports the same decisions and writes nothing. The state disk is never touched, so
 * an upgrade (install again with a newer ferry) keeps the guest's /nix.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { currentHost, type HostInfo } from '../config/host.js';
import { parseConfigText } from '../config/load.js';
import { renderDefaultConfig } from '../config/render.js';
import type { FerryConfig } from '../config/types.js';
import { BUILDER_ALIAS, frontAddress } from '../daemon/ssh-alias.js';
import { ExitCode, FerryError } from '../errors.js';
import { buildImage } from '../image/build.js';
import { ferryKey, ferryKeys } from '../keys/ferry-keys.js';
import { publicKeyWithoutComment } from '../keys/public-key-line.js';
import { writerProgress, type Progress } from '../ui/progress.js';
import { createExecaRunner, ProcessError, RecordingRunner, type Runner } from '../process/runner.js';
import { FileWriter, readIfExists, type Report, type WriteOutcome } from './files.js';
import { SystemWrites } from './privileged.js';
import { installLayout, LAUNCHD_LABEL, SYSTEMD_UNIT, type InstallLayout } from './layout.js';
import {
  builderFields,
  buildersOverride,
  machinesLine,
  managedByNixStore,
  NIX_DARWIN_MODULE_HINT,
  nixDarwinSnippet,
  sshAliasText,
  withFerryLine,
} from './nix-wiring.js';
import { emptyRecord, readRecord, saveRecord, type InstallRecord } from './record.js';
import { wireBuildersUseSubstitutes } from './substitutes.js';
import { daemonArgv, daemonEnvironment, isLoadedCommand, loadCommands, renderServiceFile, restartCommand, type ServiceCommand } from './service.js';

export interface HostOptions {
  /** System-wide install (`--system`). */
  system?: boolean;
  /** File system root prefix (`--root`); '/' by default. With another root no command is really run. */
  root?: string;
  /** Default: process.platform (tests force 'darwin'). */
  platform?: NodeJS.Platform;
  env?: Readonly<Record<string, string | undefined>>;
  /** Default: $HOME from `env`, else os.homedir(). */
  homeDir?: string;
  /** For launchd's gui/UID domain. Default: the current uid. */
  uid?: number;
  /**
   * ferry runs as a user, not root: changes to root's files (under /etc …) go through sudo.
   * Default: the effective uid is not 0 — or FERRY_AS_USER=1 in `env` (tests: a --root tree
   * behaves as the real system does for a user). Under --root otherwise false.
   */
  asUser?: boolean;
  /** Runs launchctl/systemctl (and doctor's probes). Default: execa, or a recorder under --root. */
  runner?: Runner;
  /** Where lines for the user go (default: stdout). */
  out?: Report;
}

export interface InstallOptions extends HostOptions {
  port?: number;
  dryRun?: boolean;
  /** Build the image now (default true; the daemon also builds it when it starts). */
  build?: boolean;
  progress?: Progress;
  /** The daemon's argv (default: this node and this ferry's cli.js + `daemon`). */
  daemonArgv?: string[];
  nodePath?: string;
}

export interface InstallResult {
  layout: InstallLayout;
  record: InstallRecord;
  /** Files and directories created or changed (or that would be, in a dry run). */
  changes: number;
  commands: ServiceCommand[];
  /** The nix-darwin module text, when nix.conf/machines are managed by nix-darwin. */
  nixDarwinSnippet?: string;
}

export interface HostContext {
  platform: NodeJS.Platform;
  system: boolean;
  root: string;
  env: Readonly<Record<string, string | undefined>>;
  homeDir: string;
  uid: number;
  runner: Runner;
  out: Report;
  host: HostInfo;
  layout: InstallLayout;
  /** True when commands only get recorded (a root prefix other than '/'). */
  recordOnly: boolean;
  /** ferry runs as a user: root's files are changed through sudo (see privileged.ts). */
  asUser: boolean;
}

export function hostContext(options: HostOptions): HostContext {
  const env = options.env ?? process.env;
  const platform = options.platform ?? process.platform;
  const root = path.resolve(options.root ?? '/');
  const homeDir = options.homeDir ?? (env.HOME && path.isAbsolute(env.HOME) ? env.HOME : os.homedir());
  const system = options.system ?? false;
  const recordOnly = root !== '/';
  const out = options.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const euid = process.geteuid?.() ?? 0;
  const asUser = options.asUser ?? (env.FERRY_AS_USER === '1' || (!recordOnly && euid !== 0));
  return {
    platform,
    system,
    root,
    env,
    homeDir,
    uid: options.uid ?? process.getuid?.() ?? 0,
    runner: options.runner ?? (recordOnly ? new RecordingRunner() : createExecaRunner()),
    out,
    host: { ...currentHost(), platform, homeDir },
    layout: installLayout({ platform, system, root, homeDir, env }),
    recordOnly,
    asUser,
  };
}

/**
 * Who runs ferry must fit the install: a system-wide one is root's in every file (/etc/ferry,
 * /var/lib/ferry, the LaunchDaemon), so it runs as root; a per-user one runs as that user (under
 * sudo, HOME, the state dir, the gui/UID domain and every file's owner would be root's).
 */
export function checkInvoker(ctx: HostContext, command: 'install' | 'uninstall'): void {
  if (ctx.system && ctx.asUser) {
    throw new FerryError(`ferry ${command} --system changes only root's files (the ${ctx.layout.serviceKind === 'launchd' ? 'LaunchDaemon' : 'system unit'}, /etc/ferry, /var/lib/ferry): it must run as root`, {
      exitCode: ExitCode.Usage,
      hint: `sudo ferry ${command} --system — or, for your user only, \`ferry ${command}\` without --system (it asks sudo itself for the files under /etc)`,
    });
  }
  const sudoUser = ctx.env.SUDO_USER;
  if (command === 'install' && !ctx.system && !ctx.asUser && sudoUser && sudoUser !== 'root') {
    throw new FerryError(`ferry install is running under sudo, so it would install for root, not for ${sudoUser} (HOME, the state dir and the ${ctx.layout.serviceKind === 'launchd' ? 'LaunchAgent' : 'user unit'} would all be root's)`, {
      exitCode: ExitCode.Usage,
      hint: `run \`ferry install\` as ${sudoUser}, without sudo: it asks sudo itself for the files under /etc; or \`sudo ferry install --system\` for a system-wide daemon (to install for root itself: \`env -u SUDO_USER ferry install\`)`,
    });
  }
}

export async function install(options: InstallOptions = {}): Promise<InstallResult> {
  const ctx = hostContext(options);
  checkInvoker(ctx, 'install');
  const { layout, out } = ctx;
  const { paths } = layout;
  const dryRun = options.dryRun ?? false;
  const record = readRecord(paths.installRecord) ?? emptyRecord(ctx.platform, ctx.system, ctx.root);
  const system = new SystemWrites({ runner: ctx.runner, root: ctx.root, escalate: ctx.asUser, dryRun, report: out, recordOnly: ctx.recordOnly });
  const writer = new FileWriter(record, dryRun, out, system, paths.installRecord);
  const commands: ServiceCommand[] = [];
  let snippet: string | undefined;
  out(`${dryRun ? 'ferry install --dry-run: the plan (nothing is changed)' : 'ferry install'} — ${ctx.system ? 'system-wide' : 'for this user'}, ${ctx.platform === 'darwin' ? 'launchd' : 'systemd'}${ctx.recordOnly ? `, under ${ctx.root}` : ''}`);

  try {
    // 1. Keys: the one the host's nix-daemon logs in with, and the daemon's host key that Nix pins.
    const hostKeyLine = await ensureKeys(writer, paths, dryRun);

    // 2. ferry.toml, with defaults if absent (and the port, if asked for).
    const { config, frontBefore } = await writeConfig(writer, ctx, options.port, dryRun);
    const port = config.daemon.port;
    const front = frontAddress(config.daemon.listen, port);

    // 3. The image, so the first build does not wait for it.
    if (options.build === false) out('skip the image build (--no-build): the daemon builds it when it starts');
    else if (dryRun) out(`would build the image (${config.guest.preset}, ${config.guest.system}) into ${paths.imagesDir}`);
    else await buildWithProgress(writer, config, paths, options.progress, out);

    // 4. The service.
    await writer.ensureDir(paths.logDir);
    const argv = options.daemonArgv ?? daemonArgv(options.nodePath);
    const environment = daemonEnvironment(paths, ctx.env, options.nodePath);
    const serviceText = renderServiceFile(layout.serviceKind, argv, environment, paths);
    // Noted before the file is written (and saved with it): uninstall of a stopped install unloads it too.
    record.service = { kind: layout.serviceKind, file: layout.serviceFile, label: layout.serviceKind === 'launchd' ? LAUNCHD_LABEL : SYSTEMD_UNIT };
    const serviceOutcome = await writer.write(layout.serviceFile, serviceText, 0o644, layout.serviceKind === 'launchd' ? `launchd ${ctx.system ? 'daemon' : 'agent'} ${LAUNCHD_LABEL}` : `systemd ${ctx.system ? 'system' : 'user'} unit`);

    // 5. Nix wiring: the alias (with the port) and its known_hosts, then the machines line.
    await writer.write(layout.aliasKnownHosts, `${BUILDER_ALIAS} ${publicKeyWithoutComment(hostKeyLine, "the daemon's host key")}\n`, 0o644, "the daemon's host key, for the alias");
    const aliasManaged = managedByNixStore(layout.sshAlias, ctx.root);
    const aliasBefore = readIfExists(layout.sshAlias);
    const aliasText = sshAliasText(config.daemon, paths.clientKey, layout.aliasKnownHosts);
    if (aliasManaged) out(`leave ${layout.sshAlias} alone: it is managed by Nix (${aliasManaged}); add the alias from \`ferry doctor\` to your configuration`);
    else await writer.write(layout.sshAlias, aliasText, 0o644, `ssh alias ${BUILDER_ALIAS} → ${front}`);
    // Changed bytes, not a changed mode: with the service file the same, only the address moved.
    const aliasMoved = !aliasManaged && aliasBefore !== undefined && !aliasBefore.equals(Buffer.from(aliasText));

    const fields = builderFields(config, paths.clientKey, hostKeyLine);
    const managed = managedByNixStore(layout.nixConf, ctx.root) ?? managedByNixStore(layout.machinesFile, ctx.root);
    if (managed) {
      snippet = nixDarwinSnippet(fields);
      out(`leave ${layout.nixConf} and ${layout.machinesFile} alone: managed by nix-darwin (${managed}).`);
      out(`ferry's nix-darwin module does all of this (the agent, the machines entry, the alias) and removes it when switched off: ${NIX_DARWIN_MODULE_HINT}`);
      out(`Or add this to your nix-darwin configuration and run \`darwin-rebuild switch\`:\n${snippet}`);
    } else {
      const current = readIfExists(layout.machinesFile)?.toString('utf8') ?? '';
      await writer.write(layout.machinesFile, withFerryLine(current, machinesLine(fields)), 0o644, `Nix builder ssh-ng://${BUILDER_ALIAS} for ${fields.systems.join(', ')}`);
      // `builders` defaults to @/etc/nix/machines: nix.conf is only a problem if it overrides that.
      const override = buildersOverride(readIfExists(layout.nixConf)?.toString('utf8'));
      if (override) out(`note: ${layout.nixConf} has \`${override}\`, so Nix ignores /etc/nix/machines; add @/etc/nix/machines to that setting (ferry does not change \`builders\`)`);
      await wireBuildersUseSubstitutes({ platform: ctx.platform, root: ctx.root, out, dryRun }, layout.nixConf, writer, system);
    }

    // 6. The service: loaded again when its file changed, else started if not loaded, or restarted.
    const restart = frontBefore !== undefined && frontBefore !== front ? `ferry.toml: ${frontBefore} → ${front}` : aliasMoved ? `the alias ${BUILDER_ALIAS} now goes to ${front}` : undefined;
    await startService(ctx, writer, serviceOutcome, restart, dryRun, commands);
  } finally {
    if (!dryRun && writer.changes > 0) saveRecord(paths.installRecord, record);
  }

  if (writer.changes === 0) out(`nothing to change: ferry is installed as recorded in ${paths.installRecord}`);
  else if (dryRun) out(`${writer.changes} change(s) planned; run without --dry-run to make them`);
  else out(`done: ${writer.changes} change(s), recorded in ${paths.installRecord} (\`ferry uninstall\` undoes them); check with \`ferry doctor\``);
  return { layout, record, changes: writer.changes, commands, nixDarwinSnippet: snippet };
}

async function ensureKeys(writer: FileWriter, paths: InstallLayout['paths'], dryRun: boolean): Promise<string> {
  // A dry run before the key exists: a well-formed stand-in (all-zero ed25519 key), never written.
  let hostKeyLine = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA (generated on install) ferry daemon host key';
  for (const [name, what] of [
    ['client', "client key the host's nix-daemon logs in with"],
    ['daemonHost', "the daemon's host key"],
  ] as const) {
    const file = name === 'client' ? paths.clientKey : paths.daemonHostKey;
    if (!dryRun) await writer.ensureDir(path.dirname(file), 0o700);
    const pair = await writer.made([{ file, what: dryRun ? what : `${what}, mode 600` }, { file: `${file}.pub` }], () => ferryKey(paths, name));
    if (file !== paths.daemonHostKey) continue;
    if (pair) hostKeyLine = pair.publicKey;
    else if (existsSync(file) && existsSync(`${file}.pub`)) hostKeyLine = readIfExists(`${file}.pub`)!.toString('utf8').trim();
  }
  return hostKeyLine;
}

/** ferry.toml written, and the daemon's address in the one it replaces (undefined: none replaced). */
async function writeConfig(writer: FileWriter, ctx: HostContext, port: number | undefined, dryRun: boolean): Promise<{ config: FerryConfig; frontBefore?: string }> {
  const file = ctx.layout.paths.configFile;
  const existing = readIfExists(file)?.toString('utf8');
  let text = existing ?? renderDefaultConfig(ctx.host);
  if (port !== undefined) text = withPort(text, port);
  // Check before writing: a bad --port or a broken existing file must not be half-applied.
  const config = parseConfigText(text, file, { host: ctx.host });
  if (text === existing) {
    if (!dryRun) ctx.out(`unchanged ${file}`);
    return { config };
  }
  await writer.write(file, text, 0o644, existing === undefined ? 'defaults' : `port ${port}`);
  return { config, frontBefore: existing === undefined ? undefined : frontOf(existing, file, ctx) };
}

/** The daemon's address in a ferry.toml; one that does not parse (a bad port that --port fixes) counts as another. */
function frontOf(text: string, file: string, ctx: HostContext): string {
  try {
    const { daemon } = parseConfigText(text, file, { host: ctx.host });
    return frontAddress(daemon.listen, daemon.port);
  } catch {
    return 'unreadable';
  }
}

/** Sets `port` under [daemon]: replaces the line (commented or not), or adds it. */
export function withPort(text: string, port: number): string {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new FerryError(`--port: expected a TCP port from 1 to 65535, got ${port}`, { exitCode: ExitCode.Usage });
  }
  const lines = text.split('\n');
  const section = lines.findIndex((line) => line.trim() === '[daemon]');
  if (section < 0) return `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}\n[daemon]\nport = ${port}\n`;
  let end = lines.findIndex((line, i) => i > section && /^\s*\[/.test(line));
  if (end < 0) end = lines.length;
  for (let i = section + 1; i < end; i++) {
    if (/^\s*#?\s*port\s*=/.test(lines[i])) {
      lines[i] = `port = ${port}`;
      return lines.join('\n');
    }
  }
  lines.splice(section + 1, 0, `port = ${port}`);
  return lines.join('\n');
}

async function buildWithProgress(writer: FileWriter, config: FerryConfig, paths: InstallLayout['paths'], progress: Progress | undefined, out: Report): Promise<void> {
  // The directories the build fills, made (and recorded) here: a build killed half way leaves
  // them to uninstall, which removes them once the dead build's temporaries are gone.
  await writer.ensureDir(paths.imagesDir);
  await writer.ensureDir(paths.downloadsDir);
  const guestKeys = [paths.guestHostKey, paths.guestClientKey].flatMap((key) => [{ file: key, what: 'guest key' }, { file: `${key}.pub` }]);
  const keys = (await writer.made(guestKeys, () => ferryKeys(paths)))!;
  const manifest = await buildImage({
    config,
    paths,
    keys,
    ...writerProgress(progress),
  });
  progress?.done();
  const hit = manifest.systemDisk.cacheHit && (manifest.storeDisks ?? []).every((disk) => disk.cacheHit) && manifest.initrd.cacheHit;
  out(`image ${manifest.id} (${manifest.preset}, ${manifest.system}): ${hit ? 'already built' : 'built'} in ${paths.imagesDir}`);
}

/**
 * Loads the service again when its file changed; otherwise starts it if it is not loaded, or
 * restarts it when `restart` says why: the daemon binds [daemon] listen and port only when it
 * starts (a reload keeps its socket), so a new address left to it would leave the alias pointing
 * at a port nobody listens on.
 */
async function startService(ctx: HostContext, writer: FileWriter, serviceOutcome: WriteOutcome, restart: string | undefined, dryRun: boolean, commands: ServiceCommand[]): Promise<void> {
  const { layout } = ctx;
  let wanted = loadCommands(layout.serviceKind, ctx.system, ctx.uid, layout.serviceFile);
  if (serviceOutcome === 'unchanged') {
    const probe = isLoadedCommand(layout.serviceKind, ctx.system, ctx.uid);
    const loaded = dryRun ? true : await runCommand(ctx, probe, commands, true);
    if (!loaded) {
      wanted = wanted.filter((command) => !command.args.includes('restart'));
      writer.changes += 1;
    } else if (restart) {
      ctx.out(`${dryRun ? 'would restart' : 'restart'} the daemon: it takes [daemon] listen and port only when it starts (${restart})`);
      wanted = [restartCommand(layout.serviceKind, ctx.system, ctx.uid)];
    } else wanted = [];
  }
  for (const command of wanted) {
    if (dryRun) {
      ctx.out(`would run ${[command.file, ...command.args].join(' ')}`);
      commands.push(command);
    } else await runCommand(ctx, command, commands);
  }
}

/** Runs one service command; a failure that is not expected stops the install with its output. */
async function runCommand(ctx: HostContext, command: ServiceCommand, log: ServiceCommand[], quiet = false): Promise<boolean> {
  log.push(command);
  const shown = [command.file, ...command.args].join(' ');
  const result = await ctx.runner.run(command.file, command.args, { timeoutMs: 60_000 });
  const ok = result.exitCode === 0;
  if (!quiet) ctx.out(`${ctx.recordOnly ? 'record (not run, --root)' : 'ran'}: ${shown}${ok || !command.mayFail ? '' : ' (not loaded before; fine)'}`);
  if (!ok && !command.mayFail) {
    throw new ProcessError(command.file, command.args, result, {
      label: `\`${shown}\``,
      timeoutMs: 60_000,
      exitCode: ExitCode.Unavailable,
      hint: 'the files are written and recorded; fix the cause and run `ferry install` again, or `ferry uninstall`',
    });
  }
  return ok;
}
