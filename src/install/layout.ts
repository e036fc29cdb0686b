/**
 * Where `ferry install` puts things outside ferry's own directories, for one host kind and one
 * root prefix. `--root DIR` turns every absolute system path into DIR/…, so tests (and packagers
 * staging a tree) get the whole install in one directory and nothing on the real system.
 */
import path from 'node:path';
import { resolvePaths, SERVICE_NAMES, SYSTEM_FILES, type FerryPaths } from '../config/paths.js';

export const LAUNCHD_LABEL = SERVICE_NAMES.launchdLabel;
export const SYSTEMD_UNIT = SERVICE_NAMES.systemdUnit;

export interface InstallTarget {
  /** 'darwin' → launchd, anything else → systemd. */
  platform: NodeJS.Platform;
  /** System-wide (`--system`): LaunchDaemon / system unit and /etc/ferry, /var/lib/ferry. */
  system: boolean;
  /** The file system root ('/' normally; a temp dir in tests). */
  root: string;
  homeDir: string;
  env: Readonly<Record<string, string | undefined>>;
}

export interface InstallLayout {
  paths: FerryPaths;
  /** /etc/nix/machines */
  machinesFile: string;
  /** /etc/nix/nix.conf */
  nixConf: string;
  /** /etc/ssh/ssh_config.d/ferry.conf — the alias carrying the port. */
  sshAlias: string;
  /** The known_hosts file the alias pins the daemon's host key with. */
  aliasKnownHosts: string;
  /** The launchd plist or the systemd unit. */
  serviceFile: string;
  serviceKind: 'launchd' | 'systemd';
}

/** Joins an absolute system path onto the root prefix. */
export function underRoot(root: string, absolute: string): string {
  return root === '/' ? absolute : path.join(root, absolute);
}

export function installLayout(target: InstallTarget): InstallLayout {
  const { root, system, platform, homeDir, env } = target;
  const resolved = resolvePaths({ system, platform, homeDir, env });
  // User paths come from HOME (already inside the root in tests); system paths get the prefix.
  const paths = system ? prefixPaths(resolved, root) : resolved;
  const xdgConfig = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(homeDir, '.config');
  const serviceKind = platform === 'darwin' ? 'launchd' : 'systemd';
  const serviceFile =
    serviceKind === 'launchd'
      ? system
        ? underRoot(root, SYSTEM_FILES.launchDaemon)
        : path.join(homeDir, SYSTEM_FILES.launchAgent)
      : system
        ? underRoot(root, SYSTEM_FILES.systemdSystemUnit)
        : path.join(xdgConfig, SYSTEM_FILES.systemdUserUnit);
  return {
    paths,
    machinesFile: underRoot(root, SYSTEM_FILES.nixMachines),
    nixConf: underRoot(root, SYSTEM_FILES.nixConf),
    sshAlias: underRoot(root, SYSTEM_FILES.sshAlias),
    aliasKnownHosts: paths.builderKnownHosts,
    serviceFile,
    serviceKind,
  };
}

function prefixPaths(paths: FerryPaths, root: string): FerryPaths {
  if (root === '/') return paths;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(paths)) {
    out[key] = typeof value === 'string' && path.isAbsolute(value) && !value.startsWith(root + path.sep) ? path.join(root, value) : value;
  }
  return out as unknown as FerryPaths;
}
