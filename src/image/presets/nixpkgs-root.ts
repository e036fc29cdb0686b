/**
 * The nixpkgs preset's root skeleton (see nixpkgs.ts): the directories, the files that define
 * users, and the symlinks that make the store paths look like the filesystem stage 1 and
 * stage 2 expect (/bin/busybox, /bin/sh and the applets, /usr/sbin/sshd, /usr/bin/nix-daemon,
 * /etc/passwd with root and sshd, /var/empty, …).
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Layer } from '../layers/layer.js';
import type { InodeInit, Tree } from '../tree.js';

/** The store paths the skeleton points into (the kernel stays on the host). */
export interface SkeletonPaths {
  busybox: string;
  openssh: string;
  nix: string;
  cacert: string;
  e2fsprogs: string;
}

/** The CA bundle inside nixpkgs' cacert. */
export const CA_BUNDLE = 'etc/ssl/certs/ca-bundle.crt';

/**
 * busybox applets that stage 2 (run by the initramfs's busybox, which stage 1 copies in, and which
 * finds applets through PATH unless built to prefer its own), shutdown, control and the udhcpc
 * script call by name. They are linked even when the busybox store path lists no applet links of
 * its own; nixpkgs' busybox (`make defconfig`, pkgs/os-specific/linux/busybox/default.nix) has
 * every one of them.
 */
export const REQUIRED_APPLETS = [
  'sh', 'ash', 'init', 'mount', 'umount', 'cat', 'cp', 'mkdir', 'ln', 'mv', 'rm', 'hostname', 'date', 'ip', 'sed',
  'head', 'grep', 'chown', 'chgrp', 'chmod', 'dirname', 'setsid', 'sleep', 'kill', 'sync', 'poweroff', 'reboot',
  'udhcpc', 'echo', 'test', '[', 'true', 'false', 'env', 'ls', 'ps', 'id', 'uname', 'nologin', 'tar', 'xz', 'gzip',
] as const;

/** /usr/bin and /usr/sbin entries besides the applets (PATH puts /usr first, so these win). */
function rootSymlinks(paths: SkeletonPaths): Array<[string, string]> {
  const links: Array<[string, string]> = [
    ['/usr/sbin/sshd', `${paths.openssh}/bin/sshd`],
    ['/usr/sbin/resize2fs', `${paths.e2fsprogs}/bin/resize2fs`],
    ['/usr/sbin/nologin', `${paths.busybox}/bin/busybox`],
    ['/usr/bin/env', `${paths.busybox}/bin/busybox`],
    ['/etc/ssl/certs/ca-certificates.crt', `${paths.cacert}/${CA_BUNDLE}`],
    ['/etc/ssl/certs/ca-bundle.crt', `${paths.cacert}/${CA_BUNDLE}`],
    ['/etc/mtab', '/proc/self/mounts'],
  ];
  // Every program of openssh (ssh, ssh-keygen, scp …) and of nix (nix-daemon, nix-store, nix …).
  for (const pkg of [paths.openssh, paths.nix]) {
    for (const name of listDir(join(pkg, 'bin'))) {
      if (name !== 'sshd') links.push([`/usr/bin/${name}`, `${pkg}/bin/${name}`]);
    }
  }
  return links;
}

/** The applets: the required ones plus every busybox link the store path has in bin/ or sbin/. */
function applets(busybox: string): string[] {
  const names = new Set<string>(REQUIRED_APPLETS);
  for (const dir of ['bin', 'sbin']) {
    for (const name of listDir(join(busybox, dir))) {
      const path = join(busybox, dir, name);
      if (lstatSync(path).isSymbolicLink() && readlinkSync(path).split('/').pop() === 'busybox') names.add(name);
    }
  }
  names.delete('busybox');
  return [...names].sort();
}

function listDir(path: string): string[] {
  return existsSync(path) ? readdirSync(path).sort() : [];
}

/** uid/gid of OpenSSH's privilege separation user (NixOS gives sshd a dynamic id; any fixed one works). */
const SSHD_ID = 74;

const ROOT_FILES: Array<[string, number, string]> = [
  ['/etc/passwd', 0o644,
    'root:x:0:0:root:/root:/bin/sh\n' +
    `sshd:x:${SSHD_ID}:${SSHD_ID}:OpenSSH privilege separation:/var/empty:/usr/sbin/nologin\n` +
    'nobody:x:65534:65534:nobody:/var/empty:/usr/sbin/nologin\n'],
  // gid 5 is the group stage 2 mounts devpts with.
  ['/etc/group', 0o644, `root:x:0:\ntty:x:5:\nsshd:x:${SSHD_ID}:\nnogroup:x:65534:\n`],
  ['/etc/shadow', 0o600, 'root:!:1::::::\nsshd:!:1::::::\nnobody:!:1::::::\n'],
  ['/etc/nsswitch.conf', 0o644, 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n'],
  ['/etc/os-release', 0o644, 'NAME="ferry guest (nixpkgs)"\nID=ferry-nixpkgs\n'],
  ['/etc/shells', 0o644, '/bin/sh\n'],
];

const ROOT_DIRS: Array<[string, number]> = [
  ['/bin', 0o755], ['/sbin', 0o755], ['/usr', 0o755], ['/usr/bin', 0o755], ['/usr/sbin', 0o755],
  ['/usr/lib', 0o755], ['/etc', 0o755], ['/etc/ssh', 0o755], ['/etc/ssl', 0o755], ['/etc/ssl/certs', 0o755],
  ['/etc/nix', 0o755], ['/root', 0o700], ['/home', 0o755], ['/var', 0o755], ['/var/log', 0o755], ['/var/lib', 0o755],
  // sshd's privilege separation directory: must be root's and writable by no one else.
  ['/var/empty', 0o555],
  ['/tmp', 0o1777], ['/run', 0o755], ['/proc', 0o555], ['/sys', 0o555], ['/dev', 0o755], ['/mnt', 0o755],
];

/**
 * The root skeleton around the store paths: directories, the files that define users, and the
 * symlinks that put the store's programs where stage 1 and stage 2 look for them. Applied after
 * the NixLayer; everything is owned by root with mtime 1 (the image is reproducible).
 */
export class NixpkgsRootLayer implements Layer {
  readonly description: string;

  constructor(private readonly paths: SkeletonPaths) {
    this.description = `nixpkgs root skeleton (${paths.busybox}, ${paths.openssh}, ${paths.nix})`;
  }

  /** Every entry the layer adds, in order (computed from the store paths' listings). */
  entries(): Array<[string, InodeInit]> {
    const meta = { uid: 0, gid: 0, mtime: 1 };
    const out: Array<[string, InodeInit]> = [];
    for (const [path, perm] of ROOT_DIRS) out.push([path, { kind: 'dir', perm, ...meta }]);
    for (const [path, perm, text] of ROOT_FILES) {
      const data = Buffer.from(text);
      out.push([path, { kind: 'file', perm, ...meta, size: data.length, content: { kind: 'bytes', data } }]);
    }
    const busybox = `${this.paths.busybox}/bin/busybox`;
    out.push(['/bin/busybox', { kind: 'symlink', perm: 0o777, ...meta, target: busybox }]);
    for (const name of applets(this.paths.busybox)) out.push([`/bin/${name}`, { kind: 'symlink', perm: 0o777, ...meta, target: busybox }]);
    for (const [path, target] of rootSymlinks(this.paths)) out.push([path, { kind: 'symlink', perm: 0o777, ...meta, target }]);
    return out;
  }

  async fingerprint(): Promise<string> {
    const hash = createHash('sha256').update('ferry-nixpkgs-root-1\n');
    for (const [path, init] of this.entries()) {
      const content = init.content?.kind === 'bytes' ? init.content.data.toString('base64') : '';
      hash.update(`${path}\0${init.kind}\0${init.perm}\0${init.target ?? ''}\0${content}\n`);
    }
    return hash.digest('hex');
  }

  async apply(tree: Tree): Promise<void> {
    for (const [path, init] of this.entries()) tree.add(path, init, { uid: 0, gid: 0, mtime: 1 });
  }
}
