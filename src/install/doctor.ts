/**
 * `ferry doctor`: each piece of the chain from `nix build` to the guest, checked on its own —
 * config and its layer paths, VM backend and accelerator, Nix and its daemon, the machines line
 * and the ssh alias (matching the key, the host key and the port), the service file, the daemon,
 * the state disk (how full, and whether the configured size fits it),
 * and with `--build` a real build through the alias. Every failing check comes with the command
 * that fixes it; any failure makes the exit code non-zero.
 */
import { constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { loadConfig } from '../config/load.js';
import type { FerryConfig } from '../config/types.js';
import { callDaemon } from '../daemon/control-client.js';
import { BUILDER_ALIAS } from '../daemon/ssh-alias.js';
import { FerryError } from '../errors.js';
import { parsePublicKeyLine, PublicKeyLineError } from '../keys/public-key-line.js';
import { BACKEND_FACTS, installHint } from '../vm/facts.js';
import { locateBackend } from '../vm/index.js';
import { backendContext } from '../vm/instance/boot.js';
import { createExecaRunner, findOnPath, ProcessError, type Runner } from '../process/runner.js';
import { checkLayers } from './doctor-layers.js';
import { checkStateDisk, liveStateDiskUsage } from './doctor-state-disk.js';
import { readIfExists } from './files.js';
import { hostContext, type HostContext, type HostOptions } from './install.js';
import { LAUNCHD_LABEL, SYSTEMD_UNIT, underRoot } from './layout.js';
import { buildersOverride, findFerryLine, managedByNixStore } from './nix-wiring.js';
import { launchdDomain } from './service.js';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  /** The command (or edit) that fixes it. */
  fix?: string;
}

export interface DoctorOptions extends HostOptions {
  /** Also build a tiny derivation through Nix's remote-build path. */
  build?: boolean;
}

/** A runner whose `which` looks only at the given PATH (the one doctor checks). */
export function pathRunner(env: Readonly<Record<string, string | undefined>>): Runner {
  return { ...createExecaRunner(), which: (binary) => findOnPath(binary, env.PATH ?? '') };
}

export async function doctor(options: DoctorOptions = {}): Promise<Check[]> {
  const env = options.env ?? process.env;
  const ctx = hostContext({ ...options, env, runner: options.runner ?? pathRunner(env) });
  const { layout } = ctx;
  const { paths } = layout;
  const checks: Check[] = [];
  const add = (...found: Check[]) => checks.push(...found);

  // Config.
  let config: FerryConfig | undefined;
  try {
    // A file named by FERRY_CONFIG must exist, as for `ferry up` and `ferry image build`.
    config = await loadConfig(paths.configFile, { host: ctx.host, mustExist: paths.configFileNamedBy });
    const systems = [config.guest.system, ...config.guest.extraSystems].join(', ');
    const through = config.guest.extraSystems.length ? ` (extra systems through ${config.guest.interpreter})` : '';
    add({ name: 'config', status: 'ok', detail: `${config.source ? paths.configFile : `no ${paths.configFile}; the defaults apply`}; guest systems ${systems}${through}` });
  } catch (error) {
    const fix = existsSync(paths.configFile) ? `edit ${paths.configFile}` : `point FERRY_CONFIG at an existing file, or unset it (then ${layout.paths.system ? 'the system' : 'your'} default file, or the defaults, apply)`;
    add({ name: 'config', status: 'fail', detail: (error as Error).message, fix });
  }

  if (config) {
    add(...checkLayers(config));
    add(await checkBackend(ctx, config));
    add(await checkAccelerator(ctx, config));
  }
  add(...(await checkNix(ctx)));
  add(checkMachines(ctx, config));
  add(checkAlias(ctx, config));
  add(checkServiceFile(ctx));
  add(await checkDaemon(ctx, config));
  if (config) add(await checkStateDisk(paths.stateDisk, config, await liveStateDiskUsage(paths.controlSocket)));
  if (options.build && config) add(await checkBuild(ctx, config));
  return checks;

}

function restartCommand(ctx: HostContext): string {
  if (ctx.layout.serviceKind === 'launchd') return `launchctl kickstart -k ${launchdDomain(ctx.system, ctx.uid)}/${LAUNCHD_LABEL}`;
  return `systemctl ${ctx.system ? '' : '--user '}restart ${SYSTEMD_UNIT}`;
}

async function checkBackend(ctx: HostContext, config: FerryConfig): Promise<Check> {
  try {
    const { host } = ctx;
    // The same choice the daemon's boot makes, Nix's binary included (it fetches it now if it must).
    const located = await locateBackend(config.vm.backend, config.guest.system, backendContext(config, ctx.layout.paths, ctx.runner, host));
    const facts = BACKEND_FACTS[located.name];
    const binary = facts.binary(config.guest.system);
    const version = await ctx.runner.run(located.binary, [...facts.versionArgs], { timeoutMs: 10_000 });
    const first = `${version.stdout}\n${version.stderr}`.trim().split('\n')[0] ?? '';
    if (version.exitCode !== 0) return { name: 'backend', status: 'fail', detail: `${located.binary} does not run: ${version.error ?? first}`, fix: `reinstall ${binary} (${installHint(facts, host)})` };
    const where = located.fromNix ? `${located.binary}, from nixpkgs through the host's Nix (${located.fromNix.installable}; none on PATH; GC root ${located.fromNix.link})` : located.binary;
    return { name: 'backend', status: 'ok', detail: `${facts.name}: ${where} (${first}); stops the guest by its control command, then ${facts.stop}` };
  } catch (error) {
    const hint = error instanceof FerryError ? error.hint : undefined;
    return { name: 'backend', status: 'fail', detail: (error as Error).message, fix: hint?.replace(/^install (it|one of): /, '') ?? 'install qemu' };
  }
}

async function checkAccelerator(ctx: HostContext, config: FerryConfig): Promise<Check> {
  if (ctx.platform === 'darwin') {
    const result = await ctx.runner.run('sysctl', ['-n', 'kern.hv_support'], { timeoutMs: 5000 });
    return result.stdout.trim() === '1'
      ? { name: 'accelerator', status: 'ok', detail: 'Hypervisor.framework available (hvf)' }
      : { name: 'accelerator', status: 'fail', detail: 'kern.hv_support is not 1: this Mac (or VM) offers no Hypervisor.framework', fix: 'run ferry on a Mac with virtualization, or enable nested virtualization for this VM' };
  }
  if (config.vm.accel === 'tcg') return { name: 'accelerator', status: 'ok', detail: 'tcg (set in ferry.toml; emulation, slow)' };
  const kvm = underRoot(ctx.root, '/dev/kvm');
  try {
    await access(kvm, fsConstants.R_OK | fsConstants.W_OK);
    return { name: 'accelerator', status: 'ok', detail: `${kvm} is usable (kvm; qemu probes it once more at boot)` };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return {
      name: 'accelerator',
      status: config.vm.accel === 'kvm' ? 'fail' : 'warn',
      detail: `${kvm} ${code === 'ENOENT' ? 'does not exist' : 'is not usable by this user'}: guests run under tcg (emulation, ~10× slower)`,
      fix: code === 'ENOENT' ? 'enable virtualization (VT-x/AMD-V, or nested virtualization) and load kvm_intel/kvm_amd' : 'sudo usermod -aG kvm $USER (then log in again)',
    };
  }
}

async function checkNix(ctx: HostContext): Promise<Check[]> {
  const checks: Check[] = [];
  const nixStore = await ctx.runner.which('nix-store');
  if (!nixStore) {
    checks.push({ name: 'nix', status: 'fail', detail: 'nix-store is not on PATH', fix: 'install Nix: sh <(curl -L https://nixos.org/nix/install) --daemon' });
  } else {
    const version = await ctx.runner.run(nixStore, ['--version'], { timeoutMs: 10_000 });
    checks.push(
      version.exitCode === 0
        ? { name: 'nix', status: 'ok', detail: version.stdout.trim() }
        : { name: 'nix', status: 'fail', detail: `${nixStore} --version failed: ${version.stderr.trim()}`, fix: 'repair the Nix installation' },
    );
  }
  const socket = underRoot(ctx.root, '/nix/var/nix/daemon-socket/socket');
  checks.push(
    existsSync(socket)
      ? { name: 'nix-daemon', status: 'ok', detail: `socket ${socket}` }
      : {
          name: 'nix-daemon',
          status: 'warn',
          detail: `no ${socket}: single-user Nix (builds by this user still use /etc/nix/machines), or the daemon is down`,
          fix: ctx.platform === 'darwin' ? 'sudo launchctl kickstart -k system/org.nixos.nix-daemon' : 'sudo systemctl start nix-daemon',
        },
  );
  return checks;
}

function daemonPublicKey(ctx: HostContext): string | undefined {
  return readIfExists(`${ctx.layout.paths.daemonHostKey}.pub`)?.toString('utf8').trim();
}

function checkMachines(ctx: HostContext, config: FerryConfig | undefined): Check {
  const { layout } = ctx;
  const fix = 'ferry install';
  const managed = managedByNixStore(layout.nixConf, ctx.root) ?? managedByNixStore(layout.machinesFile, ctx.root);
  const text = readIfExists(layout.machinesFile)?.toString('utf8');
  if (text === undefined) {
    return managed
      ? { name: 'machines', status: 'fail', detail: `nix-darwin manages ${layout.nixConf} and no ferry builder is in ${layout.machinesFile}`, fix: 'add the nix.buildMachines snippet printed by `ferry install` to your nix-darwin configuration, then darwin-rebuild switch' }
      : { name: 'machines', status: 'fail', detail: `${layout.machinesFile} does not exist`, fix };
  }
  const fields = findFerryLine(text);
  if (!fields) return { name: 'machines', status: 'fail', detail: `no ssh-ng://${BUILDER_ALIAS} line in ${layout.machinesFile}`, fix };
  const problems: string[] = [];
  if (fields[0] !== `ssh-ng://${BUILDER_ALIAS}`) problems.push(`the URI is ${fields[0]}, expected ssh-ng://${BUILDER_ALIAS}`);
  if (fields.length < 8) problems.push(`${fields.length} fields, expected 8`);
  const lacking = config ? [config.guest.system, ...config.guest.extraSystems].filter((system) => !(fields[1] ?? '').split(',').includes(system)) : [];
  if (lacking.length > 0) problems.push(`systems ${fields[1]} lack ${lacking.join(', ')}`);
  if (fields[2] !== ctx.layout.paths.clientKey) problems.push(`the key is ${fields[2]}, expected ${ctx.layout.paths.clientKey}`);
  else if (!existsSync(fields[2])) problems.push(`the key ${fields[2]} does not exist`);
  const hostKey = daemonPublicKey(ctx);
  if (fields[7] && hostKey && Buffer.from(fields[7], 'base64').toString('utf8').trim() !== hostKey) problems.push("the host key field is not the daemon's host key");
  const override = buildersOverride(readIfExists(layout.nixConf)?.toString('utf8'));
  if (override) problems.push(`${layout.nixConf} has \`${override}\`, so Nix never reads ${layout.machinesFile}`);
  if (problems.length > 0) return { name: 'machines', status: 'fail', detail: `${layout.machinesFile}: ${problems.join('; ')}`, fix: override ? `add @/etc/nix/machines to builders in ${layout.nixConf}` : fix };
  return { name: 'machines', status: 'ok', detail: `${layout.machinesFile}: ${fields[0]} ${fields[1]}, max-jobs ${fields[3]}, key and host key match` };
}

function aliasSetting(text: string, name: string): string | undefined {
  const match = new RegExp(`^\\s*${name}\\s+(.+)$`, 'mi').exec(text);
  return match?.[1].trim();
}

function checkAlias(ctx: HostContext, config: FerryConfig | undefined): Check {
  const { layout } = ctx;
  const text = readIfExists(layout.sshAlias)?.toString('utf8');
  if (text === undefined) return { name: 'ssh alias', status: 'fail', detail: `${layout.sshAlias} does not exist`, fix: 'ferry install' };
  const problems: string[] = [];
  if (!new RegExp(`^Host\\s+${BUILDER_ALIAS}\\s*$`, 'm').test(text)) problems.push(`no "Host ${BUILDER_ALIAS}"`);
  const hostName = aliasSetting(text, 'HostName');
  if (hostName !== '127.0.0.1' && hostName !== '::1') problems.push(`HostName is ${hostName ?? 'missing'}, expected 127.0.0.1 (never localhost)`);
  const port = Number(aliasSetting(text, 'Port'));
  if (config && port !== config.daemon.port) problems.push(`Port is ${aliasSetting(text, 'Port') ?? 'missing'} but the daemon listens on ${config.daemon.port} (ferry.toml)`);
  const identity = aliasSetting(text, 'IdentityFile');
  if (identity !== layout.paths.clientKey) problems.push(`IdentityFile is ${identity ?? 'missing'}, expected ${layout.paths.clientKey}`);
  const knownHosts = aliasSetting(text, 'UserKnownHostsFile');
  const daemonKey = daemonPublicKey(ctx);
  const parsedKey = daemonKey === undefined ? undefined : parsePublicKeyLine(daemonKey);
  if (parsedKey instanceof PublicKeyLineError) problems.push(`${ctx.layout.paths.daemonHostKey}.pub is ${parsedKey.message}`);
  const hostKey = parsedKey && !(parsedKey instanceof PublicKeyLineError) ? `${parsedKey.type} ${parsedKey.base64}` : undefined;
  if (!knownHosts || !existsSync(knownHosts)) problems.push(`UserKnownHostsFile ${knownHosts ?? '(missing)'} does not exist`);
  else if (hostKey && !readFileSync(knownHosts, 'utf8').includes(hostKey)) problems.push(`${knownHosts} does not pin the daemon's host key`);
  if (problems.length > 0) return { name: 'ssh alias', status: 'fail', detail: `${layout.sshAlias}: ${problems.join('; ')}`, fix: 'ferry install (rewrites the alias for the configured port and key)' };
  return { name: 'ssh alias', status: 'ok', detail: `${layout.sshAlias}: ${BUILDER_ALIAS} → ${hostName}:${port}` };
}

function checkServiceFile(ctx: HostContext): Check {
  const { layout } = ctx;
  return existsSync(layout.serviceFile)
    ? { name: 'service', status: 'ok', detail: `${layout.serviceKind === 'launchd' ? 'launchd plist' : 'systemd unit'} ${layout.serviceFile}` }
    : { name: 'service', status: 'fail', detail: `${layout.serviceFile} does not exist: nothing starts the daemon at login/boot`, fix: 'ferry install' };
}

interface StatusReply {
  daemon: { pid: number; listen: string };
  guest: { state: string; lastError?: string; backend?: string };
}

async function checkDaemon(ctx: HostContext, config: FerryConfig | undefined): Promise<Check> {
  const { paths } = ctx.layout;
  try {
    const status = await callDaemon<StatusReply>(paths.controlSocket, 'GET', '/status', 5000);
    const port = Number(status.daemon.listen.split(':').at(-1));
    if (config && port !== config.daemon.port) {
      return { name: 'daemon', status: 'fail', detail: `the daemon (pid ${status.daemon.pid}) listens on ${status.daemon.listen}, ferry.toml says port ${config.daemon.port}`, fix: restartCommand(ctx) };
    }
    const guest = `guest ${status.guest.state}${status.guest.lastError ? ` (last error: ${status.guest.lastError})` : ''}`;
    return { name: 'daemon', status: 'ok', detail: `pid ${status.daemon.pid} on ${status.daemon.listen}; ${guest}` };
  } catch (error) {
    return {
      name: 'daemon',
      status: 'fail',
      detail: `${(error as Error).message}; what it printed before failing is in ${paths.daemonOutput}`,
      fix: existsSync(ctx.layout.serviceFile) ? restartCommand(ctx) : 'ferry install',
    };
  }
}

async function checkBuild(ctx: HostContext, config: FerryConfig): Promise<Check> {
  const marker = `ferry-doctor-${Date.now()}`;
  const expression = `derivation { name = "ferry-doctor"; system = "${config.guest.system}"; builder = "/bin/sh"; args = [ "-c" "echo ${marker} > $out" ]; }`;
  const args = ['--no-out-link', '--max-jobs', '0', '--option', 'substituters', '', '-E', expression];
  const env: Record<string, string> = {};
  if (ctx.recordOnly) {
    args.push('--builders', `@${ctx.layout.machinesFile}`);
    env.NIX_SSHOPTS = `-F ${ctx.layout.sshAlias}`;
  }
  const nixBuild = (await ctx.runner.which('nix-build')) ?? 'nix-build';
  const result = await ctx.runner.run(nixBuild, args, { timeoutMs: 600_000, env: { ...ctx.env, ...env } });
  const out = result.stdout.trim().split('\n').at(-1) ?? '';
  if (result.exitCode === 0 && out.startsWith('/nix/store/')) return { name: 'build', status: 'ok', detail: `built ${out} in the guest` };
  const failure = result.exitCode === 0 ? `nix-build printed no store path: ${out}` : new ProcessError(nixBuild, args, result, { label: `nix-build through ${BUILDER_ALIAS}`, timeoutMs: 600_000 }).message;
  const tail = result.stderr.trim().split('\n').slice(-6).join(' | ');
  return { name: 'build', status: 'fail', detail: tail ? `${failure}; its last lines: ${tail}` : failure, fix: `ferry logs (and ${ctx.layout.paths.consoleLog} for the guest's console)` };
}

export function renderChecks(checks: readonly Check[]): string {
  const mark: Record<CheckStatus, string> = { ok: '✓', warn: '!', fail: '✗' };
  const lines: string[] = [];
  for (const check of checks) {
    lines.push(`${mark[check.status]} ${check.name}: ${check.detail}`);
    if (check.status !== 'ok' && check.fix) lines.push(`    fix: ${check.fix}`);
  }
  const failed = checks.filter((c) => c.status === 'fail').length;
  lines.push(failed === 0 ? 'all checks passed' : `${failed} check(s) failed`);
  return `${lines.join('\n')}\n`;
}

