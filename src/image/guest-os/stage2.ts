/**
 * Stage 2: runs under busybox init in the real root (the image). Mounts, hostname, clock,
 * network, the Nix registration, nix-daemon and sshd, then the FERRY-READY line the daemon waits
 * for. Also the shutdown script (clean unmount of the state disk) and the root control command
 * the daemon uses to power off and to set the clock.
 */
import { nixRegistrationLoadScript } from '../layers/nix.js';
import { BINFMT_PATH } from './binfmt.js';
import { GUEST_BUSYBOX, STATE_MOUNT } from './stage1.js';

export const STAGE2_PATH = '/usr/lib/ferry/stage2';
export const SHUTDOWN_PATH = '/usr/lib/ferry/shutdown';
export const CONTROL_PATH = '/usr/lib/ferry/control';
/** busybox acpid's config directory: its event map, its action table and the power button's handler. */
export const ACPI_DIR = '/usr/lib/ferry/acpi';
export const BUILDER_USER = 'builder';
export const BUILDER_UID = 1000;
/** Where the guest's nix-daemon listens (Nix's default); the daemon's front connects ssh-ng sessions to it. */
export const NIX_DAEMON_SOCKET = '/nix/var/nix/daemon-socket/socket';
/** Nix's build users (nixbld1…N in group nixbld), the ids NixOS uses. */
export const NIX_BUILD_USERS = 32;
export const NIX_BUILD_GID = 30000;
export const NIX_BUILD_UID_BASE = 30000;

/**
 * The host's address in the guest's nix.conf (a binary cache on the host's loopback), until stage 2
 * puts the gateway there. `.invalid` (RFC 2606) never resolves: left as it is, it fails plainly.
 */
export const HOST_ADDRESS_PLACEHOLDER = 'ferry-host.invalid';

/** busybox init's table: stage 2 once, clean shutdown on ctrl-alt-del or a signal. */
export function inittab(): string {
  return `::sysinit:${STAGE2_PATH}
::ctrlaltdel:${GUEST_BUSYBOX} poweroff
::shutdown:${SHUTDOWN_PATH}
`;
}

/** Where stage 2 records the state disk's size after growing its filesystem to fill it. */
export const STATE_SIZE_STAMP = `${STATE_MOUNT}/.ferry-resized-sectors`;

/**
 * Stage 2 is on the critical path of every boot, and under emulation (tcg) each step costs: it
 * runs on the static busybox (applets without an exec), brings the network up first, starts
 * sshd as soon as the builder exists and nix-daemon once the store is in place, and does the rest
 * while they load. FERRY-READY waits for all of it.
 */
export function stage2Script(): string {
  return `#!${GUEST_BUSYBOX} sh
# ferry stage 2 (generated)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# By its full path: busybox runs applets that need an exec through /proc/self/exe.
${GUEST_BUSYBOX} mount -t proc proc /proc
read -r cmdline < /proc/cmdline
time='' net=''
for word in $cmdline; do
  case "$word" in ferry.time=*) time=\${word#*=} ;; ferry.net=*) net=\${word#*=} ;; esac
done
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
ln -sf /proc/self/mounts /etc/mtab
hostname -F /etc/hostname
# The clock: from the host, on the kernel command line (the guest has no RTC it can trust), plus
# the time since the kernel started: under tcg stage 2 begins 5-10 s after qemu did, and a guest
# set to the bare command-line time was that far behind for its first sessions (bench/soak.ts).
if [ -n "$time" ]; then read -r up _ < /proc/uptime; date -s "@$((time + \${up%.*}))" >/dev/null; fi
# Network first: static for qemu user networking, DHCP behind a NAT (vfkit, hyperkit). A client
# that connects before the address is up has its SYN dropped and waits out TCP's retransmission
# (seconds); with the address up it gets a reset and retries at once until sshd listens.
ip link set lo up
ip link set eth0 up
case "$net" in
  dhcp)
    udhcpc -i eth0 -q -f -s /usr/lib/ferry/udhcpc >/dev/null 2>&1
    address=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \\([0-9.]*\\).*/\\1/p' | head -n 1) ;;
  *)
    address=10.0.2.15
    ip addr add $address/24 dev eth0; ip route add default via 10.0.2.2; echo "nameserver 10.0.2.3" > /etc/resolv.conf ;;
esac
${hostAddressScript().trimEnd()}
# The builder, then sshd; the build users and the store, then nix-daemon.
grep -q '^${BUILDER_USER}:' /etc/passwd || echo '${BUILDER_USER}:x:${BUILDER_UID}:${BUILDER_UID}:ferry builder:/home/${BUILDER_USER}:/bin/sh' >> /etc/passwd
grep -q '^${BUILDER_USER}:' /etc/group || echo '${BUILDER_USER}:x:${BUILDER_UID}:' >> /etc/group
grep -q '^${BUILDER_USER}:' /etc/shadow || echo '${BUILDER_USER}:*:19000:0:99999:7:::' >> /etc/shadow
mkdir -p /home/${BUILDER_USER} && chown ${BUILDER_UID}:${BUILDER_UID} /home/${BUILDER_USER}
# sshd and nix-daemon are dynamically linked and slow to load under emulation: they load while
# the rest of stage 2 runs, sshd first (a login needs nothing else).
mkdir -p -m 755 /run/sshd
{ /usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log || echo "FERRY-FAILED: sshd did not start" > /dev/console; } &
# Build users: nix.conf names the group; Debian's nix-bin creates neither group nor users.
if ! grep -q '^nixbld:' /etc/group; then
  members=''
  i=1; while [ $i -le ${NIX_BUILD_USERS} ]; do
    echo "nixbld$i:x:$((${NIX_BUILD_UID_BASE} + i)):${NIX_BUILD_GID}:Nix build user $i:/var/empty:/usr/sbin/nologin" >> /etc/passwd
    echo "nixbld$i:!:19000::::::" >> /etc/shadow
    members="$members\${members:+,}nixbld$i"
    i=$((i + 1))
  done
  echo "nixbld:x:${NIX_BUILD_GID}:$members" >> /etc/group
fi
mkdir -p /nix/store /nix/var/nix/daemon-socket /nix/var/nix/profiles/per-user /nix/var/nix/gcroots/per-user /nix/var/log/nix
mkdir -p /nix/var/nix/profiles/per-user/${BUILDER_USER} /nix/var/nix/gcroots/per-user/${BUILDER_USER}
chown ${BUILDER_UID}:${BUILDER_UID} /nix/var/nix/profiles/per-user/${BUILDER_USER} /nix/var/nix/gcroots/per-user/${BUILDER_USER}
chgrp ${NIX_BUILD_GID} /nix/store && chmod 1775 /nix/store
# Nix's database is made (on a fresh state disk) and loaded, then synced, before anything uses it.
# Nix writes its schema file beside a database whose first transaction is still unsynced in
# SQLite's WAL: a hypervisor killed in the guest's first seconds left the schema file and a
# database without tables, and every build after it failed ("no such table: ValidPaths", seen
# by bench/soak.ts). One sync per boot; the state disk has little dirty at this point.
[ -f /nix/var/nix/db/schema ] || nix-store --init
${nixRegistrationLoadScript().trimEnd()}
sync
# Foreign builds (x86_64-linux on an aarch64 guest): present only when the config asks for an interpreter.
[ -x ${BINFMT_PATH} ] && ${BINFMT_PATH}
${sandboxProbe().trimEnd()}
setsid nix-daemon </dev/null >/var/log/nix-daemon.log 2>&1 &
${powerButtonScript().trimEnd()}
# The state disk grows when its configured size grows: the file was extended on the host, the
# filesystem follows here, online. The size it was grown to is stamped on the disk, so an
# unchanged disk costs no resize2fs.
read -r sectors < /sys/block/vdb/size
resized='' resize=''
read -r resized 2>/dev/null < ${STATE_SIZE_STAMP}
if [ "$sectors" != "$resized" ]; then
  { resize2fs /dev/vdb >/var/log/resize2fs.log 2>&1 && echo "$sectors" > ${STATE_SIZE_STAMP} ||
    echo "ferry: resize2fs /dev/vdb failed, see /var/log/resize2fs.log" > /dev/console; } &
  resize=$!
fi
# sshd forks into the background before it binds port 22, and FERRY-READY promises a listening
# sshd: wait for the socket in LISTEN state (0A) in /proc/net/tcp{,6}, for nix-daemon's, and for
# the resize.
i=0; while ! grep -qs ':0016 [0-9A-F]*:0000 0A ' /proc/net/tcp /proc/net/tcp6 && [ $i -lt 500 ]; do sleep 0.02; i=$((i + 1)); done
i=0; while [ ! -S ${NIX_DAEMON_SOCKET} ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i + 1)); done
[ -n "$resize" ] && wait $resize
read -r uptime _ < /proc/uptime
echo "FERRY-READY ip=\${address:-unknown} uptime=\${uptime}" > /dev/console
`;
}

/**
 * A binary cache on the host's loopback: nix.conf names the host by a placeholder (one config
 * archive for every backend); the host is this guest's gateway, qemu's 10.0.2.2 or the DHCP
 * router, put in before nix-daemon reads the file.
 */
export function hostAddressScript(nixConf = '/etc/nix/nix.conf'): string {
  return `# A cache on the host's loopback: the host is this guest's gateway (10.0.2.2, or the DHCP router).
if grep -q '${HOST_ADDRESS_PLACEHOLDER}' ${nixConf}; then
  gateway=$(ip route | sed -n 's/^default via \\([0-9.]*\\).*/\\1/p' | head -n 1)
  sed -i "s/${HOST_ADDRESS_PLACEHOLDER.replace(/\./g, '\\.')}/\${gateway:-10.0.2.2}/g" ${nixConf}
fi
`;
}

/**
 * Nix builds in namespaces (mount, pid, ipc, uts, network; a user namespace where it can): the
 * guest refuses to come up where the kernel will not make them, so a build never gets as far as
 * Nix's own "cloning builder process" error, and the reason is on the console for the daemon to
 * report. nix.conf's sandbox-fallback = false covers what this probe cannot see.
 */
export function sandboxProbe(): string {
  return `# Nix's sandbox: the namespaces it needs must be there, or nothing builds (never unsandboxed).
for kind in mnt pid ipc uts net; do
  read -r max < /proc/sys/user/max_\${kind}_namespaces
  [ "$max" = 0 ] && echo "FERRY-FAILED: Nix's sandbox cannot be set up: user.max_\${kind}_namespaces is 0 (the kernel command line or a sysctl turned it off); ferry never builds unsandboxed" > /dev/console && exit 1
done
${GUEST_BUSYBOX} unshare -m -p -f -i -u -n true 2>/tmp/ferry-sandbox-probe ||
  { echo "FERRY-FAILED: Nix's sandbox cannot be set up: the kernel refused its namespaces ($(cat /tmp/ferry-sandbox-probe)); ferry never builds unsandboxed" > /dev/console; exit 1; }
`;
}

/**
 * The power button (POWER_BUTTON_MODULES): busybox acpid reads every evdev device the kernel made
 * and runs the handler on KEY_POWER. Without an input device (a kernel without the modules) there
 * is nothing to read, and acpid would only exit complaining.
 */
function powerButtonScript(): string {
  return `# The power button, a hypervisor's clean stop: acpid runs ${ACPI_DIR}/power-button on KEY_POWER.
[ -e /dev/input/event0 ] && setsid acpid -d -c ${ACPI_DIR} -a ${ACPI_DIR}/actions -M ${ACPI_DIR}/map </dev/null >/var/log/acpid.log 2>&1 &
`;
}

/**
 * acpid's files. The map turns a press of KEY_POWER (EV_KEY, code 116, value 1) into the event
 * "button/power PWRF"; the action table sends any event naming PWRF to ./power-button in
 * ACPI_DIR. Both are given explicitly: busybox acpid's built-in tables apply only when these files
 * are missing, and an empty file would silently map nothing (util-linux/acpid.c).
 */
export function acpidFiles(): Array<{ path: string; mode: number; content: string }> {
  return [
    { path: `${ACPI_DIR}/map`, mode: 0o644, content: 'EV_KEY 01 KEY_POWER 116 1 button/power PWRF\n' },
    { path: `${ACPI_DIR}/actions`, mode: 0o644, content: 'PWRF power-button\n' },
    {
      path: `${ACPI_DIR}/power-button`,
      mode: 0o755,
      content: `#!${GUEST_BUSYBOX} sh
# ferry (generated): the hypervisor pressed the power button; init's shutdown leaves the state disk clean.
echo "ferry: the power button was pressed, powering off" > /dev/console
exec ${GUEST_BUSYBOX} poweroff
`,
    },
  ];
}

export function shutdownScript(): string {
  return `#!/bin/sh
# ferry shutdown (generated): stop every process, then leave the state disk clean.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
sync
busybox umount /nix 2>/dev/null || busybox umount -l /nix
busybox umount ${STATE_MOUNT} 2>/dev/null || busybox mount -o remount,ro ${STATE_MOUNT}
sync
echo "FERRY-STOPPED" > /dev/console
`;
}

/**
 * The only thing the daemon's key may run as root (a forced command): power off, set the clock
 * after the host slept, read it, or report the state disk's use. Arguments are checked, never
 * evaluated.
 */
export function controlScript(): string {
  return `#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -- $SSH_ORIGINAL_COMMAND
case "$1" in
  # Detached and a moment later, so this session reports success before init stops sshd.
  poweroff) setsid sh -c 'sleep 0.2; busybox poweroff' </dev/null >/dev/null 2>&1 & echo "powering off" ;;
  settime) case "$2" in ''|*[!0-9]*) echo "settime: expected seconds since the epoch" >&2; exit 64 ;; esac; date -s "@$2" >/dev/null ;;
  time) date +%s ;;
  # The state disk's block size, blocks, free blocks and blocks free to builds: ferry status shows them.
  df) stat -f -c '%S %b %f %a' ${STATE_MOUNT} ;;
  *) echo "ferry control: unknown command: $1 (expected poweroff, settime SECONDS, time or df)" >&2; exit 64 ;;
esac
`;
}

export function udhcpcScript(): string {
  return `#!/bin/sh
# busybox udhcpc event script (generated)
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "\${router%% *}"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
`;
}
