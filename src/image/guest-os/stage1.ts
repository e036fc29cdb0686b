/**
 * Stage 1: the /init of ferry's initramfs (busybox sh). It loads the virtio modules, mounts the
 * system disk read-only under a tmpfs-backed overlay root, mounts the state disk and /nix from
 * it (with the image's own /nix as the lower layer), copies in the generated config files that
 * the config archive appended to the initramfs, copies its own static busybox into the new root
 * (GUEST_BUSYBOX) and hands over to that busybox's init.
 *
 * `ferry.init=PATH` on the kernel command line hands over to PATH instead (an absolute path that
 * must exist in the new root). ferry itself never sets it: it exists so that bench/boot.ts can
 * boot the same Debian rootfs with its own systemd (`ferry.init=/lib/systemd/systemd`) through
 * exactly the same kernel, initramfs and disks, for a like-for-like boot-time comparison.
 *
 * Anything that goes wrong prints `FERRY-FAILED: reason` on the console (the daemon reports it)
 * and powers the guest off instead of leaving it hung.
 */

import { posix } from 'node:path';
import { BINFMT_PATH } from './binfmt.js';
import { NIX_REGISTRATION_PATH } from '../layers/nix.js';
import { STORE_REGISTRATION_PATH } from '../store-disks.js';

/** Kernel modules stage 1 loads (their dependencies are added when the initramfs is built). */
export const STAGE1_MODULES = [
  'virtio_pci',
  'virtio_mmio',
  'virtio_blk',
  'virtio_net',
  'virtio_console',
  'virtio_rng',
  'overlay',
  // Only when the config asks for an interpreter (binfmt.ts); the modules live only in the
  // initramfs, so stage 2 could not load them later.
  'binfmt_misc',
  'virtiofs',
] as const;

/**
 * The power button, loaded when the kernel has them: a hypervisor's clean stop (QMP
 * system_powerdown, vfkit's REST `Stop`, which is VZVirtualMachine's requestStop, hyperkit's
 * SIGTERM) presses it, the kernel reports KEY_POWER on an evdev device, and stage 2's acpid
 * powers the guest off cleanly. `button` is the ACPI button (a module in Debian's amd64 kernel,
 * built in on arm64); a kernel without them still boots, it just cannot be asked that way, and
 * the stop ladder goes on to the backend's hard stop.
 */
export const POWER_BUTTON_MODULES = ['evdev', 'button'] as const;

/**
 * The modules (and dependencies) stage 1 loads only when the config archive carries the binfmt
 * script, i.e. an interpreter is configured: loading them costs ≈ 70 ms of an emulated boot.
 */
export const INTERPRETER_MODULES = ['binfmt_misc', 'virtiofs', 'fuse'] as const;

/** Where stage 1 leaves the state disk mounted in the new root. */
export const STATE_MOUNT = '/var/lib/ferry/state';
/**
 * Where stage 1 leaves a copy of the initramfs's static busybox in the new root: init, stage 2
 * and the other generated scripts run on it whatever the base's own busybox is (Debian's is
 * dynamically linked). Its shell runs its applets without an exec — under emulation each exec
 * of a dynamically linked tool costs tens of milliseconds, and stage 2 is on the boot's critical path.
 */
export const GUEST_BUSYBOX = '/usr/lib/ferry/busybox';
/** Where the config archive puts the generated files, relative to the initramfs root. */
export const OVERLAY_DIR = 'ferry/overlay';

export function stage1Init(): string {
  return `#!/bin/sh
# ferry stage 1 (generated)
export PATH=/bin
fail() { echo "FERRY-FAILED: $*" > /dev/console; sleep 1; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
init=''
stores=0
for word in $(cat /proc/cmdline); do
  case "$word" in
    ferry.init=*) init="\${word#ferry.init=}";;
    ferry.stores=*) stores="\${word#ferry.stores=}";;
  esac
done
# The store disks follow the state disk: vdc (the base), vdd (a delta) — store-disks.ts.
disks='vda vdb'
[ "$stores" -ge 1 ] && disks="$disks vdc"
[ "$stores" -ge 2 ] && disks="$disks vdd"
top=''
interpreter=''
[ -e /${OVERLAY_DIR}${BINFMT_PATH} ] && interpreter=1
while read -r module; do
  case "\${module##*/}" in
    ${INTERPRETER_MODULES.map((name) => `${name}.ko*`).join('|')}) [ -n "$interpreter" ] || continue ;;
  esac
  insmod "$module" 2>/dev/null
done < /lib/modules/load-order
i=0
for disk in $disks; do
  while [ ! -b /dev/$disk ]; do
    i=$((i + 1)); [ $i -gt 200 ] && fail "no /dev/$disk after 10 s (disks expected: $disks)"
    sleep 0.05
  done
done
mkdir -p /lower /state /rw /newroot
mount -t ext4 -o ro /dev/vda /lower || fail "cannot mount the system disk /dev/vda"
mount -t ext4 /dev/vdb /state || fail "cannot mount the state disk /dev/vdb"
mount -t tmpfs -o mode=755 rw /rw || fail "cannot mount the tmpfs for the root overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay root -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "cannot mount the root overlay"
mkdir -p /state/nix/upper /state/nix/work /newroot/nix
# /nix's lower layers, top first: the store delta, the store base, the system disk's own /nix.
lower=''
[ -d /lower/nix ] && lower=/lower/nix
n=0
for disk in $disks; do
  case "$disk" in vda|vdb) continue ;; esac
  mkdir -p /stores/$n
  mount -t ext4 -o ro /dev/$disk /stores/$n || fail "cannot mount the store disk /dev/$disk"
  lower="/stores/$n/nix\${lower:+:$lower}"
  top=/stores/$n
  n=$((n + 1))
done
if [ -n "$lower" ]; then
  mount -t overlay nix -o lowerdir=$lower,upperdir=/state/nix/upper,workdir=/state/nix/work /newroot/nix || fail "cannot mount /nix"
else
  mount --bind /state/nix/upper /newroot/nix || fail "cannot mount /nix"
fi
cp -a /${OVERLAY_DIR}/. /newroot/ || fail "cannot install the generated files"
if [ -n "$top" ]; then
  # The top store disk's registration covers the whole closure; stage 2 loads it from here.
  mkdir -p /newroot${posix.dirname(NIX_REGISTRATION_PATH)} &&
    cp $top${STORE_REGISTRATION_PATH} /newroot${NIX_REGISTRATION_PATH} &&
    cp $top${STORE_REGISTRATION_PATH}.sha256 /newroot${NIX_REGISTRATION_PATH}.sha256 || fail "cannot install the store's Nix registration"
fi
mkdir -p /newroot${posix.dirname(GUEST_BUSYBOX)} && cp /bin/busybox /newroot${GUEST_BUSYBOX} || fail "cannot install ${GUEST_BUSYBOX}"
if [ -n "$init" ]; then
  case "$init" in /*) ;; *) fail "ferry.init=$init: expected an absolute path" ;; esac
  # Checked through the new root's own symlinks only as far as they are relative (Debian's /lib → usr/lib is).
  [ -x "/newroot$init" ] || fail "ferry.init=$init: no such executable in the new root"
  set -- "$init"
else
  set -- ${GUEST_BUSYBOX} init
fi
mkdir -p /newroot${STATE_MOUNT}
mount --move /state /newroot${STATE_MOUNT}
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot "$@"
fail "switch_root failed"
`;
}
