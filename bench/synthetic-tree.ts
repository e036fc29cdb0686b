/**
 * A synthetic tree for the mkfs benchmark: by default 100,000 files holding 2 GiB, in nested
 * directories, with sizes drawn from a seeded PRNG so every machine benchmarks the same tree.
 *
 * The mix mimics a system image: most files are a few KiB, a good share are tens of KiB, a
 * thousand are up to 1 MiB and a few dozen big ones (15 MiB on average) carry a third of the
 * bytes. Directories nest up to 8 deep and their sizes are skewed (a few hold thousands of
 * entries, most a few dozen). Contents are pseudo-random, never all-zero blocks, so neither tool
 * can turn them into holes.
 *
 * Generated once into ~/.cache/ferry-test/bench-tree/<params>/tree (temp dir + rename) and
 * reused as long as that directory exists.
 */
import { existsSync, closeSync, mkdirSync, openSync, utimesSync, writeSync } from 'node:fs';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheRoot } from './rootfs.js';

export interface SyntheticParams {
  files: number;
  totalBytes: number;
  seed: number;
}

export const DEFAULT_SYNTHETIC: SyntheticParams = { files: 100_000, totalBytes: 2 * 1024 ** 3, seed: 1 };

/** Bumped when the generator changes, so an old cached tree is not mistaken for a new one. */
const GENERATOR_VERSION = 1;
const DIRECTORIES_PER_FILE = 1 / 50;
const MAX_DEPTH = 8;
const BIG_FILES = 50;
const MTIME = 1_700_000_000;

/** mulberry32: tiny, fast and good enough to make reproducible sizes and shapes. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function logUniform(random: () => number, low: number, high: number): number {
  return Math.floor(Math.exp(Math.log(low) + random() * (Math.log(high) - Math.log(low))));
}

export interface TreePlan {
  directories: string[];
  files: Array<{ path: string; size: number; mode: number }>;
}

/** The tree's shape and sizes, without touching the disk (deterministic for the params). */
export function planSyntheticTree(params: SyntheticParams): TreePlan {
  const random = prng(params.seed);
  const dirCount = Math.max(1, Math.round(params.files * DIRECTORIES_PER_FILE));
  const directories = [''];
  const depth = [0];
  for (let i = 1; i < dirCount; i++) {
    // Parents are drawn from earlier directories, biased towards the first ones: a bushy top
    // with some long chains, like /usr/share/….
    let parent = Math.floor(directories.length * random() ** 2);
    while (depth[parent] >= MAX_DEPTH) parent = Math.floor(parent / 2);
    directories.push(join(directories[parent], `d${i.toString(36)}-${word(random)}`));
    depth.push(depth[parent] + 1);
  }

  const smallCount = params.files - Math.min(BIG_FILES, params.files);
  const sizes: number[] = [];
  let used = 0;
  for (let i = 0; i < smallCount; i++) {
    const r = random();
    let size: number;
    if (r < 0.03) size = 0;
    else if (r < 0.73) size = logUniform(random, 1, 16 * 1024);
    else if (r < 0.99) size = logUniform(random, 16 * 1024, 64 * 1024);
    else size = logUniform(random, 64 * 1024, 1024 * 1024);
    sizes.push(size);
    used += size;
  }
  // The big files share what is left of the total, in random proportions.
  const bigCount = params.files - smallCount;
  const remaining = Math.max(0, params.totalBytes - used);
  const weights = Array.from({ length: bigCount }, () => 0.2 + random());
  const weightSum = weights.reduce((a, b) => a + b, 0);
  let given = 0;
  weights.forEach((weight, i) => {
    const size = i === bigCount - 1 ? remaining - given : Math.floor((remaining * weight) / weightSum);
    sizes.push(size);
    given += size;
  });

  const files = sizes.map((size, i) => {
    // Skewed placement: a few directories get thousands of entries.
    const dir = directories[Math.floor(directories.length * random() ** 3)];
    const mode = random() < 0.1 ? 0o755 : 0o644;
    return { path: join(dir, `f${i.toString(36)}-${word(random)}`), size, mode };
  });
  return { directories, files };
}

function word(random: () => number): string {
  const letters = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let out = '';
  const length = 3 + Math.floor(random() * random() * 30);
  for (let i = 0; i < length; i++) out += letters[Math.floor(random() * letters.length)];
  return out;
}

export function syntheticKey(params: SyntheticParams): string {
  return `files${params.files}-bytes${params.totalBytes}-seed${params.seed}-v${GENERATOR_VERSION}`;
}

/** The generated tree's directory, generating it first if it is not cached. */
export async function syntheticTree(params: SyntheticParams, log: (line: string) => void): Promise<string> {
  const base = join(cacheRoot(), 'bench-tree', syntheticKey(params));
  const tree = join(base, 'tree');
  if (existsSync(tree)) return tree;
  mkdirSync(join(cacheRoot(), 'bench-tree'), { recursive: true });
  const temp = await mkdtemp(`${base}.tmp-`);
  try {
    log(`generating the synthetic tree (${params.files} files, ${(params.totalBytes / 1024 ** 3).toFixed(1)} GiB) in ${base}`);
    const plan = planSyntheticTree(params);
    writeTree(join(temp, 'tree'), plan, params.seed);
    await writeFile(join(temp, 'params.json'), `${JSON.stringify({ ...params, version: GENERATOR_VERSION }, null, 2)}\n`);
    await rm(base, { recursive: true, force: true });
    await rename(temp, base);
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    throw error;
  }
  return tree;
}

export function writeTree(root: string, plan: TreePlan, seed: number): void {
  // One random MiB, written from a per-file offset: non-zero, not repeating within a block, and
  // 2 GiB of it costs nothing to produce.
  const random = prng(seed ^ 0x5eed);
  const pattern = Buffer.alloc(1024 * 1024 + 4096);
  for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32LE(Math.floor(random() * 0x100000000), i);
  for (const dir of plan.directories) mkdirSync(join(root, dir), { recursive: true });
  plan.files.forEach((file, index) => {
    const path = join(root, file.path);
    const fd = openSync(path, 'wx', file.mode);
    try {
      let done = 0;
      let offset = (index * 4099) % 4096;
      while (done < file.size) {
        const n = Math.min(file.size - done, 1024 * 1024);
        done += writeSync(fd, pattern, offset, n);
        offset = (offset + 1) % 4096;
      }
    } finally {
      closeSync(fd);
    }
    utimesSync(path, MTIME, MTIME);
  });
  for (const dir of [...plan.directories].reverse()) utimesSync(join(root, dir), MTIME, MTIME);
}
