/**
 * The Debian rootfs the benchmark writes, made by mmdebstrap and cached, then extracted to a
 * directory (both tools under test read a directory).
 *
 * test/support/rootfs.ts (debianRootfs()) is the shared fixture; this is the bench's own
 * equivalent for when that file does not exist yet. Both cache the tarball under
 * ~/.cache/ferry-test/rootfs/<hash of the mmdebstrap argv>/rootfs.tar, written atomically.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';

/** The same argv (and so the same cache key) as test/support/rootfs.ts uses on amd64. */
export const ROOTFS_ARGV = [
  '--variant=essential',
  '--include=openssh-server,nix-bin,busybox,iproute2,ca-certificates',
  '--architectures=amd64',
  'bookworm',
];

export function cacheRoot(): string {
  return process.env.FERRY_TEST_CACHE ?? join(homedir(), '.cache', 'ferry-test');
}

/** The rootfs tarball: the shared fixture's if test/support/rootfs.ts exists, else our own. */
export async function rootfsTarball(log: (line: string) => void): Promise<string> {
  const shared = join(import.meta.dirname, '..', 'test', 'support', 'rootfs.ts');
  if (existsSync(shared)) {
    const mod = (await import(pathToFileURL(shared).href)) as { debianRootfs?: () => Promise<unknown> };
    if (typeof mod.debianRootfs === 'function') {
      const result = await mod.debianRootfs();
      const path = typeof result === 'string' ? result : (result as { tar?: string })?.tar;
      if (typeof path === 'string' && existsSync(path)) return path;
      log(`test/support/rootfs.ts debianRootfs() returned ${JSON.stringify(result)}; using the bench's own copy`);
    }
  }
  const key = createHash('sha256').update(JSON.stringify(['mmdebstrap', ...ROOTFS_ARGV])).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), 'rootfs', key);
  const tarball = join(dir, 'rootfs.tar');
  if (existsSync(tarball)) return tarball;
  await mkdir(join(cacheRoot(), 'rootfs'), { recursive: true });
  const temp = await mkdtemp(join(cacheRoot(), 'rootfs', `.tmp-${key}-`));
  log(`mmdebstrap ${ROOTFS_ARGV.join(' ')} (once; cached in ${dir})`);
  await execa('mmdebstrap', ['--quiet', ...ROOTFS_ARGV, join(temp, 'rootfs.tar')], { stdio: ['ignore', 'inherit', 'inherit'] });
  await rm(dir, { recursive: true, force: true });
  await rename(temp, dir);
  return tarball;
}

/** The tarball extracted (with owners and device nodes, so run as root) beside it, once. */
export async function rootfsDirectory(log: (line: string) => void): Promise<string> {
  const tarball = await rootfsTarball(log);
  // Keyed by the tarball's identity, so a rebuilt tarball gets a fresh extraction.
  const st = await stat(tarball);
  const key = createHash('sha256').update(`${tarball}\0${st.size}\0${st.mtimeMs}`).digest('hex').slice(0, 16);
  const base = join(cacheRoot(), 'bench-tree', 'debian-rootfs', key);
  const tree = join(base, 'tree');
  if (existsSync(tree)) return tree;
  await mkdir(join(cacheRoot(), 'bench-tree', 'debian-rootfs'), { recursive: true });
  const temp = await mkdtemp(`${base}.tmp-`);
  log(`extracting ${tarball}`);
  await mkdir(join(temp, 'tree'));
  await execa('tar', ['-xpf', tarball, '--numeric-owner', '-C', join(temp, 'tree')]);
  await rm(base, { recursive: true, force: true });
  await rename(temp, base);
  return tree;
}
