/**
 * A busybox linked the way nixpkgs links its ordinary `busybox` (the nixpkgs preset's since
 * nixpkgs' Hydra builds no pkgsStatic.busybox): dynamically, against a glibc in its own store
 * path, named by absolute /nix/store paths — PT_INTERP is that glibc's ld-linux, DT_RUNPATH its
 * lib/ — with the applet links nixpkgs' `make install` leaves in bin/ and sbin/.
 *
 * Made from real parts, in the host's real Nix store, by real Nix builds (so Nix's own reference
 * scanning records busybox → glibc, and the nix layer's closure carries the glibc as it would
 * nixpkgs'): Debian's dynamically linked `busybox` package and `patchelf` (both unpacked from
 * Debian's archive through ferry's private apt state, nothing installed on the host), and the
 * host's own loader and libraries as `ldd` names them (Debian's busybox is built against this
 * host's glibc: the fixtures' suite is the host's).
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { aptTarget, packageInfo, unpackedPackage } from '../../src/image/presets/apt.js';
import { FIXTURE_SUITE, fixtureCacheRoot } from './fixtures.js';
import { addPathToStore, runNix } from './nix.js';

export interface NixpkgsShapedBusybox {
  /** The busybox store path (bin/busybox, applet links). */
  busybox: string;
  /** The glibc stand-in store path it references (lib/ld-linux-x86-64.so.2, lib/libc.so.6, …). */
  glibc: string;
}

const BUILD_OPTIONS = ['--option', 'sandbox', 'false', '--option', 'substituters', ''];

export async function nixpkgsShapedBusybox(): Promise<NixpkgsShapedBusybox> {
  const cacheRoot = fixtureCacheRoot();
  const apt = aptTarget(cacheRoot, FIXTURE_SUITE, 'amd64');
  const unpack = async (name: string) => unpackedPackage(apt, join(cacheRoot, 'nixpkgs-shape'), await packageInfo(apt, name));
  const busyboxDir = await unpack('busybox');
  const debianBusybox = ['bin/busybox', 'usr/bin/busybox'].map((p) => join(busyboxDir, p)).find((p) => existsSync(p));
  if (!debianBusybox) throw new Error("Debian's busybox package has no bin/busybox");
  // Into the store first: Nix's builders run as the nixbld users, who cannot read ~/.cache.
  const busyboxSource = await addPathToStore(debianBusybox);
  const patchelf = await addPathToStore(join(await unpack('patchelf'), 'usr/bin/patchelf'));

  // What the host's loader maps for Debian's busybox: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)".
  const ldd = (await execa('ldd', [debianBusybox])).stdout;
  const libraries = [...ldd.matchAll(/=> (\/\S+)/g)].map((m) => m[1]);
  const loader = /^\s*(\/\S*ld-linux\S*)/m.exec(ldd)?.[1];
  if (!loader || libraries.length === 0) throw new Error(`unexpected ldd output for ${debianBusybox}:\n${ldd}`);

  const expr = `
    let
      sh = name: script: extra: derivation ({
        inherit name;
        system = builtins.currentSystem;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" script ];
      } // extra);
      glibc = sh "glibc-stand-in" ''
        set -e
        mkdir -p $out/lib
        for f in ${[loader, ...libraries].join(' ')}; do cp -L "$f" $out/lib/; done
      '' { };
      busybox = sh "busybox-nixpkgs-shape" ''
        set -e
        mkdir -p $out/bin $out/sbin
        cp ${busyboxSource} $out/bin/busybox
        chmod 755 $out/bin/busybox
        ${patchelf} --set-interpreter \${glibc}/lib/${loader.split('/').pop()} --set-rpath \${glibc}/lib $out/bin/busybox
        ln -s busybox $out/bin/sh
        ln -s busybox $out/bin/ash
        ln -s busybox $out/bin/vi
        ln -s ../bin/busybox $out/sbin/ifconfig
      '' { inherit glibc; };
    in { inherit glibc busybox; }
  `;
  const build = async (attr: string) => (await runNix('nix-build', ['-E', expr, '-A', attr, '--no-out-link', ...BUILD_OPTIONS])).trim();
  return { glibc: await build('glibc'), busybox: await build('busybox') };
}
