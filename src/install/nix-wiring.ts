/**
 * How the host's Nix learns about the builder: one line in /etc/nix/machines and an OpenSSH alias
 * in /etc/ssh/ssh_config.d/ferry.conf that carries the port (Nix takes no port in the URI, and
 * the host name `localhost` would make Nix build locally instead).
 *
 * The machines line (Nix's format, fields separated by spaces):
 *   ssh-ng://ferry-builder SYSTEMS SSH-KEY MAX-JOBS SPEED-FACTOR FEATURES MANDATORY BASE64-HOST-KEY
 * SYSTEMS and FEATURES are comma-separated, `-` for an empty list; the last field is the base64
 * of the daemon's public host key line (`ssh-ed25519 AAAA… comment`, what `base64 -w0 KEY.pub`
 * gives without the newline): Nix decodes it into a known_hosts entry for the host name.
 * Nix ignores everything after `#` on a line, so ferry marks its line with a comment line above it
 * and finds it again by that marker, leaving every other line alone.
 */
import { existsSync, lstatSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import type { DaemonConfig, FerryConfig } from '../config/types.js';
import { aliasConfig, BUILDER_ALIAS } from '../daemon/ssh-alias.js';
import { underRoot } from './layout.js';
import type { ServiceCommand } from './service.js';

export const MACHINES_MARKER = '# ferry: the Linux builder (written by `ferry install`, removed by `ferry uninstall`)';
/** Above ferry's `builders-use-substitutes` line in nix.conf (or Determinate's nix.custom.conf). */
export const NIX_CONF_MARKER = '# ferry: the Linux builder substitutes inputs from binary caches itself (written by `ferry install`, removed by `ferry uninstall`)';
export const BUILDERS_USE_SUBSTITUTES = 'builders-use-substitutes = true';
/** Each marks the one line under it as ferry's, in whichever file it is. */
const FERRY_MARKERS: readonly string[] = [MACHINES_MARKER, NIX_CONF_MARKER];
export const SPEED_FACTOR = 1;

export interface BuilderFields {
  uri: string;
  systems: string[];
  sshKey: string;
  maxJobs: number;
  speedFactor: number;
  features: string[];
  mandatoryFeatures: string[];
  /** base64 of the public host key line. */
  hostKey: string;
}

export function builderFields(config: FerryConfig, clientKeyPath: string, hostPublicKeyLine: string): BuilderFields {
  return {
    uri: `ssh-ng://${BUILDER_ALIAS}`,
    systems: [config.guest.system, ...config.guest.extraSystems.filter((s) => s !== config.guest.system)],
    sshKey: clientKeyPath,
    maxJobs: config.guest.nix.maxJobs,
    speedFactor: SPEED_FACTOR,
    features: [...config.guest.nix.features],
    mandatoryFeatures: [],
    hostKey: Buffer.from(hostPublicKeyLine.trim()).toString('base64'),
  };
}

const list = (values: readonly string[]) => (values.length > 0 ? values.join(',') : '-');

export function machinesLine(fields: BuilderFields): string {
  return [fields.uri, list(fields.systems), fields.sshKey, fields.maxJobs, fields.speedFactor, list(fields.features), list(fields.mandatoryFeatures), fields.hostKey].join(' ');
}

/** The machines file with ferry's line (and marker) replaced or appended; other lines untouched. */
export function withFerryLine(current: string, line: string): string {
  const kept = withoutFerryLine(current);
  const separator = kept === '' || kept.endsWith('\n') ? '' : '\n';
  return `${kept}${separator}${MACHINES_MARKER}\n${line}\n`;
}

/** The file (machines, nix.conf) without ferry's markers and the line under each. */
export function withoutFerryLine(current: string): string {
  const lines = current.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (FERRY_MARKERS.includes(lines[i])) {
      i += 1; // the builder line under the marker
      continue;
    }
    out.push(lines[i]);
  }
  return out.join('\n');
}

/** Does the file hold a line of ferry's (under one of its markers)? */
export function hasFerryLine(text: string): boolean {
  return text.split('\n').some((line) => FERRY_MARKERS.includes(line));
}

/** ferry's line in a machines file, split into its fields; undefined when absent. */
export function findFerryLine(text: string): string[] | undefined {
  const lines = text.split('\n');
  const at = lines.indexOf(MACHINES_MARKER);
  if (at >= 0 && lines[at + 1]) return lines[at + 1].trim().split(/\s+/);
  const byUri = lines.find((line) => line.trim().startsWith(`ssh-ng://${BUILDER_ALIAS} `));
  return byUri?.trim().split(/\s+/);
}

/**
 * /etc/ssh/ssh_config.d/ferry.conf: the alias to the daemon's front at `[daemon] listen` and
 * `port`. The machines line names only the alias, so it follows the address through this file.
 */
export function sshAliasText(daemon: Pick<DaemonConfig, 'listen' | 'port'>, clientKey: string, knownHostsFile: string): string {
  return aliasConfig({ hostName: daemon.listen, port: daemon.port, identityFile: clientKey, knownHostsFile });
}

/**
 * Is this file managed by nix-darwin (or home-manager/NixOS)? Those make /etc/nix/nix.conf a
 * symlink into /nix/store (directly or through /etc/static); an edit would be lost at the next
 * switch, or fail on the read-only store. Links are followed inside the root prefix.
 */
export function managedByNixStore(file: string, root: string): string | undefined {
  let current = file;
  let viaStatic: string | undefined;
  for (let hops = 0; hops < 16; hops++) {
    let target: string;
    try {
      if (!lstatSync(current).isSymbolicLink()) return viaStatic;
      target = readlinkSync(current);
    } catch {
      return viaStatic;
    }
    const next = path.isAbsolute(target) ? underRoot(root, target) : path.resolve(path.dirname(current), target);
    const onSystem = root === '/' ? next : next.slice(root.length) || '/';
    if (onSystem.startsWith('/nix/store/')) return onSystem;
    // nix-darwin's /etc/static is itself a link into the store: follow it, but it already tells.
    if (onSystem.startsWith('/etc/static/')) viaStatic = onSystem;
    current = next;
  }
  return viaStatic;
}

/** Where install points a nix-darwin user: ferry's own module (flake.nix's darwinModules.default, nix/darwin-module.nix). */
export const NIX_DARWIN_MODULE_HINT =
  'import `ferry.darwinModules.default` from ferry\'s flake and set `services.ferry.enable = true;` (README: "Installing with Nix"), then `darwin-rebuild switch`';

/** The nix-darwin module settings that give the same machines line. */
export function nixDarwinSnippet(fields: BuilderFields): string {
  const strings = (values: readonly string[]) => `[ ${values.map((v) => JSON.stringify(v)).join(' ')} ]`;
  return [
    '  # ferry: add to your nix-darwin configuration, then run darwin-rebuild switch',
    '  nix.distributedBuilds = true;',
    '  # The builder fetches the inputs it can from binary caches itself, instead of through the host.',
    '  nix.settings.builders-use-substitutes = true;',
    '  nix.buildMachines = [{',
    `    hostName = "${BUILDER_ALIAS}";  # the alias in /etc/ssh/ssh_config.d/ferry.conf (port, user)`,
    '    protocol = "ssh-ng";',
    `    systems = ${strings(fields.systems)};`,
    `    sshKey = "${fields.sshKey}";`,
    `    maxJobs = ${fields.maxJobs};`,
    `    speedFactor = ${fields.speedFactor};`,
    `    supportedFeatures = ${strings(fields.features)};`,
    `    mandatoryFeatures = ${strings(fields.mandatoryFeatures)};`,
    `    publicHostKey = "${fields.hostKey}";`,
    '  }];',
    '',
  ].join('\n');
}

/**
 * Does nix.conf send builds to /etc/nix/machines? That is Nix's default (`builders = @/etc/nix/machines`);
 * only an explicit `builders` setting that leaves the file out turns it off. Returns the offending line.
 */
export function buildersOverride(nixConf: string | undefined): string | undefined {
  if (!nixConf) return undefined;
  for (const raw of nixConf.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const match = /^builders\s*=(.*)$/.exec(line);
    if (match && !match[1].includes('@/etc/nix/machines')) return raw.trim();
  }
  return undefined;
}

/**
 * nix.conf with `builders-use-substitutes = true`: without it the host's Nix copies every input
 * of a build to the builder itself, through the daemon's SSH front, even those the builder could
 * fetch from a binary cache. Nix applies the last assignment, so that is the one that counts:
 * already true (ferry's line or the user's), nothing changes; false, that line becomes ferry's
 * (`replaced` says what it was); absent, ferry's line is appended.
 */
export function withBuildersUseSubstitutes(current: string): { text: string; replaced?: string } {
  const lines = current.split('\n');
  let last = -1;
  for (let i = 0; i < lines.length; i++) if (/^builders-use-substitutes\s*=/.test(lines[i].replace(/#.*/, '').trim())) last = i;
  if (last >= 0) {
    if (lines[last].replace(/#.*/, '').split('=')[1].trim() === 'true') return { text: current };
    const replaced = lines[last].trim();
    lines.splice(last, 1, NIX_CONF_MARKER, BUILDERS_USE_SUBSTITUTES);
    return { text: lines.join('\n'), replaced };
  }
  const separator = current === '' || current.endsWith('\n') ? '' : '\n';
  return { text: `${current}${separator}${NIX_CONF_MARKER}\n${BUILDERS_USE_SUBSTITUTES}\n` };
}

/** Determinate Nix's own daemon, and the upstream installer's (launchd labels). */
export const NIX_DAEMON_LABELS = { determinate: 'systems.determinate.nix-daemon', upstream: 'org.nixos.nix-daemon' } as const;

/**
 * Where ferry's nix.conf line goes. Determinate Nix owns /etc/nix/nix.conf (determinate-nixd
 * writes it again) and `!include`s nix.custom.conf for the user's settings: that file, when
 * nix.conf includes it or one of Determinate's markers is there (its daemon's plist or binary).
 */
export function nixConfTarget(nixConf: string, root: string): { file: string; determinate: boolean } {
  const dir = path.dirname(nixConf);
  const custom = path.join(dir, 'nix.custom.conf');
  let text = '';
  try {
    text = readFileSync(nixConf, 'utf8');
  } catch {
    // no nix.conf: a fresh one gets the line
  }
  const includesCustom = text.split('\n').some((line) => {
    const words = line.replace(/#.*/, '').trim().split(/\s+/);
    return (words[0] === 'include' || words[0] === '!include') && words.length === 2 && path.basename(words[1]) === 'nix.custom.conf';
  });
  const markers = [`/Library/LaunchDaemons/${NIX_DAEMON_LABELS.determinate}.plist`, '/usr/local/bin/determinate-nixd', '/etc/systemd/system/determinate-nixd.socket'];
  const determinate = includesCustom || markers.some((marker) => existsSync(underRoot(root, marker)));
  return { file: determinate ? custom : nixConf, determinate };
}

/**
 * The host's nix-daemon reads nix.conf only when it starts: the command that restarts it (as
 * root), or undefined where there is none to restart (a single-user Nix reads it on each command).
 * Found by its launchd plist or systemd unit file, so it works the same under --root.
 */
export function nixDaemonRestart(platform: NodeJS.Platform, root: string): ServiceCommand | undefined {
  if (platform === 'darwin') {
    for (const label of [NIX_DAEMON_LABELS.determinate, NIX_DAEMON_LABELS.upstream]) {
      if (existsSync(underRoot(root, `/Library/LaunchDaemons/${label}.plist`))) return { file: 'launchctl', args: ['kickstart', '-k', `system/${label}`] };
    }
    return undefined;
  }
  const unitDirs = ['/etc/systemd/system', '/usr/lib/systemd/system', '/lib/systemd/system', '/nix/var/nix/profiles/default/lib/systemd/system'];
  if (unitDirs.some((dir) => existsSync(underRoot(root, `${dir}/nix-daemon.service`)))) return { file: 'systemctl', args: ['restart', 'nix-daemon.service'] };
  return undefined;
}
