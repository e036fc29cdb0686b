/**
 * What Nix's sandbox costs a build ("Builds users can trust", "Speed"): the trivial remote build
 * of bench/daemon.ts (the host's real nix-build, ssh-ng, through the daemon) on two guests side by
 * side in one run, alternating — the same system disk, one with ferry's nix.conf (sandbox on),
 * one with `sandbox = false` appended through guest.nix.extra-config (the config archive is the
 * only difference).
 *
 *   node --import tsx bench/sandbox.ts [--runs 9] [--json]
 *
 * Target: sandbox on ≤ 1.15× off.
 */
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { configText, TestDaemon } from '../test/support/daemon.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '9' },
    json: { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const say = (line: string) => values.json || process.stderr.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

const unsandboxed = (port: number) => configText(port, { idleTimeout: '0' }).replace('compress-build-log = false', 'compress-build-log = false\\nsandbox = false');
say('starting two daemons (sandbox on, sandbox off) and booting both guests…');
const [on, off] = await Promise.all([TestDaemon.start((port) => configText(port, { idleTimeout: '0' })), TestDaemon.start(unsandboxed)]);
try {
  await Promise.all([on.ferry(['start']), off.ferry(['start'])]);
  // Check each is what it says: the probe sees the guest's /usr only without the sandbox.
  const sees = async (daemon: TestDaemon) => {
    const result = await daemon.nixBuild('sandbox-check', 'if [ -e /usr/bin ]; then echo unsandboxed > $out; else echo sandboxed > $out; fi');
    if (result.exitCode !== 0) throw new Error(`the check build failed: ${result.stderr}`);
    return (await execa('cat', [result.stdout.trim()])).stdout;
  };
  const [onSees, offSees] = [await sees(on), await sees(off)];
  if (onSees !== 'sandboxed' || offSees !== 'unsandboxed') throw new Error(`expected sandboxed/unsandboxed, got ${onSees}/${offSees}`);

  const times = { on: [] as number[], off: [] as number[] };
  const build = async (daemon: TestDaemon) => {
    const result = await daemon.nixBuild('trivial', 'echo hi > $out');
    if (result.exitCode !== 0) throw new Error(`nix-build failed: ${result.stderr}`);
    return result.ms;
  };
  await build(on);
  await build(off);
  for (let i = 0; i < runs; i++) {
    times.on.push(await build(on));
    times.off.push(await build(off));
  }
  const result = { trivialBuildMs: { sandboxOn: median(times.on), sandboxOff: median(times.off) }, runs };
  const ratio = (result.trivialBuildMs.sandboxOn / result.trivialBuildMs.sandboxOff).toFixed(2);
  if (values.json) process.stdout.write(`${JSON.stringify({ ...result, ratio: Number(ratio) }, null, 2)}\n`);
  else {
    process.stdout.write(
      [
        `${new Date().toISOString().slice(0, 16)}, two guests under qemu (${(await execa('uptime')).stdout.trim()})`,
        `trivial nix build, median of ${runs}: sandbox on ${result.trivialBuildMs.sandboxOn} ms, off ${result.trivialBuildMs.sandboxOff} ms`,
        `sandbox: ${ratio}× (target ≤ 1.15×)`,
        '',
      ].join('\n'),
    );
  }
} finally {
  await Promise.all([on.stop(), off.stop()]);
}
