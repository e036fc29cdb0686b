/**
 * `ferry daemon` (what launchd/systemd runs) and the commands that talk to it over the control
 * socket: status, start, stop, restart, logs.
 */
import type { Command } from 'commander';
import { createReadStream, existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { resolvePaths } from '../config/paths.js';
import { ExitCode } from '../errors.js';
import { callDaemon, DaemonNotRunning } from '../daemon/control-client.js';
import { formatDurationMs, humanBytes } from '../ui/progress.js';
import { FerryError } from '../errors.js';
import type { DaemonStatus } from '../daemon/status.js';
import { describeUsage } from '../image/state-disk-usage.js';

export function registerDaemonCommands(program: Command): void {
  program
    .command('daemon')
    .description('run the daemon in the foreground (what launchd/systemd start): SSH front, on-demand guest, config watch')
    .option('-c, --config <file>', 'the config file (default: $FERRY_CONFIG or the platform default)')
    .option('--json-logs', 'JSON logs on stdout even on a terminal')
    .addHelpText('after', '\nStop it with SIGTERM or Ctrl-C: the guest is powered off cleanly first.')
    .action(async (opts: { config?: string; jsonLogs?: boolean }) => {
      const { runDaemon } = await import('../daemon/daemon.js');
      const paths = resolvePaths({ configFile: opts.config });
      try {
        await runDaemon({ paths, pretty: opts.jsonLogs ? false : undefined });
      } catch (error) {
        // A daemon that ends on an error leaves no pid file behind to say it runs. Only its own:
        // a second daemon refused because one already runs must not remove that one's file.
        removeOwnPidFile(paths.daemonPid);
        throw error;
      }
    });

  program
    .command('status')
    .description('the daemon, the guest (state, uptime, image, backend), open sessions and the last builds')
    .option('--json', 'print the status as JSON on stdout')
    .addHelpText('after', '\nExit codes: 0 the daemon runs, 69 it does not.')
    .action(async (opts: { json?: boolean }) => {
      const paths = resolvePaths();
      let status: DaemonStatus;
      try {
        status = await callDaemon<DaemonStatus>(paths.controlSocket, 'GET', '/status', 5000);
      } catch (error) {
        // Thrown either way: main() sets the exit code (69) from what the action throws, so a
        // process.exitCode set here would be overwritten with 0.
        if (error instanceof DaemonNotRunning && opts.json) process.stdout.write(`${JSON.stringify({ daemon: null, error: error.message }, null, 2)}\n`);
        throw error;
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
        return;
      }
      process.stdout.write(renderStatus(status));
    });

  for (const [name, path, description] of [
    ['start', '/start', 'boot the guest now (it also boots on the first build)'],
    ['stop', '/stop', 'power the guest off (it boots again on the next build)'],
    ['restart', '/restart', 'power the guest off and boot it again'],
  ] as const) {
    const command = program.command(name).description(description).option('--json', 'print the status as JSON on stdout');
    if (name === 'stop') command.option('--hard', 'kill the guest instead of powering it off');
    command.action(async (opts: { json?: boolean; hard?: boolean }) => {
      const paths = resolvePaths();
      const status = await callDaemon<DaemonStatus>(paths.controlSocket, 'POST', `${path}${opts.hard ? '?hard=1' : ''}`);
      if (opts.json) process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
      else process.stdout.write(renderStatus(status));
    });
  }

  program
    .command('rebuild')
    .description('build the guest image for ferry.toml now and swap the guest to it (what a change of the file does)')
    .option('--json', 'print the outcome and the status as JSON on stdout')
    .addHelpText('after', '\nA running guest is swapped once its sessions end. Exit codes: 0 built (or unchanged), 1 the build or the config failed, 69 no daemon.')
    .action(async (opts: { json?: boolean }) => {
      const paths = resolvePaths();
      // As long as a first build may take (a session would wait as long): [daemon] image-timeout's default.
      const answer = await callDaemon<{ result: { outcome: string; imageId?: string; error?: string }; status: DaemonStatus }>(paths.controlSocket, 'POST', '/rebuild', 30 * 60_000);
      if (opts.json) process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
      else process.stdout.write(renderStatus(answer.status));
      const { outcome, error } = answer.result;
      if (outcome === 'build-error' || outcome === 'config-error' || outcome === 'rolled-back') {
        throw new FerryError(`${outcome === 'rolled-back' ? 'the new image did not come up (rolled back)' : outcome === 'config-error' ? 'the config is not valid' : 'the image build failed'}: ${error ?? ''}`);
      }
    });

  program
    .command('logs')
    .description("print the daemon's log (human-readable); -f follows it")
    .option('-f, --follow', 'keep printing new lines')
    .option('--json', 'print the raw JSON lines')
    .action(async (opts: { follow?: boolean; json?: boolean }) => {
      const paths = resolvePaths();
      if (!existsSync(paths.daemonLog)) throw new FerryError(`no daemon log at ${paths.daemonLog}`, { exitCode: ExitCode.NoInput });
      const { prettyFactory } = await import('pino-pretty');
      const pretty = prettyFactory({ colorize: process.stdout.isTTY, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss', ignore: 'pid,hostname' });
      let carry = '';
      const print = (chunk: string) => {
        const lines = (carry + chunk).split('\n');
        carry = lines.pop() ?? '';
        for (const line of lines) {
          if (!line) continue;
          if (opts.json) process.stdout.write(`${line}\n`);
          else {
            try {
              process.stdout.write(pretty(JSON.parse(line)));
            } catch {
              process.stdout.write(`${line}\n`);
            }
          }
        }
      };
      let offset = 0;
      const readFrom = (start: number) =>
        new Promise<number>((resolve, reject) => {
          let read = start;
          createReadStream(paths.daemonLog, { start, encoding: 'utf8' })
            .on('data', (chunk) => {
              read += Buffer.byteLength(chunk as string);
              print(chunk as string);
            })
            .on('end', () => resolve(read))
            .on('error', reject);
        });
      offset = await readFrom(0);
      if (!opts.follow) return;
      await new Promise<void>(() => {
        setInterval(() => {
          const size = statSync(paths.daemonLog).size;
          if (size < offset) offset = 0; // rotated
          if (size > offset) void readFrom(offset).then((next) => (offset = next));
        }, 500);
      });
    });
}

/** Removes the pid file if it holds this process's pid. */
export function removeOwnPidFile(file: string): void {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return;
  }
  if (Number(text.trim()) === process.pid) rmSync(file, { force: true });
}

function renderStatus(s: DaemonStatus): string {
  const lines: string[] = [];
  const g = s.guest;
  lines.push(`daemon   running (pid ${s.daemon.pid}, up ${formatDurationMs(s.daemon.uptimeMs)}), SSH front on ${s.daemon.listen}`);
  if (s.daemon.configError) lines.push(`         config error (the guest keeps its previous config):\n${indent(s.daemon.configError)}`);
  if (s.daemon.buildError) {
    const meanwhile = g.image === undefined ? 'no image to boot: sessions get this error; a change of ferry.toml, `ferry rebuild` or the next session tries again' : 'the guest keeps its previous image';
    lines.push(`         image build failed (${meanwhile}):\n${indent(s.daemon.buildError)}`);
  }
  const uptime = g.state === 'running' ? `, up ${formatDurationMs(g.uptimeMs)}` : '';
  lines.push(`guest    ${g.state}${uptime}${g.address ? ` at ${g.address}` : ''}${g.backend ? ` (${g.backend})` : ''}${g.readyMs ? `, ready in ${formatDurationMs(g.readyMs)}` : ''}`);
  const extra = g.extraSystems.length ? ` + ${g.extraSystems.join(', ')} (through ${g.interpreter})` : '';
  lines.push(`systems  ${g.system}${extra}`);
  const building = s.daemon.buildingSince ? `being built since ${s.daemon.buildingSince}` : undefined;
  lines.push(`image    ${g.image ?? building ?? 'none'}${g.image && building ? ` (a new one ${building})` : ''}${g.previousImage ? ` (previous ${g.previousImage})` : ''}${g.pendingImage ? `, swapping to ${g.pendingImage} when sessions end` : ''}`);
  if (g.lastSwap) lines.push(`swap     ${g.lastSwap.outcome} → ${g.lastSwap.imageId} at ${g.lastSwap.at}${g.lastSwap.error ? `: ${g.lastSwap.error}` : ''}`);
  if (g.lastError) lines.push(`problem  ${g.lastError}`);
  const health = describeHealth(g.health);
  if (health) lines.push(`health   ${health}`);
  if (s.stateDisk) lines.push(`disk     ${describeUsage(s.stateDisk)} (${s.stateDisk.source === 'guest' ? 'in the guest' : 'as of its last stop'}, ${s.stateDisk.measuredAt})`);
  lines.push(`sessions ${s.sessions.open} open, ${s.sessions.total} since start; ${g.boots} boots, ${g.crashes} crashes, ${g.unresponsiveRestarts} restarts of a guest that did not answer`);
  if (s.recentSessions.length) {
    lines.push('recent');
    for (const r of s.recentSessions.slice(0, 10)) {
      const exit = r.exit.kind === 'status' ? `exit ${r.exit.code}` : r.exit.kind === 'signal' ? `signal ${r.exit.signal}` : `error: ${r.exit.message}`;
      lines.push(`  ${r.startedAt}  ${(r.command ?? r.kind).slice(0, 40).padEnd(40)} ${formatDurationMs(r.durationMs).padStart(8)}  in ${humanBytes(r.bytesIn)}, out ${humanBytes(r.bytesOut)}, err ${humanBytes(r.bytesErr)}  ${exit}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The health check's line: whether the guest answers, and the last restart of one that did not. */
function describeHealth(h: DaemonStatus['guest']['health']): string | undefined {
  const parts: string[] = [];
  if (h.state === 'ok') parts.push(`answers (checked ${h.lastCheckAt}; its clock was ${h.clockOffsetS ?? 0} s off, set when over 2 s)`);
  if (h.state === 'not-answering') parts.push(`NOT ANSWERING: ${h.failures} checks failed since ${h.lastAnswerAt ?? 'boot'} (${h.lastError ?? 'no answer'})`);
  if (h.lastRestart) parts.push(`last restart ${h.lastRestart.at}: ${h.lastRestart.reason}`);
  return parts.length ? parts.join('; ') : undefined;
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((line) => `           ${line}`)
    .join('\n');
}
