/**
 * The `debian` preset for aarch64-linux guests, made on any host without binfmt or root-level
 * emulation: mmdebstrap's `extract` variant unpacks the arm64 packages and runs none of their
 * maintainer scripts (which would need to execute arm64 binaries). What those scripts would have
 * made, and the guest needs, is made by an extract hook on the host instead (postinstHook):
 *
 *   base-passwd      /etc/passwd, /etc/group from its master files (passwords moved to shadow)
 *   shadow, login    /etc/shadow, /etc/gshadow (every account locked: `*`)
 *   openssh-server   the privilege-separation user `sshd` (sshd refuses to start without it)
 *   base-files       /etc/profile, root's dot files, /var/run → /run, /var/lock → /run/lock
 *   libc-bin         /etc/nsswitch.conf (its copy in /usr/share/libc-bin)
 *   debianutils      /etc/shells
 *   mawk             the awk alternative (/usr/bin/awk → mawk)
 *
 * dash ships /bin/sh itself (bookworm; trixie ships /usr/bin/sh, and base-files the merged-/usr
 * links /bin → usr/bin that make it /bin/sh, and /var/run, /var/lock as empty directories that
 * the hook replaces). nixbld and the builder user are made at boot by stage 2, as on amd64.
 * ld.so.cache is not made: Debian's glibc searches the multiarch directories
 * (/lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu) without it; stage 2 would only gain speed.
 *
 * The hook also installs qemu-user's x86_64 interpreter (the arm64 build of a static
 * qemu-x86_64: bookworm's qemu-user-static:arm64, trixie's qemu-user:arm64) at /usr/libexec/ferry,
 * whatever guest.interpreter says: the base stays the same when the interpreter changes, so switching between "none",
 * "qemu-user" and "rosetta" only changes the generated config archive, never the system disk.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { makeStagingDir, publishDirectory, stagingPathIn } from '../../atomic-file.js';
import { FerryError } from '../../errors.js';
import type { Runner } from '../../process/runner.js';
import { QEMU_USER_DIR } from '../guest-os/binfmt.js';
import { downloadDeb, extractDebMember, packageInfo, type AptTarget } from './apt.js';
import { cachedMmdebstrap } from './mmdebstrap.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';

/** What the guest needs to be a Nix builder; `?essential` stands in for the essential variant's base. */
export const DEBIAN_ARM64_PACKAGES = ['openssh-server', 'nix-bin', 'busybox', 'iproute2', 'ca-certificates', 'e2fsprogs', 'mawk'] as const;

/** The environment variable through which the hook finds the interpreter on the host. */
const QEMU_ENV = 'FERRY_QEMU_X86_64';

/**
 * The extract hook (`sh -c HOOK exec ROOTFS`; mmdebstrap runs no customize hooks for `extract`), run on the host with $1 = the unpacked rootfs):
 * what the skipped maintainer scripts would have made. Idempotent, so a package that does ship
 * one of these files wins.
 */
export function postinstHook(): string {
  return `set -eu
r="$1"
if [ ! -e "$r/etc/passwd" ]; then
  sed 's/^\\([^:]*\\):\\*:/\\1:x:/' "$r/usr/share/base-passwd/passwd.master" > "$r/etc/passwd"
  echo 'sshd:x:100:65534::/run/sshd:/usr/sbin/nologin' >> "$r/etc/passwd"
fi
if [ ! -e "$r/etc/group" ]; then
  sed 's/^\\([^:]*\\):\\*:/\\1:x:/' "$r/usr/share/base-passwd/group.master" > "$r/etc/group"
fi
[ -e "$r/etc/shadow" ] || sed 's/:.*/:*:19000:0:99999:7:::/' "$r/etc/passwd" > "$r/etc/shadow"
[ -e "$r/etc/gshadow" ] || sed 's/:.*/:*::/' "$r/etc/group" > "$r/etc/gshadow"
chown 0:42 "$r/etc/shadow" "$r/etc/gshadow"; chmod 640 "$r/etc/shadow" "$r/etc/gshadow"
[ -e "$r/etc/nsswitch.conf" ] || cp "$r/usr/share/libc-bin/nsswitch.conf" "$r/etc/nsswitch.conf"
if [ ! -e "$r/etc/shells" ]; then
  echo '# /etc/shells: valid login shells' > "$r/etc/shells"
  for s in /bin/sh /usr/bin/sh /bin/bash /usr/bin/bash /bin/rbash /usr/bin/rbash /bin/dash /usr/bin/dash; do
    if [ -e "$r$s" ]; then echo "$s" >> "$r/etc/shells"; fi
  done
fi
[ -e "$r/etc/profile" ] || cp "$r/usr/share/base-files/profile" "$r/etc/profile"
[ -e "$r/root/.profile" ] || cp "$r/usr/share/base-files/dot.profile" "$r/root/.profile"
[ -e "$r/root/.bashrc" ] || cp "$r/usr/share/base-files/dot.bashrc" "$r/root/.bashrc"
[ -L "$r/var/run" ] || { rmdir "$r/var/run" 2>/dev/null || true; ln -s /run "$r/var/run"; }
[ -L "$r/var/lock" ] || { rmdir "$r/var/lock" 2>/dev/null || true; ln -s /run/lock "$r/var/lock"; }
[ -e "$r/usr/bin/awk" ] || [ -L "$r/usr/bin/awk" ] || ln -s mawk "$r/usr/bin/awk"
mkdir -p "$r/var/empty" "$r${QEMU_USER_DIR}"
cp "$${QEMU_ENV}" "$r${QEMU_USER_DIR}/qemu-x86_64-static"
chmod 755 "$r${QEMU_USER_DIR}/qemu-x86_64-static"
`;
}

export function mmdebstrapArm64Argv(suite: string): string[] {
  return [
    '--variant=extract',
    '--include=?essential',
    `--include=${DEBIAN_ARM64_PACKAGES.join(',')}`,
    '--architectures=arm64',
    `--extract-hook=${postinstHook()}`,
    suite,
  ];
}

/**
 * Where each suite keeps a static qemu-x86_64: bookworm's qemu-user-static ships it as
 * qemu-x86_64-static; in trixie qemu-user itself is static (qemu-user-static is only a
 * transitional package whose qemu-x86_64-static is a symlink to qemu-user's qemu-x86_64).
 */
const QEMU_X86_64: Record<string, { package: string; member: string }> = {
  bookworm: { package: 'qemu-user-static', member: './usr/bin/qemu-x86_64-static' },
  trixie: { package: 'qemu-user', member: './usr/bin/qemu-x86_64' },
};

/**
 * A static qemu-x86_64 for arm64, the one file taken from its package (which holds every target,
 * ~375 MB unpacked; only this one is extracted). Cached per version.
 */
export async function qemuX86_64ForArm64(apt: AptTarget): Promise<{ path: string; packageVersion: string }> {
  const source = QEMU_X86_64[apt.suite] ?? QEMU_X86_64.trixie;
  const info = await packageInfo(apt, source.package);
  const root = join(apt.downloadsDir, DOWNLOAD_FILES.qemuUserDir);
  const dir = join(root, `${info.name}_${info.arch}_${info.version.replaceAll(':', '%3a')}`);
  const binary = join(dir, 'qemu-x86_64-static');
  const packageVersion = `${info.name}:arm64=${info.version}`;
  if (existsSync(binary)) return { path: binary, packageVersion };
  await mkdir(root, { recursive: true });
  const work = await makeStagingDir(root);
  try {
    const spec = `${info.name}:arm64=${info.version}`;
    const deb = await downloadDeb(apt, info, work);
    const member = source.member;
    await extractDebMember(deb, work, member, apt.runner);
    const extracted = join(work, member);
    // existsSync follows a symlink: a member that is only a link (to a file not extracted) is missing too.
    if (!existsSync(extracted)) throw new FerryError(`${spec} has no ${member.slice(1)}`);
    const staging = stagingPathIn(root);
    await mkdir(staging);
    await rename(extracted, join(staging, 'qemu-x86_64-static'));
    await publishDirectory(staging, dir, binary);
    return { path: binary, packageVersion };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The arm64 rootfs tarball, cached by the mmdebstrap argv (hook included) and the interpreter's version. */
export async function debianArm64RootfsTar(downloadsDir: string, suite: string, qemu: { path: string; packageVersion: string }, runner?: Runner): Promise<string> {
  return cachedMmdebstrap(downloadsDir, mmdebstrapArm64Argv(suite), { keyExtra: [qemu.packageVersion], env: { [QEMU_ENV]: qemu.path }, runner });
}
