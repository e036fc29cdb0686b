/**
 * Checks ferry's nixpkgs preset against a nixpkgs tree, offline: every attribute is a Hydra job
 * for both guest systems and every file the preset takes from a store path is where the
 * package's expression puts it (src/image/presets/nixpkgs-check.ts has the facts and the rules;
 * docs/nixpkgs-preset.md records a run).
 *
 *   node --import tsx scripts/check-nixpkgs-preset.ts NIXPKGS_DIR [--revision REV] [--json]
 *
 * NIXPKGS_DIR is a checkout, the flake's source (`nix flake metadata nixpkgs --json` → .path), or
 * a directory of files fetched one by one at their paths in nixpkgs. Exit status: 0 when every
 * fact is confirmed or left to the image build (`elsewhere`), 1 when one is refuted or its file is
 * missing, 66 when NIXPKGS_DIR is not a directory.
 */
import { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { checkNixpkgsPreset, NixpkgsTree, type FactResult } from '../src/image/presets/nixpkgs-check.js';

/** The tree's revision: given, else its git HEAD, else the .git-revision file channel tarballs carry. */
function revisionOf(root: string, given?: string): string {
  if (given) return given;
  if (existsSync(join(root, '.git'))) {
    try {
      return execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    } catch {
      // not a usable git tree: fall through
    }
  }
  const file = join(root, '.git-revision');
  return existsSync(file) ? readFileSync(file, 'utf8').trim() : 'unknown (give --revision)';
}

const MARK: Record<FactResult['status'], string> = { confirmed: 'ok', refuted: 'NO', missing: '??', elsewhere: '->' };

const program = new Command()
  .name('check-nixpkgs-preset')
  .description("Checks ferry's nixpkgs preset (attributes, Hydra jobs, output layouts) against a nixpkgs tree, without evaluating or building anything")
  .argument('<nixpkgs-dir>', 'a nixpkgs checkout, the flake source in the store, or fetched files at their nixpkgs paths')
  .option('--revision <rev>', 'the nixpkgs revision the tree is (default: its git HEAD or .git-revision)')
  .option('--json', 'print the results as JSON')
  .action((dir: string, options: { revision?: string; json?: boolean }) => {
    const root = resolve(dir);
    if (!existsSync(root) || !statSync(root).isDirectory()) {
      process.stderr.write(`check-nixpkgs-preset: ${dir}: not a directory (expected a nixpkgs checkout or a directory of its files)\n`);
      process.exit(66);
    }
    const results = checkNixpkgsPreset(new NixpkgsTree(root));
    const revision = revisionOf(root, options.revision);
    const counts = Object.fromEntries((['confirmed', 'elsewhere', 'refuted', 'missing'] as const).map((s) => [s, results.filter((r) => r.status === s).length]));
    if (options.json) {
      process.stdout.write(`${JSON.stringify({ root, revision, counts, results }, null, 2)}\n`);
    } else {
      process.stdout.write(`nixpkgs ${revision} at ${root}\n`);
      for (const result of results) {
        process.stdout.write(`[${MARK[result.status]}] ${result.fact}: ${result.status}\n`);
        for (const line of result.evidence) process.stdout.write(`       ${line}\n`);
        if (result.note) process.stdout.write(`       (${result.note})\n`);
      }
      process.stdout.write(`${counts.confirmed} confirmed, ${counts.elsewhere} left to the image build, ${counts.refuted} refuted, ${counts.missing} missing\n`);
    }
    process.exitCode = counts.refuted + counts.missing > 0 ? 1 : 0;
  });

program.parse();
