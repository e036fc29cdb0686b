/**
 * The commented ferry.toml that `ferry install` writes. Every setting is shown commented out with
 * its default for this host, so the file documents itself and a later ferry's better defaults still
 * apply to keys the user never touched. Uncommenting any `# key = value` line as it stands gives
 * the same configuration (the unit tests check this).
 */
import { defaultConfig } from './load.js';
import type { HostInfo } from './host.js';
import { formatMaxStartups } from './schema.js';
import { formatDuration, formatSize } from './units.js';

export function renderDefaultConfig(host?: HostInfo): string {
  const config = defaultConfig(host === undefined ? {} : { host });
  const { guest, image, vm, daemon } = config;
  const toml = (value: string | number | readonly string[]): string =>
    typeof value === 'number' ? String(value) : typeof value === 'string' ? JSON.stringify(value) : `[${value.map((v) => JSON.stringify(v)).join(', ')}]`;
  const setting = (key: string, value: string | number | readonly string[]) => `# ${key} = ${toml(value)}`;

  return `# ferry.toml — the Linux guest that builds for this machine's Nix, and the daemon serving it.
#
# Every setting is optional. The commented lines show the defaults (those that depend on the
# host are shown for this one); uncomment a line and edit it to change a setting. The daemon
# notices changes to this file, rebuilds the guest image if needed and swaps the guest once
# no build is running.
#
# Sizes: "512MiB", "4GiB", "4G" (binary units) or a number of bytes.
# Durations: "90s", "30m", "1h30m"; "0" where it means "never".

[guest]
# The guest's Nix system. Default: the host's architecture (no emulation).
${setting('system', guest.system)}
# Base of the guest image: "nixpkgs" (kernel, busybox, openssh, nix from the binary cache; the
# default on macOS) or "debian" (mmdebstrap and Debian's kernel; the default on Linux).
${setting('preset', guest.preset)}
# The Debian release of the debian preset: "trixie" (Nix 2.26) or "bookworm" (Nix 2.8). The
# state disk is kept when it changes, either way: both keep the Nix database at schema 10.
${setting('debian-suite', guest.debianSuite)}
# Virtual CPUs. Default: the host's, at most 4.
${setting('cpus', guest.cpus)}
${setting('memory', formatSize(guest.memoryBytes))}
${setting('hostname', guest.hostname)}
# The state disk holds /nix and survives image rebuilds. It is created once, sparse; a larger
# size here grows it, a smaller one is refused.
${setting('state-disk-size', formatSize(guest.stateDiskSizeBytes))}
# Other systems to build in the same guest, e.g. ["x86_64-linux"] on an aarch64-linux guest.
${setting('extra-systems', guest.extraSystems)}
# How the guest runs binaries of a foreign extra system: "rosetta" (Apple silicon, vfkit
# backend), "qemu-user" (anywhere), or "none". Default: rosetta where available, else qemu-user,
# and none when no extra system needs one.
${setting('interpreter', guest.interpreter)}

[guest.nix]
# The guest's nix.conf, and what the host's Nix is told about this builder.
# Parallel builds: a whole number, or "auto" for the guest's cpus.
${setting('max-jobs', 'auto')}
# Cores per build (0 = all of the guest's).
${setting('cores', guest.nix.cores)}
# Supported features (nix.conf system-features, and the /etc/nix/machines line).
${setting('features', guest.nix.features)}
${setting('trusted-users', guest.nix.trustedUsers)}
# Garbage collection in the guest before the state disk fills: below min-free free space, Nix
# deletes what builds left behind until max-free is free. "auto": a fifth and two fifths of
# state-disk-size.
${setting('min-free', 'auto')}
${setting('max-free', 'auto')}
# The binary caches the guest substitutes from, and the keys it trusts them by: "host" (those
# of the host's Nix, read from /etc/nix/nix.conf when the image is built; Nix's default,
# cache.nixos.org, where it names none) or a list. A cache on the host's loopback
# ("http://127.0.0.1:8080") is reached from the guest at the host's address as the VM sees it
# (it must listen on 127.0.0.1, not only ::1).
${setting('substituters', guest.nix.substituters)}
${setting('trusted-public-keys', guest.nix.trustedPublicKeys)}
# Lines appended to the guest's nix.conf (after everything above, so they win), e.g.
# "keep-outputs = true".
${setting('extra-config', guest.nix.extraConfig)}

[image]
# System disk size: "auto" (from the content, with headroom) or a size.
${setting('size', image.sizeBytes === 'auto' ? 'auto' : formatSize(image.sizeBytes))}
# Extra layers on top of the preset, later ones overriding earlier ones. Relative paths are
# relative to this file. For example:
#   [[image.layers]]
#   type = "tar"          # a root filesystem tarball: plain, gzip, xz or zstd
#   path = "extra.tar.zst"
#   [[image.layers]]
#   type = "dir"          # a directory tree, owned by root in the image
#   path = "overlay/"
#   [[image.layers]]
#   type = "nix"          # store paths with their closure, registered in the guest's Nix database
#   paths = ["/nix/store/…-hello-2.12"]

[vm]
# "auto" picks vfkit on Apple silicon, hyperkit on Intel Macs and qemu elsewhere.
${setting('backend', vm.backend)}
# qemu's accelerator: "auto" picks hvf on macOS, kvm where /dev/kvm works, else tcg.
${setting('accel', vm.accel)}
# Appended to the guest kernel's command line.
${setting('kernel-cmdline-extra', vm.kernelCmdlineExtra)}

[daemon]
# The SSH endpoint the host's nix-daemon uses. Only "127.0.0.1" or "::1": the daemon never
# listens beyond this machine. A new port or listen takes effect when the daemon restarts
# (run \`ferry install\` again so the ssh alias follows).
${setting('port', daemon.port)}
${setting('listen', daemon.listen)}
# Stop the guest after this long without a session ("0" = never); the next build boots it again.
${setting('idle-timeout', formatDuration(daemon.idleTimeoutMs))}
# How long a starting guest may take to report ready (FERRY-READY on its console) before ferry
# gives up (or rolls back).
${setting('ready-timeout', formatDuration(daemon.readyTimeoutMs))}
# How long the SSH handshake with the ready guest's sshd may take before a session fails.
${setting('ssh-timeout', formatDuration(daemon.sshTimeoutMs))}
# How long a session waits for the guest's image to be built (after a fresh install or a change
# of ferry.toml) before it fails; the build goes on.
${setting('image-timeout', formatDuration(daemon.imageTimeoutMs))}
# Public keys accepted besides the one \`ferry install\` generated (paths to .pub files).
${setting('authorized-keys', daemon.authorizedKeys)}
# Limits before login, as OpenSSH's sshd: a connection that has not logged in after
# login-grace-time ("0" = never) or has failed max-auth-tries times is closed; new connections
# are refused at random once max-startups' start ones wait to log in (rate% of them, rising to
# all at full). They take effect when the daemon restarts.
${setting('login-grace-time', formatDuration(daemon.loginGraceTimeMs))}
${setting('max-auth-tries', daemon.maxAuthTries)}
${setting('max-startups', formatMaxStartups(daemon.maxStartups))}
# "trace", "debug", "info", "warn" or "error".
${setting('log-level', daemon.logLevel)}
`;
}
