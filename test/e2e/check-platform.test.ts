/**
 * scripts/check-platform.ts on its Linux path: the steps the macOS workflow runs on GitHub's Macs
 * (.github/workflows/macos.yml), here with what this machine has — `ferry install` under a --root
 * tree, the systemd unit's ExecStart started as systemd starts it, the debian preset, qemu under
 * tcg, the host's real nix build through the machines line install wrote, status, doctor, and
 * `ferry uninstall --purge` leaving every path of ferry's layout as it was. The same script, run
 * as the workflow runs it, so the workflow is not an untried copy of the steps.
 */
import { execa } from 'execa';
import path from 'node:path';
import { expect, it } from 'vitest';

const REPO = path.resolve(import.meta.dirname, '../..');

it('every step passes: install, the daemon, a build through qemu in the guest, status, doctor, uninstall leaving nothing', async () => {
  const run = await execa('node', ['--import', 'tsx', 'scripts/check-platform.ts', '--json'], { cwd: REPO, reject: false, timeout: 1_500_000 });
  const report = JSON.parse(run.stdout) as { ok: boolean; failed?: string; steps: Array<{ name: string; ms: number; seen: string }> };
  console.log(report.steps.map((step) => `${step.name}: ${(step.ms / 1000).toFixed(1)} s — ${step.seen}`).join('\n'));
  expect({ exitCode: run.exitCode, failed: report.failed }, run.stderr.slice(-4000)).toEqual({ exitCode: 0, failed: undefined });
  expect(report.steps.map((step) => step.name)).toEqual([
    'build ferry (tsc, as npm ci does)',
    'ferry image build (debian preset, x86_64-linux)',
    'ferry install',
    "the unit's ExecStart runs the daemon, as systemd does",
    'nix build of a x86_64-linux derivation through ferry (qemu)',
    'ferry status --json (qemu)',
    'ferry doctor --json',
    'ferry uninstall --purge',
    'nothing left behind',
  ]);
}, 1_600_000);
