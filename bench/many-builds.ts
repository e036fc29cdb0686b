/**
 * Many small builds (issue 15, item 3): N trivial derivations (`echo $n > $out`, no inputs but
 * the builder) built by the host's real `nix-build` over ssh-ng, once through the daemon and once
 * straight to the guest's sshd, on the same guest, side by side in one run. The guest is as
 * shipped (sandbox on) with `max-jobs = 4`, and the builders line allows 4 jobs too. Each
 * derivation carries a fresh nonce, so it is really built; every output is read back and must
 * hold its number.
 *
 *   node --import tsx bench/many-builds.ts [--count 300] [--rounds 1] [--json]
 *
 * Besides the wall time it reads how much CPU each side cost: qemu's (the emulated guest: under
 * tcg, the figure that decides), the daemon's, and the host's Nix with its ssh clients.
 * Target: through the daemon ≤ 0.5× direct.
 */
import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { BUILDER_ALIAS } from '../src/daemon/ssh-alias.js';
import { SSH_HOST } from '../src/vm/instance/ssh.js';
import { configText, hypervisorsUsing, TestDaemon } from '../test/support/daemon.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '300' },
    rounds: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const rounds = Number(values.rounds);
const MAX_JOBS = 4;
const say = (line: string) => values.json || process.stderr.write(`${line}\n`);

type Route = 'daemon' | 'direct';

/** `count` derivations, each named by the nonce and its number, whose builder writes the number. */
function manyExpr(nonce: string): string {
  return `builtins.genList (n: derivation {
  name = "ferry-many-${nonce}-\${toString n}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo \${toString n} > $out" ];
}) ${count}\n`;
}

/** CPU seconds (user + system) of a process so far, from /proc/PID/stat; its waited-for children with `withChildren`. */
async function cpuSeconds(pid: number | 'self', withChildren = false): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is field 3, utime 14 … cstime 17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = fields.slice(11, withChildren ? 15 : 13).reduce((sum, f) => sum + Number(f), 0);
  return ticks / 100; // USER_HZ is 100 on Linux
}

interface RunResult {
  route: Route;
  seconds: number;
  qemuCpu: number;
  daemonCpu: number;
  hostCpu: number;
  /** The daemon's records of this run's sessions (through the daemon only): how many, by route, and their mean length. */
  sessions?: { count: number; via: Record<string, number>; meanMs: number };
}

/** The session records the daemon logged since `from` (its log lines carry each record). */
function sessionsSince(daemon: TestDaemon, from: number): RunResult['sessions'] {
  const records = daemon
    .logEntries()
    .slice(from)
    .map((entry) => entry.session as { via: string; durationMs: number } | undefined)
    .filter((record) => record !== undefined);
  const via: Record<string, number> = {};
  for (const record of records) via[record.via] = (via[record.via] ?? 0) + 1;
  return { count: records.length, via, meanMs: records.reduce((sum, r) => sum + r.durationMs, 0) / Math.max(1, records.length) };
}

const daemon = await TestDaemon.start((port) => configText(port, { idleTimeout: '0', maxJobs: MAX_JOBS }));
try {
  say('booting the guest (ferry start)…');
  const started = await daemon.ferry(['start'], 300_000);
  if (started.exitCode !== 0) throw new Error(`ferry start failed: ${started.stderr}`);
  const [qemu] = await hypervisorsUsing(daemon.work);
  if (qemu === undefined) throw new Error('no qemu process found for the guest');
  const { paths } = daemon;

  const build = async (route: Route): Promise<RunResult> => {
    const nonce = randomUUID().slice(0, 8);
    const file = path.join(daemon.work, `many-${route}-${nonce}.nix`);
    await writeFile(file, manyExpr(nonce));
    const builder =
      route === 'daemon'
        ? { uri: `ssh-ng://${BUILDER_ALIAS}`, key: paths.clientKey, config: paths.builderSshConfig }
        : { uri: `ssh-ng://${SSH_HOST}`, key: paths.guestClientKey, config: paths.sshConfig };
    const logFrom = daemon.logEntries().length;
    const before = { qemu: await cpuSeconds(qemu), daemon: await cpuSeconds(daemon.pid), host: await cpuSeconds('self', true) };
    const t0 = performance.now();
    const result = await execa(
      'nix-build',
      ['--no-out-link', '--max-jobs', '0', '--option', 'substituters', '', '--builders', `${builder.uri} x86_64-linux ${builder.key} ${MAX_JOBS}`, file],
      { env: { ...daemon.env, NIX_SSHOPTS: `-F ${builder.config}` }, reject: false, stdin: 'ignore', timeout: count * 30_000 },
    );
    const seconds = (performance.now() - t0) / 1000;
    if (result.exitCode !== 0) throw new Error(`nix-build of ${count} derivations through ${route} failed (exit ${result.exitCode}):\n${String(result.stderr).slice(-4000)}`);
    const after = { qemu: await cpuSeconds(qemu), daemon: await cpuSeconds(daemon.pid), host: await cpuSeconds('self', true) };
    await checkOutputs(String(result.stdout), nonce);
    // The last session's record is logged a moment after nix-build exits.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const sessions = route === 'daemon' ? sessionsSince(daemon, logFrom) : undefined;
    return { route, seconds, qemuCpu: after.qemu - before.qemu, daemonCpu: after.daemon - before.daemon, hostCpu: after.host - before.host, sessions };
  };

  const load = { before: (await execa('uptime')).stdout.trim(), after: '' };
  const runs: RunResult[] = [];
  for (let round = 0; round < rounds; round++) {
    // Alternating which goes first, so a change of load falls on both alike.
    const order: Route[] = round % 2 === 0 ? ['daemon', 'direct'] : ['direct', 'daemon'];
    for (const route of order) {
      say(`round ${round + 1}/${rounds}: ${count} builds ${route === 'daemon' ? 'through the daemon' : "straight to the guest's sshd"}…`);
      const run = await build(route);
      say(`  ${run.seconds.toFixed(1)} s`);
      runs.push(run);
    }
  }
  load.after = (await execa('uptime')).stdout.trim();

  const total = (route: Route, key: 'seconds' | 'qemuCpu' | 'daemonCpu' | 'hostCpu') => runs.filter((r) => r.route === route).reduce((sum, r) => sum + r[key], 0) / rounds;
  const summary = (route: Route) => ({
    seconds: total(route, 'seconds'),
    perBuildMs: (total(route, 'seconds') / count) * 1000,
    qemuCpuSeconds: total(route, 'qemuCpu'),
    qemuCpuPerBuildMs: (total(route, 'qemuCpu') / count) * 1000,
    daemonCpuSeconds: total(route, 'daemonCpu'),
    hostCpuSeconds: total(route, 'hostCpu'),
  });
  const report = { count, rounds, maxJobs: MAX_JOBS, daemon: summary('daemon'), direct: summary('direct'), ratio: total('daemon', 'seconds') / total('direct', 'seconds'), load, runs };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else {
    const row = (label: string, d: string, g: string, ratio?: number) => `${label.padEnd(30)} ${d.padStart(10)} ${g.padStart(10)}${ratio === undefined ? '' : `${ratio.toFixed(2).padStart(8)}×`}`;
    const { daemon: d, direct: g } = report;
    process.stdout.write(
      [
        `${new Date().toISOString().slice(0, 16)}, ${count} trivial derivations, max-jobs ${MAX_JOBS}, sandbox on, guest under qemu (${(await execa('uptime')).stdout.trim()})`,
        `load before: ${load.before}`,
        row(rounds > 1 ? `mean of ${rounds}` : '', 'daemon', 'direct'),
        row('wall time (s)', d.seconds.toFixed(1), g.seconds.toFixed(1), d.seconds / g.seconds),
        row('per build (ms)', d.perBuildMs.toFixed(0), g.perBuildMs.toFixed(0)),
        row('qemu CPU (s)', d.qemuCpuSeconds.toFixed(1), g.qemuCpuSeconds.toFixed(1), d.qemuCpuSeconds / g.qemuCpuSeconds),
        row('qemu CPU per build (ms)', d.qemuCpuPerBuildMs.toFixed(0), g.qemuCpuPerBuildMs.toFixed(0)),
        row('daemon CPU (s)', d.daemonCpuSeconds.toFixed(1), '—'),
        row('host nix + ssh CPU (s)', d.hostCpuSeconds.toFixed(1), g.hostCpuSeconds.toFixed(1)),
        '',
        ...runs
          .filter((r) => r.sessions !== undefined)
          .map((r) => `sessions through the daemon: ${r.sessions!.count} (${Object.entries(r.sessions!.via).map(([via, n]) => `${n} ${via}`).join(', ')}), ${r.sessions!.meanMs.toFixed(0)} ms each on average`),
        '',
        `through the daemon: ${report.ratio.toFixed(2)}× direct (target ≤ 0.5×)${report.ratio <= 0.5 ? '' : '  MISSED'}`,
        '',
      ].join('\n'),
    );
  }
} finally {
  await daemon.stop();
}

/** Every output nix-build printed exists and holds its derivation's number; all `count` are there. */
async function checkOutputs(stdout: string, nonce: string): Promise<void> {
  const outputs = stdout.split('\n').filter(Boolean);
  const seen = new Set<number>();
  for (const output of outputs) {
    const n = Number(new RegExp(`-ferry-many-${nonce}-(\\d+)$`).exec(output)?.[1]);
    if (!Number.isInteger(n)) throw new Error(`nix-build printed an unexpected path: ${output}`);
    const content = await readFile(output, 'utf8');
    if (content !== `${n}\n`) throw new Error(`${output} holds ${JSON.stringify(content)}, expected ${JSON.stringify(`${n}\n`)}`);
    seen.add(n);
  }
  if (seen.size !== count) throw new Error(`nix-build printed ${seen.size} distinct outputs, expected ${count}`);
}
