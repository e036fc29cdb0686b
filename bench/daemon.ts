/**
 * The daemon against going straight to the guest, on the real guest (issue 4, "Speed"): the
 * compiled `ferry daemon` with the debian preset under qemu, the guest already up, and side by
 * side in one run, alternating:
 *
 *   - latency of `ssh … true` through the daemon's front vs to the guest's forwarded sshd;
 *   - a trivial Nix remote build (the host's real nix-build, ssh-ng) through the daemon vs
 *     straight to the guest;
 *   - the daemon's resident memory while idle (after those sessions), and its peak.
 *
 *   node --import tsx bench/daemon.ts [--runs 5] [--latency-runs 15] [--json]
 *
 * Throughput is bench/forward.ts (a local sshd stands in for the guest there: under tcg the
 * guest's own sshd, not the forwarding, would be what is measured).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { resolvePaths } from '../src/config/paths.js';
import { callDaemon } from '../src/daemon/control-client.js';
import { BUILDER_ALIAS } from '../src/daemon/ssh-alias.js';
import { freePort } from '../src/vm/free-port.js';
import { SSH_HOST } from '../src/vm/instance/ssh.js';
import { configText, derivationExpr, IMAGE_CACHE, ROOT } from '../test/support/daemon.js';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    'latency-runs': { type: 'string', default: '15' },
    json: { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const latencyRuns = Number(values['latency-runs']);

const median = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
};
const say = (line: string) => values.json || process.stderr.write(`${line}\n`);

const work = await mkdtemp(path.join(tmpdir(), 'ferry-bench-daemon-'));
const env: Record<string, string> = {
  ...(process.env as Record<string, string>),
  FERRY_STATE_DIR: path.join(work, 'state'),
  FERRY_CACHE_DIR: IMAGE_CACHE,
  FERRY_CONFIG: path.join(work, 'ferry.toml'),
};
const paths = resolvePaths({ env });
const port = await freePort();
await writeFile(env.FERRY_CONFIG, configText(port, { idleTimeout: '0' }));
await execa('npx', ['tsc', '-p', '.'], { cwd: ROOT });
// With the flags the installed service runs it with (src/daemon/node-flags.ts).
const daemon = spawn('node', [...DAEMON_NODE_FLAGS, path.join(ROOT, 'dist/cli.js'), 'daemon', '--json-logs'], { env, stdio: 'ignore' });

try {
  for (let i = 0; ; i++) {
    try {
      await callDaemon(paths.controlSocket, 'GET', '/status', 2000);
      break;
    } catch {
      if (i > 600) throw new Error('the daemon did not start');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  say('booting the guest (ferry start)…');
  await callDaemon(paths.controlSocket, 'POST', '/start');

  const viaDaemon = ['-F', paths.builderSshConfig, BUILDER_ALIAS];
  const direct = ['-F', paths.sshConfig, SSH_HOST];
  const timeSsh = async (argv: string[]) => {
    const started = performance.now();
    const result = await execa('ssh', [...argv, 'true'], { reject: false, stdin: 'ignore' });
    if (result.exitCode !== 0) throw new Error(`ssh ${argv.join(' ')} failed: ${result.stderr}`);
    return performance.now() - started;
  };
  await timeSsh(viaDaemon);
  await timeSsh(direct);
  const latency = { daemon: [] as number[], direct: [] as number[] };
  for (let i = 0; i < latencyRuns; i++) {
    latency.daemon.push(await timeSsh(viaDaemon));
    latency.direct.push(await timeSsh(direct));
  }

  const nixBuild = async (through: 'daemon' | 'direct') => {
    const name = `ferry-bench-${through}-${randomUUID().slice(0, 8)}`;
    const file = path.join(work, `${name}.nix`);
    await writeFile(file, derivationExpr(name, 'echo hi > $out'));
    const builder =
      through === 'daemon'
        ? { uri: `ssh-ng://${BUILDER_ALIAS}`, key: paths.clientKey, config: paths.builderSshConfig }
        : { uri: `ssh-ng://${SSH_HOST}`, key: paths.guestClientKey, config: paths.sshConfig };
    const started = performance.now();
    const result = await execa(
      'nix-build',
      ['--no-out-link', '--max-jobs', '0', '--option', 'substituters', '', '--builders', `${builder.uri} x86_64-linux ${builder.key} 1`, file],
      { env: { ...env, NIX_SSHOPTS: `-F ${builder.config}` }, reject: false, stdin: 'ignore' },
    );
    if (result.exitCode !== 0) throw new Error(`nix-build through ${through} failed: ${result.stderr}`);
    return performance.now() - started;
  };
  await nixBuild('daemon');
  await nixBuild('direct');
  const builds = { daemon: [] as number[], direct: [] as number[] };
  for (let i = 0; i < runs; i++) {
    builds.daemon.push(await nixBuild('daemon'));
    builds.direct.push(await nixBuild('direct'));
  }

  say('idle for 10 s, then reading the daemon’s memory…');
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  const statusFile = await readFile(`/proc/${daemon.pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(statusFile)?.[1] ?? NaN);
  const rssMiB = kib('VmRSS') / 1024;
  const peakMiB = kib('VmHWM') / 1024;

  const result = {
    latencyMs: { daemon: median(latency.daemon), direct: median(latency.direct) },
    trivialBuildMs: { daemon: median(builds.daemon), direct: median(builds.direct) },
    daemonRssMiB: { idle: rssMiB, peak: peakMiB },
  };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    const ratio = (a: number, b: number) => (a / b).toFixed(2);
    const row = (label: string, d: number, g: number) => `${label.padEnd(28)} ${d.toFixed(0).padStart(8)} ${g.toFixed(0).padStart(8)} ${ratio(d, g).padStart(7)}×`;
    process.stdout.write(
      [
        `${new Date().toISOString().slice(0, 16)}, guest under qemu (${(await execa('uptime')).stdout.trim()})`,
        `${'median ms'.padEnd(28)} ${'daemon'.padStart(8)} ${'direct'.padStart(8)}   ratio`,
        row(`ssh … true (n=${latencyRuns})`, result.latencyMs.daemon, result.latencyMs.direct),
        row(`trivial nix build (n=${runs})`, result.trivialBuildMs.daemon, result.trivialBuildMs.direct),
        '',
        `latency: ${ratio(result.latencyMs.daemon, result.latencyMs.direct)}× (target ≤ 1.2×), ${(result.latencyMs.daemon - result.latencyMs.direct).toFixed(0)} ms added`,
        `trivial build: ${ratio(result.trivialBuildMs.daemon, result.trivialBuildMs.direct)}× (target ≤ 1.1×)`,
        `daemon resident memory idle: ${rssMiB.toFixed(0)} MiB (target ≤ 80 MB), peak ${peakMiB.toFixed(0)} MiB`,
        '',
      ].join('\n'),
    );
  }
} finally {
  daemon.kill('SIGTERM');
  await new Promise((resolve) => daemon.once('exit', resolve));
  await rm(work, { recursive: true, force: true });
}
