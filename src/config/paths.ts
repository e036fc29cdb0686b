/**
 * Where ferry keeps things on disk, and what every file is called — the one place to look.
 *
 * Per-user install (default):
 *                 macOS                              Linux
 *   config file   ~/.config/ferry/ferry.toml         ~/.config/ferry/ferry.toml      ($XDG_CONFIG_HOME)
 *   state dir     ~/.local/state/ferry               ~/.local/state/ferry            ($XDG_STATE_HOME)
 *   cache dir     ~/Library/Caches/ferry             ~/.cache/ferry                  ($XDG_CACHE_HOME)
 *   log dir       ~/Library/Logs/ferry               ~/.local/state/ferry/logs
 * System install (`--system`):
 *   config file   /etc/ferry/ferry.toml              /etc/ferry/ferry.toml
 *   state dir     /var/lib/ferry                     /var/lib/ferry
 *   cache dir     /Library/Caches/ferry              /var/cache/ferry
 *   log dir       /Library/Logs/ferry                /var/log/ferry
 *
 * Why not ~/Library/Application Support on macOS: paths under the state dir end up in files whose
 * fields are separated by spaces — the SSH key in /etc/nix/machines cannot contain a space at all,
 * and ssh_config needs quoting — so the state dir must not contain "Application Support". And
 * ferry.toml is a hand-edited text file, like ~/.config/nix/nix.conf, ~/.config/git and
 * ~/.config/gh on a Mac: people (and home-manager's xdg.configFile) look for it in ~/.config.
 * The cache (images, downloads) and the logs do follow Apple's layout: ~/Library/Caches is what
 * Time Machine skips and "clean up" tools clear — right for rebuildable images — and
 * ~/Library/Logs is where Console.app looks. Neither path has a space.
 *
 * Overrides, strongest first: function arguments; FERRY_CONFIG (the file), FERRY_STATE_DIR,
 * FERRY_CACHE_DIR, FERRY_LOG_DIR; the XDG variables (absolute values only, as the XDG spec says).
 * When the state dir is overridden and the log dir is not, logs go to `<state>/logs`, so that a
 * test that sets FERRY_STATE_DIR writes nothing outside its own directories.
 */
import os from 'node:os';
import path from 'node:path';
import { ExitCode, FerryError } from '../errors.js';

/** File names ferry uses, relative to the directory named in the comment. */
export const FILE_NAMES = {
  /** config dir: the configuration. */
  config: 'ferry.toml',
  /** state dir: the daemon's control socket (HTTP over a unix socket, mode 600). */
  controlSocket: 'ferry.sock',
  /** state dir: pid of the running daemon. */
  daemonPid: 'daemon.pid',
  /** state dir: every file `ferry install` wrote, so `ferry uninstall` removes exactly those. */
  installRecord: 'install.json',
  /** state dir: which image the guest runs and which it ran before (for rollback). */
  currentImage: 'current-image.json',
  /** state dir: OpenSSH client config for the guest's sshd (`ferry up`'s `ferry ssh`, the control command). */
  sshConfig: 'ssh_config',
  /** state dir: OpenSSH client config with the `ferry-builder` alias to the daemon's SSH front (written by the daemon; `ferry ssh`, tests). */
  builderSshConfig: 'builder_ssh_config',
  /** state dir: the daemon's host key pinned for the `ferry-builder` alias (the daemon's and install's alias both use it). */
  builderKnownHosts: 'builder_known_hosts',
  /** keys dir: host key of the daemon's SSH front (persistent, so Nix's pinned key stays valid). */
  daemonHostKey: 'ssh_host_ed25519_key',
  /** keys dir: the key the host's nix-daemon (and `ferry ssh`) log in to the daemon with; `.pub` beside it. */
  clientKey: 'client_ed25519',
  /** keys dir: the key the daemon logs in to the guest's sshd with; `.pub` beside it. */
  guestClientKey: 'guest_client_ed25519',
  /** keys dir: the guest sshd's host key, generated per install (never shared between installs). */
  guestHostKey: 'guest_ssh_host_ed25519_key',
  /** vm dir: the state disk (vdb): /nix and everything that survives image rebuilds. Sparse. */
  stateDisk: 'state.img',
  /** vm dir: the running guest's record (backend, pid, spec, address), so another process can find and stop it. */
  guestRecord: 'guest.json',
  /** vm dir: the guest sshd's host key, pinned under the guest's ssh alias. */
  guestKnownHosts: 'known_hosts',
  /** log dir: the hypervisor's own stdout and stderr when it runs detached (its errors, e.g. a taken port). */
  hypervisorLog: 'hypervisor.log',
  /** log dir: the daemon's log (pino, JSON lines). */
  daemonLog: 'daemon.log',
  /** log dir: what launchd/systemd captured from the daemon's stdout and stderr (crashes before logging starts). */
  daemonOutput: 'daemon.out.log',
  /** log dir: the guest's serial console, where FERRY-READY appears. */
  consoleLog: 'console.log',
} as const;

/** Subdirectories, relative to the directory named in the comment. */
export const DIR_NAMES = {
  /** state dir: SSH keys (mode 700). */
  keys: 'keys',
  /** state dir: the running VM's disk, sockets and pid. */
  vm: 'vm',
  /** cache dir: built images, content-addressed by the hash of their inputs. */
  images: 'images',
  /** cache dir: fetched inputs of the base presets (Debian packages, rootfs tarballs). */
  downloads: 'downloads',
  /** cache dir: work in progress, renamed into images/ or downloads/ when complete (same filesystem). */
  tmp: 'tmp',
  /** cache dir: uncompressed arm64 kernels for Virtualization.framework, keyed by the source's hash. */
  kernels: 'kernels',
} as const;

/**
 * The files one running VM uses, named after it (`name`, e.g. `ferry`) in its run dir (the vm
 * dir for ferry's guest): `ferry.pid`, `ferry.qmp`, …
 */
export function vmRunFiles(runDir: string, name: string) {
  const file = (suffix: string) => path.join(runDir, `${name}.${suffix}`);
  return {
    /** The hypervisor's pid (qemu -pidfile, hyperkit -F; written by ferry for vfkit). */
    pidfile: file('pid'),
    /** qemu's QMP socket (system_powerdown, quit). */
    qmpSocket: file('qmp'),
    /** vfkit's REST API (`--restful-uri unix://…`). */
    vfkitRestSocket: file('vfkit.sock'),
    /** The pty hyperkit links its com1 to (`autopty=`). */
    hyperkitTty: file('tty'),
    /** hyperkit's 64 KiB console ring (`log=`). */
    hyperkitConsoleRing: file('console-ring'),
  };
}

/** A writable disk's lock: beside the disk, not in a run dir, so a second guest with another run dir sees it too. */
export const diskLockFile = (diskPath: string): string => `${diskPath}.ferry-lock`;

/** What the base presets keep in the cache's downloads dir, keyed inside by their inputs. */
export const DOWNLOAD_FILES = {
  /** debian: which packages (and rootfs) the last resolution chose, per suite and architecture. */
  debianRecord: (suite: string, arch: string) => `debian-${suite}-${arch}.json`,
  /** debian: the private apt state (sources, lists, cache) for one suite and architecture. */
  aptState: (suite: string, arch: string) => `apt-${suite}-${arch}`,
  /** nixpkgs: the flake and store paths the last resolution chose, per guest system. */
  nixpkgsRecord: (system: string) => `nixpkgs-${system}.json`,
  /** A Mac's VM backend from the host's Nix (vm/host-nix.ts): the out-link, a GC root, to its store path. */
  nixBackend: (backend: string) => `nix-backend-${backend}`,
  /** debian: mmdebstrap's rootfs tarballs, one directory per input key. */
  rootfsDir: 'rootfs',
  rootfsTar: 'rootfs.tar',
  /** debian: the unpacked kernel and busybox-static packages. */
  kernelDir: 'kernel',
  busyboxDir: 'busybox-static',
  /** debian arm64: qemu-user-static for x86_64 builds, unpacked. */
  qemuUserDir: 'qemu-user-static',
} as const;

/** The content-addressed image cache's names (in the cache's images dir). */
export const IMAGE_FILES = {
  /** The manifest of the latest `ferry image build`. */
  latest: 'latest.json',
  manifest: (id: string) => `build-${id}.json`,
  systemDisk: (key: string) => `system-${key}.img`,
  /** A store disk (the nix layers' paths, store-disks.ts) and the list of the store paths a base holds. */
  storeDisk: (key: string) => `store-${key}.img`,
  storeDiskPaths: (key: string) => `store-${key}.paths`,
  initramfs: (key: string) => `initramfs-${key}.cpio.gz`,
  configArchive: (key: string) => `config-${key}.cpio.gz`,
  initrd: (key: string) => `initrd-${key}.img`,
} as const;

/** What the service manager knows ferry's daemon by. */
export const SERVICE_NAMES = {
  /** launchd: the job's Label (as in launchd/ferry-daemon.plist, which install checks), and its plist's base name. */
  launchdLabel: 'dev.ferry.daemon',
  /** systemd: the unit's name. */
  systemdUnit: 'ferry.service',
} as const;

/**
 * Files outside ferry's own directories that install writes (and uninstall restores): absolute
 * paths on the host, which `--root DIR` moves under DIR; the per-user ones relative to a base.
 */
export const SYSTEM_FILES = {
  /** Nix's remote builders: ferry's line (marked) beside any others. */
  nixMachines: '/etc/nix/machines',
  /** Nix's settings: `builders-use-substitutes` (unless nix-darwin manages the file). */
  nixConf: '/etc/nix/nix.conf',
  /** An OpenSSH client include with the builder alias, which carries the port. */
  sshAlias: '/etc/ssh/ssh_config.d/ferry.conf',
  /** macOS, `--system`: the LaunchDaemon. */
  launchDaemon: `/Library/LaunchDaemons/${SERVICE_NAMES.launchdLabel}.plist`,
  /** macOS, per user: the LaunchAgent, relative to HOME. */
  launchAgent: `Library/LaunchAgents/${SERVICE_NAMES.launchdLabel}.plist`,
  /** Linux, `--system`: the system unit. */
  systemdSystemUnit: `/etc/systemd/system/${SERVICE_NAMES.systemdUnit}`,
  /** Linux, per user: the user unit, relative to the XDG config dir (~/.config). */
  systemdUserUnit: `systemd/user/${SERVICE_NAMES.systemdUnit}`,
} as const;

/** Files ferry reads from its own package, relative to the package root (beside src/ and dist/). */
export const PACKAGE_FILES = {
  /** The launchd plist's static keys; install adds the program, its environment and the log paths. */
  launchdTemplate: 'launchd/ferry-daemon.plist',
} as const;

export interface FerryPaths {
  /** True for a system-wide install (`--system`). */
  readonly system: boolean;
  readonly configFile: string;
  /**
   * Who named the config file, when the user did: `--config` (an argument) or FERRY_CONFIG. A
   * file the user named must exist; the platform's default file may be absent (then: defaults).
   */
  readonly configFileNamedBy?: 'argument' | 'FERRY_CONFIG';
  readonly stateDir: string;
  readonly cacheDir: string;
  readonly logDir: string;

  readonly keysDir: string;
  readonly vmDir: string;
  readonly imagesDir: string;
  readonly downloadsDir: string;
  readonly tmpDir: string;
  readonly kernelsDir: string;

  readonly controlSocket: string;
  readonly daemonPid: string;
  readonly installRecord: string;
  readonly currentImage: string;
  readonly sshConfig: string;
  readonly builderSshConfig: string;
  readonly builderKnownHosts: string;
  readonly daemonHostKey: string;
  readonly clientKey: string;
  readonly guestClientKey: string;
  readonly guestHostKey: string;
  readonly stateDisk: string;
  readonly guestRecord: string;
  readonly guestKnownHosts: string;
  readonly hypervisorLog: string;
  readonly daemonLog: string;
  readonly daemonOutput: string;
  readonly consoleLog: string;
}

export interface PathOptions {
  /** System-wide install (`--system`) instead of per-user. */
  readonly system?: boolean;
  readonly configFile?: string;
  readonly stateDir?: string;
  readonly cacheDir?: string;
  readonly logDir?: string;
  /** Defaults to process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Defaults to process.platform. */
  readonly platform?: NodeJS.Platform;
  /** Defaults to os.homedir(). */
  readonly homeDir?: string;
}

/** Every path ferry uses, for this platform and install kind, with overrides applied. */
export function resolvePaths(options: PathOptions = {}): FerryPaths {
  const env = options.env ?? process.env;
  const platform = options.platform ?? process.platform;
  const home = options.homeDir ?? os.homedir();
  const system = options.system ?? false;
  const base = system ? systemDefaults(platform) : userDefaults(platform, home, env);

  const fromEnv = (name: string) => {
    const value = env[name];
    return value === undefined || value === '' ? undefined : path.resolve(value);
  };
  const configFile = options.configFile ?? fromEnv('FERRY_CONFIG') ?? base.configFile;
  const configFileNamedBy = options.configFile !== undefined ? 'argument' : fromEnv('FERRY_CONFIG') !== undefined ? 'FERRY_CONFIG' : undefined;
  const explicitStateDir = options.stateDir ?? fromEnv('FERRY_STATE_DIR');
  const stateDir = path.resolve(explicitStateDir ?? base.stateDir);
  const cacheDir = path.resolve(options.cacheDir ?? fromEnv('FERRY_CACHE_DIR') ?? base.cacheDir);
  const logDir = path.resolve(
    options.logDir ?? fromEnv('FERRY_LOG_DIR') ?? (explicitStateDir === undefined ? base.logDir : path.join(stateDir, 'logs')),
  );

  const keysDir = path.join(stateDir, DIR_NAMES.keys);
  const vmDir = path.join(stateDir, DIR_NAMES.vm);
  return {
    system,
    configFile: path.resolve(configFile),
    configFileNamedBy,
    stateDir,
    cacheDir,
    logDir,
    keysDir,
    vmDir,
    imagesDir: path.join(cacheDir, DIR_NAMES.images),
    downloadsDir: path.join(cacheDir, DIR_NAMES.downloads),
    tmpDir: path.join(cacheDir, DIR_NAMES.tmp),
    kernelsDir: path.join(cacheDir, DIR_NAMES.kernels),
    controlSocket: path.join(stateDir, FILE_NAMES.controlSocket),
    daemonPid: path.join(stateDir, FILE_NAMES.daemonPid),
    installRecord: path.join(stateDir, FILE_NAMES.installRecord),
    currentImage: path.join(stateDir, FILE_NAMES.currentImage),
    sshConfig: path.join(stateDir, FILE_NAMES.sshConfig),
    builderSshConfig: path.join(stateDir, FILE_NAMES.builderSshConfig),
    builderKnownHosts: path.join(stateDir, FILE_NAMES.builderKnownHosts),
    daemonHostKey: path.join(keysDir, FILE_NAMES.daemonHostKey),
    clientKey: path.join(keysDir, FILE_NAMES.clientKey),
    guestClientKey: path.join(keysDir, FILE_NAMES.guestClientKey),
    guestHostKey: path.join(keysDir, FILE_NAMES.guestHostKey),
    stateDisk: path.join(vmDir, FILE_NAMES.stateDisk),
    guestRecord: path.join(vmDir, FILE_NAMES.guestRecord),
    guestKnownHosts: path.join(vmDir, FILE_NAMES.guestKnownHosts),
    hypervisorLog: path.join(logDir, FILE_NAMES.hypervisorLog),
    daemonLog: path.join(logDir, FILE_NAMES.daemonLog),
    daemonOutput: path.join(logDir, FILE_NAMES.daemonOutput),
    consoleLog: path.join(logDir, FILE_NAMES.consoleLog),
  };
}

interface BaseDirs {
  configFile: string;
  stateDir: string;
  cacheDir: string;
  logDir: string;
}

function userDefaults(platform: NodeJS.Platform, home: string, env: Readonly<Record<string, string | undefined>>): BaseDirs {
  // The XDG spec: a relative or empty value is invalid and must be ignored.
  const xdg = (name: string, fallback: string) => {
    const value = env[name];
    return value !== undefined && path.isAbsolute(value) ? value : fallback;
  };
  const configHome = xdg('XDG_CONFIG_HOME', path.join(home, '.config'));
  const stateHome = xdg('XDG_STATE_HOME', path.join(home, '.local', 'state'));
  const stateDir = path.join(stateHome, 'ferry');
  if (platform === 'darwin') {
    return {
      configFile: path.join(configHome, 'ferry', FILE_NAMES.config),
      stateDir,
      cacheDir: env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME) ? path.join(env.XDG_CACHE_HOME, 'ferry') : path.join(home, 'Library', 'Caches', 'ferry'),
      logDir: path.join(home, 'Library', 'Logs', 'ferry'),
    };
  }
  return {
    configFile: path.join(configHome, 'ferry', FILE_NAMES.config),
    stateDir,
    cacheDir: path.join(xdg('XDG_CACHE_HOME', path.join(home, '.cache')), 'ferry'),
    // XDG has no log directory; its spec names logs as an example of state.
    logDir: path.join(stateDir, 'logs'),
  };
}

function systemDefaults(platform: NodeJS.Platform): BaseDirs {
  const common = { configFile: path.join('/etc/ferry', FILE_NAMES.config), stateDir: '/var/lib/ferry' };
  if (platform === 'darwin') return { ...common, cacheDir: '/Library/Caches/ferry', logDir: '/Library/Logs/ferry' };
  return { ...common, cacheDir: '/var/cache/ferry', logDir: '/var/log/ferry' };
}

/**
 * Unix socket paths are limited (sun_path: 104 bytes on macOS, 108 on Linux, counting the final
 * NUL); a longer one fails at listen() with an unhelpful EINVAL. Call before creating a socket.
 */
export function assertSocketPathFits(socketPath: string, platform: NodeJS.Platform = process.platform): void {
  const limit = (platform === 'darwin' ? 104 : 108) - 1;
  const length = Buffer.byteLength(socketPath);
  if (length > limit) {
    throw new FerryError(`socket path ${socketPath} is ${length} bytes long; unix sockets allow at most ${limit} here`, {
      exitCode: ExitCode.Config,
      hint: 'set FERRY_STATE_DIR to a shorter directory',
    });
  }
}
