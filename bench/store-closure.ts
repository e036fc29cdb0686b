/**
 * The closure bench/store-image.ts puts into images: about 1 GiB in about 20,000 files, as a real
 * closure in the host's Nix store — PACKAGES generated trees added with `nix-store --add`, and a
 * top derivation (built with nix-build) whose output names every one of them, so they are its
 * references and `nix-store -qR TOP` is the whole thing.
 *
 * Each package is a synthetic tree (synthetic-tree.ts: seeded sizes and shapes, pseudo-random
 * contents, a few big files carrying a third of the bytes); their sizes are skewed as a real
 * closure's are (a few large packages, many small ones). Same params, same store paths: the trees
 * are generated into a temporary directory, added, and removed; the store keeps the paths, and
 * `store-closure-<params>.json` in the bench cache remembers the top path while it stays valid.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { cacheRoot } from './rootfs.js';
import { planSyntheticTree, prng, writeTree } from './synthetic-tree.js';

export interface ClosureParams {
  packages: number;
  files: number;
  totalBytes: number;
  seed: number;
}

export const DEFAULT_CLOSURE: ClosureParams = { packages: 40, files: 20_000, totalBytes: 1024 ** 3, seed: 15 };

export interface StoreClosure {
  top: string;
  /** The whole closure (`nix-store -qR top`), sorted. */
  paths: string[];
}

const NIX_OPTIONS = ['--option', 'sandbox', 'false', '--option', 'substituters', ''];

/** The closure for `params`, made first if the store does not hold it. */
export async function storeClosure(params: ClosureParams, log: (line: string) => void): Promise<StoreClosure> {
  const record = join(cacheRoot(), 'bench-tree', `store-closure-p${params.packages}-f${params.files}-b${params.totalBytes}-s${params.seed}.json`);
  if (existsSync(record)) {
    const { top } = JSON.parse(readFileSync(record, 'utf8')) as { top: string };
    const valid = await execa('nix-store', ['--check-validity', top], { reject: false });
    if (valid.exitCode === 0) return { top, paths: await requisites(top) };
  }
  mkdirSync(join(cacheRoot(), 'bench-tree'), { recursive: true });
  const work = await mkdtemp(join(cacheRoot(), 'bench-tree', 'store-closure.tmp-'));
  try {
    const random = prng(params.seed);
    const weights = Array.from({ length: params.packages }, () => random() ** 3 + 0.02);
    const sum = weights.reduce((a, b) => a + b, 0);
    const added: string[] = [];
    for (const [i, weight] of weights.entries()) {
      const files = Math.max(1, Math.round((params.files * weight) / sum));
      const totalBytes = Math.round((params.totalBytes * weight) / sum);
      const dir = join(work, `ferry-bench-pkg-${i}`);
      writeTree(dir, planSyntheticTree({ files, totalBytes, seed: params.seed * 1000 + i }), params.seed * 1000 + i);
      const path = (await execa('nix-store', ['--add', dir])).stdout.trim();
      await rm(dir, { recursive: true, force: true });
      added.push(path);
      log(`  package ${i + 1}/${params.packages}: ${files} files, ${(totalBytes / 1024 ** 2).toFixed(1)} MiB → ${path}`);
    }
    const expr = `derivation {
      name = "ferry-bench-closure-top";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo \\"$refs\\" > $out" ];
      refs = builtins.concatStringsSep "\\n" (map builtins.storePath (builtins.fromJSON ${JSON.stringify(JSON.stringify(added))}));
    }`;
    const top = (await execa('nix-build', ['-E', expr, '--no-out-link', ...NIX_OPTIONS])).stdout.trim();
    await writeFile(record, `${JSON.stringify({ ...params, top }, null, 2)}\n`);
    return { top, paths: await requisites(top) };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function requisites(top: string): Promise<string[]> {
  return (await execa('nix-store', ['--query', '--requisites', top])).stdout.split('\n').filter(Boolean).sort();
}
