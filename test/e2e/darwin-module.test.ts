/**
 * ferry's nix-darwin module, evaluated by nix-darwin's real module system and nixpkgs' real lib
 * under Debian trixie's Nix 2.26 (test/support/darwin-eval.ts; the package set is a stand-in,
 * named in test/support/darwin-eval.nix), against what the real `ferry install` writes.
 * scripts/eval-darwin-module.ts runs the same checks by hand.
 *
 * Skipped only when the sources are not on this machine (a fresh CI machine has no copy of
 * nix-darwin offline): the reason says which revision is missing and how to point at it.
 */
import { describe, expect, it } from 'vitest';
import { checkFlake, checkModule, findSources, TrixieNix } from '../support/darwin-eval.js';

const sources = await findSources();
const isRoot = process.getuid?.() === 0;

describe.skipIf(!sources.ok || !isRoot)(`nix-darwin module${sources.ok ? '' : ` (skipped: ${sources.missing})`}${isRoot ? '' : ' (skipped: needs root to chroot)'}`, () => {
  it('enabled: the LaunchAgent, alias and Nix wiring ferry install writes; disabled: none of it', async () => {
    if (!sources.ok) return;
    const nix = await TrixieNix.open(sources.trees);
    const { checks } = await checkModule(nix);
    for (const check of checks) expect.soft(check.ok, `${check.name}: ${check.detail}`).toBe(true);
    expect(checks.length).toBeGreaterThanOrEqual(11);
  }, 600_000);

  it("flake.nix's outputs on all four systems, with nixpkgs' real lib", async () => {
    if (!sources.ok) return;
    const checks = await checkFlake(await TrixieNix.open(sources.trees));
    for (const check of checks) expect.soft(check.ok, `${check.name}: ${check.detail}`).toBe(true);
    expect(checks.length).toBe(3 + 4 * 4);
  }, 600_000);
});
