/**
 * Debian trixie's Nix (2.26) in a root filesystem of its own, for what needs a newer Nix than the
 * host's bookworm 2.8 — evaluating nix-darwin and nixpkgs' lib (test/e2e/darwin-module.test.ts,
 * scripts/eval-darwin-module.ts). The tarball is made once with mmdebstrap and cached under
 * ~/.cache/ferry-test/rootfs/<hash of the argv>/ (as the guest rootfs fixture), then unpacked
 * once beside it; commands run in it through chroot inside a private mount namespace (root only).
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { cachedMmdebstrap } from '../../src/image/presets/mmdebstrap.js';
import { fixtureCacheRoot } from './fixtures.js';

/** The packages on top of `--variant=essential`: Nix, and ca-certificates for nothing but a quiet nix. */
export const TRIXIE_NIX_ARGV = ['--variant=essential', '--include=nix-bin', '--architectures=amd64', 'trixie'] as const;

/** The unpacked rootfs (made and cached on first use). */
export async function trixieNixRoot(): Promise<string> {
  const tar = await cachedMmdebstrap(fixtureCacheRoot(), TRIXIE_NIX_ARGV);
  const root = path.join(path.dirname(tar), 'root');
  if (existsSync(path.join(root, 'usr/bin/nix-instantiate'))) return root;
  const staging = `${root}.staging-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await execa('tar', ['-xf', tar, '-C', staging]);
  await rename(staging, root).catch(async (error) => {
    await rm(staging, { recursive: true, force: true });
    if (!existsSync(root)) throw error;
  });
  return root;
}
