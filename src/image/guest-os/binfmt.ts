/**
 * Foreign binaries in the guest: how an aarch64 guest runs x86_64-linux builds (and an x86_64
 * guest aarch64-linux ones) through the kernel's binfmt_misc, with Rosetta (vfkit on Apple
 * silicon) or qemu-user as the interpreter.
 *
 * Stage 2 runs the generated script (BINFMT_PATH) when the config asks for an interpreter. The
 * registration carries the `F` flag (fix binary): the kernel opens the interpreter when it is
 * registered, so it keeps working inside a build's chroot or sandbox, where the interpreter's
 * path does not exist. Magic and mask are qemu's (scripts/qemu-binfmt-conf.sh); Rosetta's are
 * the same x86_64 ELF header match, with the `C` flag Apple's instructions use
 * (`update-binfmts --credentials yes --fix-binary yes`).
 */
import type { FerryConfig } from '../../config/types.js';
import { needsInterpreter } from '../../config/defaults.js';

export const BINFMT_PATH = '/usr/lib/ferry/binfmt';
/** Where the arm64 debian preset puts qemu-user's x86_64 interpreter (see presets/debian-arm64.ts). */
export const QEMU_USER_DIR = '/usr/libexec/ferry';
/** Where the guest mounts the virtiofs share vfkit's `--device rosetta,mountTag=rosetta` exports. */
export const ROSETTA_MOUNT = '/mnt/rosetta';
export const ROSETTA_TAG = 'rosetta';

/** ELF header match for one architecture: 20 bytes of magic and mask, in binfmt_misc's `\xNN` text. */
interface ElfMatch {
  magic: string;
  mask: string;
}

/** From qemu's scripts/qemu-binfmt-conf.sh (x86_64_magic/x86_64_mask, aarch64_magic/aarch64_mask). */
export const ELF_MATCH: Record<'x86_64-linux' | 'aarch64-linux', ElfMatch> = {
  'x86_64-linux': {
    magic: '\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00',
    mask: '\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff',
  },
  'aarch64-linux': {
    magic: '\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00',
    mask: '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff',
  },
};

export interface BinfmtEntry {
  /** The entry's name under /proc/sys/fs/binfmt_misc. */
  name: string;
  system: keyof typeof ELF_MATCH;
  interpreter: string;
  flags: string;
}

/** The line written to /proc/sys/fs/binfmt_misc/register: `:name:M::magic:mask:interpreter:flags`. */
export function binfmtRegistration(entry: BinfmtEntry): string {
  const match = ELF_MATCH[entry.system];
  return `:${entry.name}:M::${match.magic}:${match.mask}:${entry.interpreter}:${entry.flags}`;
}

/** The entries the config asks for (empty when every extra system runs natively). */
export function binfmtEntries(config: FerryConfig): BinfmtEntry[] {
  const { system, extraSystems, interpreter } = config.guest;
  const foreign = extraSystems.filter((extra) => needsInterpreter(system, extra)) as Array<keyof typeof ELF_MATCH>;
  if (interpreter === 'none') return [];
  return foreign.map((extra) => {
    const cpu = extra.split('-')[0]!;
    if (interpreter === 'rosetta') return { name: 'rosetta', system: extra, interpreter: `${ROSETTA_MOUNT}/rosetta`, flags: 'CF' };
    return { name: `qemu-${cpu}`, system: extra, interpreter: `${QEMU_USER_DIR}/qemu-${cpu}-static`, flags: 'F' };
  });
}

/** Stage 2's binfmt step, or undefined when the config needs no interpreter. */
export function binfmtScript(config: FerryConfig): string | undefined {
  const entries = binfmtEntries(config);
  if (entries.length === 0) return undefined;
  const lines = [
    '#!/bin/sh',
    '# ferry binfmt (generated): run foreign builds through an interpreter',
    'export PATH=/usr/sbin:/usr/bin:/sbin:/bin',
    'fail() { echo "FERRY-FAILED: binfmt: $*" > /dev/console; exit 1; }',
    '[ -e /proc/sys/fs/binfmt_misc/register ] || busybox mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc"',
  ];
  if (config.guest.interpreter === 'rosetta') {
    lines.push(
      `mkdir -p ${ROSETTA_MOUNT}`,
      `busybox mount -t virtiofs ${ROSETTA_TAG} ${ROSETTA_MOUNT} || fail "cannot mount the virtiofs share '${ROSETTA_TAG}' (vfkit --device rosetta,mountTag=${ROSETTA_TAG})"`,
    );
  }
  for (const entry of entries) {
    lines.push(
      `[ -x ${entry.interpreter} ] || fail "no interpreter for ${entry.system} at ${entry.interpreter}"`,
      `[ -e /proc/sys/fs/binfmt_misc/${entry.name} ] || printf '%s' '${binfmtRegistration(entry)}' > /proc/sys/fs/binfmt_misc/register || fail "cannot register ${entry.name}"`,
    );
  }
  return `${lines.join('\n')}\n`;
}
