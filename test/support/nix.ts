/**
 * Helpers for tests that need real store paths in the host's Nix store.
 *
 * On this machine (Debian's nix-bin 2.8, tests run as root) `nix-store` uses the local store
 * /nix/store directly — single-user, no daemon, no `nix-store --init` and no NIX_REMOTE needed:
 * with NIX_REMOTE unset Nix picks the local store because root can write it. Builds need two
 * options: `sandbox = false` (Debian's /etc/nix/nix.conf already says so; passed again so another
 * nix.conf cannot break the tests) and `substituters =` (empty), because without network every
 * build otherwise first waits ~5 s for cache.nixos.org to fail to resolve.
 *
 * Everything here is deterministic: the same arguments give the same store paths, so reruns reuse
 * them instead of growing the store.
 */
import { execa } from 'execa';
import { chmod, copyFile, link, mkdir, mkdtemp, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Inode, Tree } from '../../src/image/tree.js';

const BUILD_OPTIONS = ['--option', 'sandbox', 'false', '--option', 'substituters', ''];

/** Runs a Nix program; throws with its stderr when it fails. */
export async function runNix(file: string, args: string[], input?: string): Promise<string> {
  const result = await execa(file, args, { reject: false, input, stripFinalNewline: false });
  if (result.exitCode !== 0) {
    throw new Error(`${file} ${args.join(' ')} failed (exit ${result.exitCode ?? result.code}): ${result.stderr}`);
  }
  return result.stdout;
}

/** `nix-store ARGS…` and its stdout, trimmed of the final newline. */
export async function nixStore(args: string[], input?: string): Promise<string> {
  return (await runNix('nix-store', args, input)).replace(/\n$/, '');
}

/** The closure of `paths` as `nix-store -qR` sees it, sorted. */
export async function requisites(paths: string[]): Promise<string[]> {
  return (await nixStore(['--query', '--requisites', ...paths])).split('\n').filter(Boolean).sort();
}

/** Adds a text file named `name` to the store (`nix-store --add`); returns its store path. */
export async function addTextToStore(name: string, text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-nix-'));
  try {
    await writeFile(join(dir, name), text);
    return await nixStore(['--add', join(dir, name)]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Adds a file or directory tree to the store as is (`nix-store --add`, recursive NAR hash). */
export async function addPathToStore(path: string): Promise<string> {
  return nixStore(['--add', path]);
}

/** Adds a path as a fixed-output path (`nix-store --add-fixed sha256 [--recursive]`). */
export async function addFixedToStore(path: string, recursive = false): Promise<string> {
  return nixStore(['--add-fixed', ...(recursive ? ['--recursive'] : []), 'sha256', path]);
}

export interface SmallClosure {
  /** The top path: a directory with an executable, a plain file, an empty file, symlinks. */
  top: string;
  /** A text file (`builtins.toFile`) that `top` refers to by a symlink. */
  leaf: string;
  /** A derivation output that `top` refers to only from inside a file's contents. */
  lib: string;
}

/**
 * Builds a small closure with references: top → leaf (symlink), top → lib (text mention),
 * lib → leaf. Builders run /bin/sh with the host's coreutils (sandbox off); `salt` makes a
 * different closure when a test needs paths no other test touches.
 */
export async function buildSmallClosure(salt = 'ferry'): Promise<SmallClosure> {
  const expr = `
    let
      salt = ${JSON.stringify(salt)};
      sh = script: name: derivation {
        inherit name;
        system = builtins.currentSystem;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" script ];
      };
      leaf = builtins.toFile "ferry-test-leaf-\${salt}.txt" "leaf \${salt}\\n";
      lib = sh ''
        set -e
        mkdir -p $out/lib
        printf 'lib of %s\\n' ${'${leaf}'} > $out/lib/data
      '' "ferry-test-lib-\${salt}";
      top = sh ''
        set -e
        mkdir -p $out/bin $out/share/deep/deeper
        printf '#!/bin/sh\\necho hello from %s\\n' ${'${lib}'} > $out/bin/hello
        chmod 555 $out/bin/hello
        ln -s hello $out/bin/hello-again
        ln -s ${'${leaf}'} $out/share/leaf
        printf 'plain\\n' > $out/share/plain
        : > $out/share/empty
        printf 'deep\\n' > $out/share/deep/deeper/file
      '' "ferry-test-top-\${salt}";
    in { inherit top lib; }
  `;
  const build = async (attr: string) =>
    (await runNix('nix-build', ['-E', expr, '-A', attr, '--no-out-link', ...BUILD_OPTIONS])).trim();
  const top = await build('top');
  const lib = await build('lib');
  // The leaf is a builtins.toFile path, realised by evaluation; top's symlink names it.
  const leaf = await readlink(join(top, 'share/leaf'));
  return { top, lib, leaf };
}

/**
 * Writes a tree to a host directory (for checks with real tools before an image writer is
 * involved): directories, files (bytes or whole host files), symlinks, hard links, modes.
 * Modes are applied last, deepest first, so read-only directories can be filled.
 */
export async function materializeTree(tree: Tree, dir: string): Promise<void> {
  const seen = new Map<Inode, string>();
  const modes: Array<{ path: string; perm: number }> = [];
  for (const { path, node } of tree.walk()) {
    const hostPath = join(dir, path);
    const first = seen.get(node);
    if (first !== undefined) {
      await link(first, hostPath);
      continue;
    }
    switch (node.kind) {
      case 'dir':
        await mkdir(hostPath);
        break;
      case 'symlink':
        await symlink(node.target!, hostPath);
        continue;
      case 'file': {
        const content = node.content;
        if (content.kind === 'empty') await writeFile(hostPath, '');
        else if (content.kind === 'bytes') await writeFile(hostPath, content.data);
        else if (content.kind === 'file' && content.offset === 0) await copyFile(content.path, hostPath);
        else throw new Error(`materializeTree: unsupported content ${content.kind} at ${path}`);
        seen.set(node, hostPath);
        break;
      }
      default:
        throw new Error(`materializeTree: unsupported node kind ${node.kind} at ${path}`);
    }
    modes.push({ path: hostPath, perm: node.perm });
  }
  for (const { path, perm } of modes.reverse()) await chmod(path, perm);
}

/** Removes a directory tree that may hold read-only directories (as a copied store does). */
export async function removeTree(dir: string): Promise<void> {
  await execa('chmod', ['-R', 'u+w', dir], { reject: false });
  await rm(dir, { recursive: true, force: true });
}
