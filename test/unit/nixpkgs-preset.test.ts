/**
 * The nixpkgs preset, as far as a machine without cache.nixos.org allows (see the module comment
 * of src/image/presets/nixpkgs.ts for what only a Mac with Nix can verify):
 *   - the `nix build` argv for both systems, recorded through an injected runner;
 *   - the error for a missing substitute, from Nix output of the real shape;
 *   - the record in downloads/ (reused, refreshed, invalidated by another flake);
 *   - the image from REAL local store paths standing in for the nixpkgs ones (Debian's busybox
 *     linked as nixpkgs links its `busybox` — dynamically, loader and RUNPATH in a glibc store
 *     path, see test/support/nixpkgs-busybox.ts — stand-in sshd / nix-daemon scripts): written by
 *     the ext4 writer, `e2fsck -fn` clean, and every command stage 1 and stage 2 call run inside
 *     a chroot of the image's files;
 *   - `buildImage` with preset "nixpkgs" end to end (system disk, initramfs, manifest), and the
 *     initramfs's dynamically linked busybox running in a chroot of the initramfs alone.
 */
import { execa } from 'execa';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { resolvePaths } from '../../src/config/paths.js';
import { FerryError } from '../../src/errors.js';
import { buildImage } from '../../src/image/build.js';
import { ferryKeys } from '../../src/keys/ferry-keys.js';
import { writeExt4 } from '../../src/image/ext4/index.js';
import { STAGE1_MODULES } from '../../src/image/guest-os/stage1.js';
import { NixLayer } from '../../src/image/layers/nix.js';
import {
  nixBuildArgv,
  nixpkgsPreset,
  nixpkgsPresetInputs,
  resolveNixpkgsPaths,
  type NixpkgsPaths,
} from '../../src/image/presets/nixpkgs.js';
import { Tree } from '../../src/image/tree.js';
import { ProcessError, RecordingRunner } from '../../src/process/runner.js';
import { addPathToStore, requisites } from '../support/nix.js';
import { nixpkgsShapedBusybox } from '../support/nixpkgs-busybox.js';

const KERNEL_VERSION = '6.6.63-ferry-stand-in';
const ATTRS = ['linux^out', 'busybox^out', 'openssh^out', 'nix^out', 'cacert^out', 'e2fsprogs^bin'];

interface Call {
  file: string;
  args: readonly string[];
}

/** `nix` with the binary cache cannot run here: a RecordingRunner answers for it. */
function recordingRunner(reply: (args: readonly string[]) => { exitCode: number; stdout: string; stderr: string }) {
  const runner = new RecordingRunner([], (_file, args) => ({ signal: undefined, timedOut: false, ...reply(args) }));
  return { calls: runner.commands, runner };
}

let work: string;
let paths: NixpkgsPaths;

/** A stand-in package in the real local store: `files` maps relative paths to contents (or a symlink). */
async function standIn(name: string, files: Record<string, string | { link: string } | { copy: string }>): Promise<string> {
  const dir = join(work, 'packages', name);
  for (const [rel, content] of Object.entries(files)) {
    const path = join(dir, rel);
    await mkdir(join(path, '..'), { recursive: true });
    if (typeof content === 'string') {
      await writeFile(path, content);
      if (content.startsWith('#!')) await chmod(path, 0o755);
    } else if ('link' in content) await symlink(content.link, path);
    else await copyFile(content.copy, path);
  }
  return addPathToStore(dir);
}

const script = (name: string) => `#!/bin/sh\necho ${name}-ok "$@"\n`;

let glibc: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-nixpkgs-'));
  const shaped = await nixpkgsShapedBusybox();
  glibc = shaped.glibc;
  const builtin = STAGE1_MODULES.map((m) => `kernel/drivers/${m}.ko`).join('\n');
  paths = {
    kernel: await standIn('linux-stand-in', {
      bzImage: 'not a kernel\n',
      Image: 'not a kernel either\n',
      [`lib/modules/${KERNEL_VERSION}/modules.builtin`]: `${builtin}\n`,
    }),
    // Linked and laid out as nixpkgs' busybox: bin/busybox, its glibc, relative applet links.
    busybox: shaped.busybox,
    openssh: await standIn('openssh-stand-in', { 'bin/sshd': script('sshd'), 'bin/ssh-keygen': script('ssh-keygen'), 'bin/ssh': script('ssh') }),
    nix: await standIn('nix-stand-in', {
      'bin/nix': script('nix'),
      'bin/nix-daemon': { link: 'nix' },
      'bin/nix-store': { link: 'nix' },
    }),
    cacert: await standIn('nss-cacert-stand-in', { 'etc/ssl/certs/ca-bundle.crt': '-----BEGIN CERTIFICATE-----\nstand-in\n' }),
    e2fsprogs: await standIn('e2fsprogs-stand-in-bin', { 'bin/resize2fs': script('resize2fs') }),
  };
}, 120_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('nixpkgs preset: resolution', () => {
  it.each([
    ['x86_64-linux'],
    ['aarch64-linux'],
  ])('runs one nix build for %s: no local or remote builds, no links, one output per attribute', async (system) => {
    const { calls, runner } = recordingRunner(() => ({
      exitCode: 0,
      stdout: `${[paths.kernel, paths.busybox, paths.openssh, paths.nix, paths.cacert, paths.e2fsprogs].join('\n')}\n`,
      stderr: '',
    }));
    const resolved = await resolveNixpkgsPaths(system, { runner, flake: 'nixpkgs' });
    expect(resolved).toEqual(paths);
    expect(calls.map(({ file, args }): Call => ({ file, args }))).toEqual([
      {
        file: 'nix',
        args: [
          '--extra-experimental-features', 'nix-command flakes',
          'build', '--max-jobs', '0', '--builders', '', '--no-link', '--print-out-paths',
          ...ATTRS.map((attr) => `nixpkgs#legacyPackages.${system}.${attr}`),
        ],
      },
    ]);
    expect(nixBuildArgv('github:NixOS/nixpkgs/nixos-24.11', system).at(-1)).toBe(`github:NixOS/nixpkgs/nixos-24.11#legacyPackages.${system}.e2fsprogs^bin`);
  });

  it('names the attribute that is not substitutable and says nothing is built on the host', async () => {
    const system = 'aarch64-linux';
    const drv = '/nix/store/4sj2vajnbp1ri6d6y3w5bfjsskyrfz7a-busybox-1.36.1.drv';
    const { calls, runner } = recordingRunner((args) => {
      if (args.includes('--dry-run')) {
        const busy = args.at(-1)!.includes('.busybox^');
        return { exitCode: 0, stdout: '', stderr: busy ? `this derivation will be built:\n  ${drv}\n` : 'these 3 paths will be fetched (1.20 MiB download, 5.10 MiB unpacked):\n  /nix/store/…\n' };
      }
      return {
        exitCode: 1,
        stdout: '',
        stderr:
          `these 2 derivations will be built:\n  ${drv}\n  /nix/store/9x0q3y6wb0c4dlg4g1xxm6pq8h4ryq3k-glibc-2.40-66.drv\n` +
          "error: unable to start any build; either increase '--max-jobs' or enable remote builds.\n" +
          '       https://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html\n',
      };
    });
    const error = await resolveNixpkgsPaths(system, { runner, flake: 'nixpkgs' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FerryError);
    const message = (error as FerryError).message;
    expect(message).toContain('nixpkgs#legacyPackages.aarch64-linux.busybox^out');
    expect(message).not.toContain('.openssh^out');
    expect(message).toContain('not substitutable');
    expect(message).toContain('ferry builds nothing on the host');
    expect(message).toContain(drv);
    expect((error as FerryError).hint).toContain('FERRY_NIXPKGS');
    // One build, then one dry run per attribute to find the culprit.
    expect(calls.map((c) => c.args.includes('--dry-run'))).toEqual([false, true, true, true, true, true, true]);
  });

  it('quotes any other nix failure, and says how to get nix when it is missing', async () => {
    const { runner } = recordingRunner(() => ({ exitCode: 1, stdout: '', stderr: "error: cannot find flake 'flake:nixpkgs' in the flake registries\n" }));
    const error = await resolveNixpkgsPaths('x86_64-linux', { runner, flake: 'nixpkgs' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProcessError);
    expect((error as ProcessError).message).toBe("nix build of the nixpkgs preset for x86_64-linux exited with code 1: error: cannot find flake 'flake:nixpkgs' in the flake registries");
    expect((error as ProcessError).hint).toMatch(/^the command was: nix --extra-experimental-features 'nix-command flakes' build --max-jobs 0 --builders '' /);
    const missing = new RecordingRunner([], () => ({ exitCode: undefined, signal: undefined, stdout: '', stderr: '', timedOut: false, error: 'spawn nix ENOENT', errorCode: 'ENOENT' }));
    await expect(resolveNixpkgsPaths('x86_64-linux', { runner: missing })).rejects.toThrow(/needs the host's nix, and none was found/);
  });

  it('refuses output that is not one store path per attribute, and a path without the file ferry needs', async () => {
    const { runner } = recordingRunner(() => ({ exitCode: 0, stdout: `${paths.kernel}\n`, stderr: '' }));
    await expect(resolveNixpkgsPaths('x86_64-linux', { runner, flake: 'nixpkgs' })).rejects.toThrow(/expected 6 store paths/);
    const swapped = [paths.kernel, paths.openssh, paths.busybox, paths.nix, paths.cacert, paths.e2fsprogs].join('\n');
    const { runner: wrong } = recordingRunner(() => ({ exitCode: 0, stdout: swapped, stderr: '' }));
    await expect(resolveNixpkgsPaths('x86_64-linux', { runner: wrong, flake: 'nixpkgs' })).rejects.toThrow(/^busybox for x86_64-linux resolved to .*openssh-stand-in, which has no bin\/busybox/);
  });

  it('records the paths in downloads/nixpkgs-<system>.json: reused, re-resolved on refresh or another flake', async () => {
    const downloads = join(work, 'downloads-record');
    await mkdir(downloads, { recursive: true });
    const { calls, runner } = recordingRunner(() => ({
      exitCode: 0,
      stdout: [paths.kernel, paths.busybox, paths.openssh, paths.nix, paths.cacert, paths.e2fsprogs].join('\n'),
      stderr: '',
    }));
    const first = await nixpkgsPreset(downloads, 'x86_64-linux', { runner, flake: 'nixpkgs' });
    expect(calls).toHaveLength(1);
    const record = JSON.parse(await readFile(join(downloads, 'nixpkgs-x86_64-linux.json'), 'utf8'));
    expect(record.paths).toEqual(paths);
    const again = await nixpkgsPreset(downloads, 'x86_64-linux', { runner, flake: 'nixpkgs' });
    expect(calls).toHaveLength(1);
    expect(again.identity).toBe(first.identity);
    await nixpkgsPreset(downloads, 'x86_64-linux', { runner, flake: 'nixpkgs', refresh: true });
    expect(calls).toHaveLength(2);
    await nixpkgsPreset(downloads, 'x86_64-linux', { runner, flake: 'github:NixOS/nixpkgs/nixos-24.11' });
    expect(calls).toHaveLength(3);

    expect(first).toMatchObject({
      name: 'nixpkgs',
      kernel: `${paths.kernel}/bzImage`,
      modulesDir: `${paths.kernel}/lib/modules/${KERNEL_VERSION}`,
      kernelVersion: KERNEL_VERSION,
      busybox: `${paths.busybox}/bin/busybox`,
      storePaths: [paths.busybox, paths.openssh, paths.nix, paths.cacert, paths.e2fsprogs],
    });
    for (const path of Object.values(paths)) expect(first.identity).toContain(path);
    expect(nixpkgsPresetInputs(paths, 'aarch64-linux').kernel).toBe(`${paths.kernel}/Image`);
  });
});

describe('nixpkgs preset: the image from real store paths', () => {
  it('is a clean ext4 in which every command stage 1 and stage 2 call runs through the image\'s own links', async () => {
    const inputs = nixpkgsPresetInputs(paths, 'x86_64-linux');
    const tree = new Tree();
    for (const layer of [new NixLayer({ paths: inputs.storePaths! }), ...inputs.layers!]) await layer.apply(tree);
    // The kernel stays on the host.
    expect(tree.lookup(paths.kernel)).toBeUndefined();
    const image = join(work, 'system.img');
    await writeExt4(tree, image, { label: 'ferry-system' });
    const fsck = await execa('e2fsck', ['-fn', image], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);

    const root = join(work, 'extracted');
    await rm(root, { recursive: true, force: true });
    await mkdir(root);
    const dump = await execa('debugfs', ['-R', `rdump / ${root}`, image], { reject: false });
    expect(dump.exitCode, dump.stderr).toBe(0);

    const ls = await execa('debugfs', ['-R', 'stat /etc/shadow', image]);
    expect(ls.stdout).toMatch(/Mode:\s+0600/);
    expect((await execa('debugfs', ['-R', 'stat /var/empty', image])).stdout).toMatch(/Mode:\s+0555/);

    // Stage 2 (through PATH when its busybox prefers no applets), shutdown, control and udhcpc call these.
    const commands = [
      'sh', 'busybox', 'init', 'mount', 'umount', 'cat', 'cp', 'mkdir', 'ln', 'mv', 'hostname', 'date', 'ip', 'sed', 'head',
      'grep', 'chown', 'chgrp', 'chmod', 'dirname', 'setsid', 'sleep', 'kill', 'sync', 'poweroff', 'udhcpc',
      'resize2fs', 'nix-daemon', 'nix-store', 'nix', 'ssh-keygen', 'sshd', 'env', 'nologin', 'vi', 'ifconfig',
    ];
    const probe = [
      'export PATH=/usr/sbin:/usr/bin:/sbin:/bin',
      // Debian's busybox runs its applets even without a link (FEATURE_SH_STANDALONE), so
      // `command -v` would not notice a missing one: look for the file on PATH instead.
      `for c in ${commands.join(' ')}; do f=; for d in /usr/sbin /usr/bin /sbin /bin; do [ -x "$d/$c" ] && f=1; done; [ -n "$f" ] || { echo "missing $c"; exit 3; }; done`,
      '/usr/sbin/sshd -f /etc/ssh/sshd_config',
      'nix-daemon',
      'nix-store --load-db',
      'resize2fs /dev/vdb',
      'grep -c "^sshd:x:74:74:" /etc/passwd',
      'grep -c "^root:x:0:0:root:/root:/bin/sh$" /etc/passwd',
      'grep -c "^tty:x:5:" /etc/group',
      'head -n 1 /etc/ssl/certs/ca-certificates.crt',
      'dirname /usr/lib/ferry/stage2',
    ].join('\n');
    const run = await execa('/usr/sbin/chroot', [root, '/bin/sh', '-c', probe], { reject: false, env: { PATH: '/usr/bin:/bin' } });
    expect(run.stderr).toBe('');
    expect(run.stdout.split('\n'), `exit ${run.exitCode} ${run.message}`).toEqual([
      'sshd-ok -f /etc/ssh/sshd_config',
      'nix-ok',
      'nix-ok --load-db',
      'resize2fs-ok /dev/vdb',
      '1',
      '1',
      '1',
      '-----BEGIN CERTIFICATE-----',
      '/usr/lib/ferry',
    ]);
    expect(run.exitCode).toBe(0);
    // The links point into the store, which the image carries with its registration.
    expect(await readlink(join(root, 'usr/sbin/sshd'))).toBe(`${paths.openssh}/bin/sshd`);
    expect(await readlink(join(root, 'bin/sh'))).toBe(`${paths.busybox}/bin/busybox`);
    expect(existsSync(join(root, 'usr/share/ferry/nix-registration'))).toBe(true);
    // busybox's glibc came along with it, as its closure (the image's /bin/sh ran on it above).
    expect(existsSync(join(root, glibc.slice(1), 'lib/libc.so.6'))).toBe(true);
  }, 120_000);
});

describe('nixpkgs preset: buildImage', () => {
  it('builds the system disk, initramfs and manifest from the recorded resolution', async () => {
    const base = join(work, 'build');
    const ferryPaths = resolvePaths({ env: { FERRY_STATE_DIR: join(base, 'state'), FERRY_CACHE_DIR: join(base, 'cache'), HOME: base } });
    const config = parseConfigText('[guest]\npreset = "nixpkgs"\nsystem = "x86_64-linux"\n[vm]\nbackend = "qemu"\n', join(base, 'ferry.toml'), {
      host: { platform: 'linux', arch: 'x64', cpus: 2, memoryBytes: 4 * 2 ** 30, homeDir: base },
    });
    await mkdir(ferryPaths.downloadsDir, { recursive: true });
    // The resolution a Mac's `nix build` would have recorded (the flake from the environment, as
    // the preset reads it); with it in place buildImage runs no Nix command for the preset.
    const flake = process.env.FERRY_NIXPKGS?.trim() || 'nixpkgs';
    const attributes = ATTRS.map((attr) => `${flake}#legacyPackages.x86_64-linux.${attr}`);
    await writeFile(join(ferryPaths.downloadsDir, 'nixpkgs-x86_64-linux.json'), JSON.stringify({ flake, attributes, paths }));

    const manifest = await buildImage({ config, paths: ferryPaths, keys: ferryKeys(ferryPaths) });
    expect(manifest.preset).toBe('nixpkgs');
    expect(manifest.kernel).toEqual({ path: `${paths.kernel}/bzImage`, version: KERNEL_VERSION });
    expect(existsSync(manifest.systemDisk.path)).toBe(true);
    expect(existsSync(manifest.initrd.path)).toBe(true);
    const fsck = await execa('e2fsck', ['-fn', manifest.systemDisk.path], { reject: false });
    expect(fsck.exitCode, fsck.stdout).toBe(0);
    // The initramfs carries the preset's busybox and, at their store paths, exactly the loader and
    // libraries it names — not its whole closure, and not the busybox store path itself.
    const cpio = await execa('sh', ['-c', `zcat '${manifest.initramfs.path}' | cpio -t 2>/dev/null`]);
    const members = cpio.stdout.split('\n');
    expect(members).toContain('bin/busybox');
    const loaderAndLibs = ['ld-linux-x86-64.so.2', 'libresolv.so.2', 'libc.so.6'].map((name) => `${glibc.slice(1)}/lib/${name}`);
    expect(members.filter((m) => m.startsWith('nix/store/') && !loaderAndLibs.some((f) => f.startsWith(m)))).toEqual([]);
    for (const file of loaderAndLibs) expect(members).toContain(file);
    expect(await requisites([paths.busybox])).toEqual([glibc, paths.busybox].sort());
    // …and that is all it needs: in a chroot of the initramfs alone, its shell and applets run as
    // stage 1 runs them (PATH=/bin, applets through the /bin links).
    const initramfsRoot = join(work, 'initramfs-root');
    await rm(initramfsRoot, { recursive: true, force: true });
    await mkdir(initramfsRoot);
    await execa('sh', ['-c', `zcat '${manifest.initramfs.path}' | cpio -idm --quiet`], { cwd: initramfsRoot });
    const stage1Like = await execa('/usr/sbin/chroot', [initramfsRoot, '/bin/sh', '-c', 'echo ok; mkdir /probe && ls -d /probe; head -c 4 /bin/busybox | tail -c 3'], {
      reject: false,
      env: { PATH: '/bin' },
    });
    expect(stage1Like.stderr).toBe('');
    expect(stage1Like.stdout.split('\n')).toEqual(['ok', '/probe', 'ELF']);
    // Same resolution: everything from the cache.
    const again = await buildImage({ config, paths: ferryPaths, keys: ferryKeys(ferryPaths) });
    expect([again.systemDisk.cacheHit, again.initramfs.cacheHit]).toEqual([true, true]);
  }, 180_000);
});
