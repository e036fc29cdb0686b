/**
 * Stage 2: runs under busybox init in the real root (the image). Mounts, hostname, clock,
 * network, the Nix registration, nix-daemon and sshd, then the FERRY-READY line the daemon waits
 * for. Also the shutdown script (clean unmount of the state disk) and the root control command
 * the daemon uses to power off and to set the clock.
 */
import { nixRegistrationLoadScript } from '../layers/nix.js';
import { STATE_MOUNT } from './stage1.js';

export const STAGE2_PATH = '/usr/lib/ferry/stage2';
export const SHUTDOWN_PATH = '/usr/lib/ferry/shutdown';
export const CONTROL_PATH = '/usr/lib/ferry/control';
export const BUILDER_USER = 'builder';
export const BUILDER_UID = 1000;

/** busybox init's table: stage 2 once, clean shutdown on ctrl-alt-del or a signal. */
export function inittab(): string {
  return `::sysinit:${STAGE2_PATH}
::ctrlaltdel:/bin/busybox poweroff
::shutdown:${SHUTDOWN_PATH}
`;
}

export function stage2Script(): string {
  return `#!/bin/sh
# ferry stage 2 (generated)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
cmdline=$(cat /proc/cmdline 2>/dev/null)
param() { for word in $cmdline; do case "$word" in "$1="*) echo "\${word#*=}";; esac; done; }
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname -F /etc/hostname
# The clock: from the host, on the kernel command line (the guest has no RTC it can trust).
t=$(param ferry.time); [ -n "$t" ] && date -s "@$t" >/dev/null
# Network: static for qemu user networking, DHCP behind a NAT (vfkit, hyperkit).
ip link set lo up
ip link set eth0 up
case "$(param ferry.net)" in
  dhcp) busybox udhcpc -i eth0 -q -f -s /usr/lib/ferry/udhcpc >/dev/null 2>&1 ;;
  *) ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2; echo "nameserver 10.0.2.3" > /etc/resolv.conf ;;
esac
address=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \\([0-9.]*\\).*/\\1/p' | head -n 1)
# The builder's home and the Nix state the daemon needs.
grep -q '^${BUILDER_USER}:' /etc/passwd || echo '${BUILDER_USER}:x:${BUILDER_UID}:${BUILDER_UID}:ferry builder:/home/${BUILDER_USER}:/bin/sh' >> /etc/passwd
grep -q '^${BUILDER_USER}:' /etc/group || echo '${BUILDER_USER}:x:${BUILDER_UID}:' >> /etc/group
grep -q '^${BUILDER_USER}:' /etc/shadow || echo '${BUILDER_USER}:*:19000:0:99999:7:::' >> /etc/shadow
mkdir -p /home/${BUILDER_USER} && chown ${BUILDER_UID}:${BUILDER_UID} /home/${BUILDER_USER}
mkdir -p /nix/store /nix/var/nix/daemon-socket /nix/var/nix/profiles/per-user /nix/var/log/nix
chmod 1775 /nix/store 2>/dev/null
${nixRegistrationLoadScript().trimEnd()}
nix-daemon >/var/log/nix-daemon.log 2>&1 &
mkdir -p /run/sshd && chmod 755 /run/sshd
/usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log || echo "FERRY-FAILED: sshd did not start" > /dev/console
i=0; while [ ! -S /nix/var/nix/daemon-socket/socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
read -r uptime _ < /proc/uptime
echo "FERRY-READY ip=\${address:-unknown} uptime=\${uptime}" > /dev/console
`;
}

export function shutdownScript(): string {
  return `#!/bin/sh
# ferry shutdown (generated): stop every process, then leave the state disk clean.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
sync
umount /nix 2>/dev/null || umount -l /nix
umount ${STATE_MOUNT} 2>/dev/null || mount -o remount,ro ${STATE_MOUNT}
sync
echo "FERRY-STOPPED" > /dev/console
`;
}

/**
 * The only thing the daemon's key may run as root (a forced command): power off, or set the
 * clock after the host slept. Arguments are checked, never evaluated.
 */
export function controlScript(): string {
  return `#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -- $SSH_ORIGINAL_COMMAND
case "$1" in
  poweroff) busybox poweroff ;;
  settime) case "$2" in ''|*[!0-9]*) echo "settime: expected seconds since the epoch" >&2; exit 64 ;; esac; date -s "@$2" >/dev/null ;;
  time) date +%s ;;
  *) echo "ferry control: unknown command: $1 (expected poweroff, settime SECONDS or time)" >&2; exit 64 ;;
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
