/**
 * Evaluates nix/darwin-module.nix with nix-darwin's real module system and nixpkgs' real lib (the
 * revisions in test/support/darwin-eval-sources.json) under Debian trixie's Nix 2.26, and checks
 * it against what the real `ferry install` writes for the same settings: the LaunchAgent's
 * program arguments and environment, the ssh alias, the nix.buildMachines entry, distributed
 * builds and builders-use-substitutes; disabled, none of it; and flake.nix's outputs on all four
 * systems with the real lib (test/support/flake-eval.nix). The package sets are stand-ins
 * (test/support/darwin-eval.nix says what it holds); the macOS workflow evaluates against nixpkgs.
 *
 *   node --import tsx scripts/eval-darwin-module.ts [--json]     (as root: it chroots; needs mmdebstrap the first time)
 *
 * Exit codes: 0 every check passed, 1 a check failed, 66 the sources are not here (the message says how to point at them).
 */
import { checkFlake, checkModule, findSources, TrixieNix } from '../test/support/darwin-eval.js';

const json = process.argv.includes('--json');
const sources = await findSources();
if (!sources.ok) {
  process.stderr.write(`eval-darwin-module: ${sources.missing}\n`);
  process.exit(66);
}
const nix = await TrixieNix.open(sources.trees);
const started = Date.now();
const { checks: moduleChecks, releases } = await checkModule(nix);
const checks = [...moduleChecks, ...(await checkFlake(nix))];
const seconds = (Date.now() - started) / 1000;
const revisions = Object.fromEntries(Object.entries(sources.pins).map(([name, pin]) => [name, pin.rev]));
if (json) process.stdout.write(`${JSON.stringify({ ok: checks.every((c) => c.ok), revisions, releases, nix: '2.26 (Debian trixie)', seconds, checks }, null, 2)}\n`);
else {
  for (const [name, rev] of Object.entries(revisions)) process.stdout.write(`source ${name} ${rev} (release ${releases[name as keyof typeof releases]})\n`);
  for (const check of checks) process.stdout.write(`${check.ok ? 'ok  ' : 'FAIL'} ${check.name}${check.ok ? '' : `\n     ${check.detail}`}\n`);
  process.stdout.write(`${checks.filter((c) => c.ok).length}/${checks.length} checks passed in ${seconds.toFixed(1)} s\n`);
}
process.exit(checks.every((c) => c.ok) ? 0 : 1);
