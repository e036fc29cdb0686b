/**
 * The Debian rootfs the benchmark writes: the tests' shared fixture (test/support/rootfs.ts, cached
 * under ~/.cache/ferry-test/rootfs/<hash of the mmdebstrap argv>/rootfs.tar), extracted to a
 * directory, since both tools under test read a directory.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureCacheRoot } from '../test/support/fixtures.js';
import { debianRootfs } from '../test/support/rootfs.js';

/** Where the benches cache what they make (FERRY_TEST_CACHE or ~/.cache/ferry-test), as the tests do. */
export const cacheRoot = fixtureCacheRoot;

/** The tarball extracted (with owners and device nodes, so run as root) beside it, once. */
export async function rootfsDirectory(log: (line: string) => void): Promise<string> {
  const tarball = (await debianRootfs()).tar;
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
