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
import { lstatSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import type { DaemonConfig, FerryConfig } from '../config/types.js';
import { aliasConfig, BUILDER_ALIAS } from '../daemon/ssh-alias.js';
import { underRoot } from './layout.js';

export const MACHINES_MARKER = '# ferry: the Linux builder (written by `ferry install`, removed by `ferry uninstall`)';
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

/** The machines file without ferry's marker and the line under it. */
export function withoutFerryLine(current: string): string {
  const lines = current.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] === MACHINES_MARKER) {
      i += 1; // the builder line under the marker
      continue;
    }
    out.push(lines[i]);
  }
  return out.join('\n');
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

/** The nix-darwin module settings that give the same machines line. */
export function nixDarwinSnippet(fields: BuilderFields): string {
  const strings = (values: readonly string[]) => `[ ${values.map((v) => JSON.stringify(v)).join(' ')} ]`;
  return [
    '  # ferry: add to your nix-darwin configuration, then run darwin-rebuild switch',
    '  nix.distributedBuilds = true;',
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
