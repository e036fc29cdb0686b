/**
 * `ferry daemon`: what launchd (or systemd) runs. Wires the pieces together — config, image,
 * supervisor, guest connection pool, SSH front, control socket, config watch — and takes them
 * down in reverse order on SIGTERM. The pieces: guest-vm.ts (boot and stop), saved-images.ts,
 * reload.ts (a changed ferry.toml), status-report.ts (`GET /status`).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { hostNixConfFiles } from '../config/host-nix-conf.js';
import { loadConfig } from '../config/load.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { ferryKeys } from '../keys/ferry-keys.js';
import { daemonIsRunning } from './control-client.js';
import { ControlServer } from './control-server.js';
import { ClockWatch, clockCheckedSource, syncGuestClock } from './guest-control.js';
import { HealthCheck } from './health-check.js';
import { GuestPool } from './guest-pool.js';
import { guestVmDeps, stopLeftoverGuest } from './guest-vm.js';
import { createDaemonLogger } from './logger.js';
import { authorizedKeyLines, ConfigReload, watchConfigFiles } from './reload.js';
import { loadSavedImages, saveImages } from './saved-images.js';
import { frontAddress, writeDaemonSshConfig } from './ssh-alias.js';
import { SshFront } from './ssh-front.js';
import { diskFullNote, watchStateDisk } from './state-disk-watch.js';
import { DAEMON_VERSION, SessionHistory, statusReport } from './status-report.js';
import { Supervisor } from './supervisor.js';

export interface DaemonOptions {
  paths: FerryPaths;
  /** Human-readable logs on stdout (default: when stdout is a terminal). */
  pretty?: boolean;
}

export async function runDaemon(options: DaemonOptions): Promise<void> {
  const { paths } = options;
  // `--config FILE` must name a file, as for every command. FERRY_CONFIG is what the installed
  // service always sets: a file removed since means the defaults, as it does while running
  // (reload.ts), not a daemon that cannot start and is restarted every few seconds.
  const config = await loadConfig(paths.configFile, { mustExist: paths.configFileNamedBy === 'argument' ? 'argument' : false });
  await mkdir(paths.stateDir, { recursive: true, mode: 0o700 });
  if (await daemonIsRunning(paths.controlSocket)) {
    throw new FerryError(`a ferry daemon is already running (control socket ${paths.controlSocket})`, { exitCode: ExitCode.TempFail });
  }
  const log = createDaemonLogger({ file: paths.daemonLog, level: config.daemon.logLevel, pretty: options.pretty });
  // Listened for from here: a SIGTERM while the daemon starts still ends in a clean shutdown.
  const signals = nextSignal();
  log.info({ version: DAEMON_VERSION, config: paths.configFile, stateDir: paths.stateDir }, 'ferry daemon starting');
  await writeFile(paths.daemonPid, `${process.pid}\n`);
  // What shutdown undoes, last started first; the pid file last of all, on any way out.
  const undo: Array<() => unknown> = [() => rm(paths.daemonPid, { force: true })];
  const shutdown = async () => {
    for (const step of undo.reverse()) await Promise.resolve().then(step).catch((error: unknown) => log.error({ err: error }, 'a shutdown step failed'));
  };
  let building = () => false;
  try {
    building = await serve(paths, config, log, undo);
  } catch (error) {
    // Printed once, by the caller (on stderr, which launchd and systemd put with stdout): not logged too.
    log.debug({ err: error }, 'the daemon did not start');
    await shutdown();
    signals.dispose();
    log.flush();
    throw error;
  }
  log.info({ signal: await signals.next }, 'shutting down');
  await shutdown();
  signals.dispose();
  log.info('stopped');
  log.flush();
  if (building()) abandonBuild(log);
}

/**
 * An image build cannot be cancelled, and it would keep the process alive — a first build for
 * minutes — after everything else stopped (under launchd until its SIGKILL). So the daemon ends
 * now; the build's temporaries are removed by the next one (its writer is no longer running).
 */
function abandonBuild(log: Logger): void {
  log.warn('an image build was under way; it is abandoned (the next build starts it again)');
  log.flush();
  // A moment for the log to reach its file; the exit status is the one the CLI set by then.
  setTimeout(() => process.exit(), 500);
}

/**
 * Starts the parts, pushing onto `undo` how to stop each; returns whether an image build runs.
 * The SSH front listens first — right after the keys and the leftover guest — so a session that
 * comes while the image builds or the guest boots waits (the supervisor asks the reloader for an
 * image) instead of being refused.
 */
async function serve(paths: FerryPaths, initial: FerryConfig, log: Logger, undo: Array<() => unknown>): Promise<() => boolean> {
  let config = initial;
  const startedAt = new Date();
  const keys = ferryKeys(paths);
  const { client: clientKey, guestClient: guestKey } = keys;
  await stopLeftoverGuest(paths, log);
  const saved = await loadSavedImages(paths, log);

  const clock = new ClockWatch();
  undo.push(() => clock.close());
  const supervisor: Supervisor = new Supervisor({
    ...guestVmDeps(paths, () => config, () => clock.reset(), log),
    saveImages: (image, before) => saveImages(paths, image, before),
    closeConnections: (): Promise<void> => pool.close(),
    imageReady: () => reloader.imageReady(),
    idleTimeoutMs: () => config.daemon.idleTimeoutMs,
    logger: log,
  });
  const pool: GuestPool = new GuestPool({
    // Connections are opened for sessions the supervisor already let on (clockCheckedSource).
    target: () => supervisor.ensureRunning({ admitted: true }),
    privateKey: guestKey.privateKey,
    handshakeTimeoutMs: () => config.daemon.sshTimeoutMs,
    logger: log,
  });
  undo.push(() => pool.close(), () => supervisor.shutdown());
  const health = startHealthCheck(supervisor, clock, guestKey.privateKey, log);
  undo.push(() => health.close());

  const sessions = new SessionHistory();
  const disk = watchStateDisk({ stateDisk: paths.stateDisk, runningTarget: () => supervisor.runningTarget, privateKey: guestKey.privateKey, log }, supervisor);
  const front = new SshFront({
    host: config.daemon.listen,
    port: config.daemon.port,
    hostKey: keys.daemonHost.privateKey,
    authorizedKeys: authorizedKeyLines(config, clientKey.publicKey, log),
    guest: clockCheckedSource({ supervisor, pool, clock, privateKey: guestKey.privateKey, log }),
    logger: log,
    onSession: (record) => {
      sessions.add(record);
      void disk.refreshAfterSession();
    },
    diskFullNote: () => diskFullNote(paths.stateDisk, config.guest.stateDiskSizeBytes, paths.configFile),
    // The limits before login, read at start (a change takes effect at restart).
    ...pickLimits(config),
  });
  front.on('sessions', (open: number) => supervisor.sessionsChanged(open));
  const reloader: ConfigReload = new ConfigReload({
    paths,
    log,
    config: () => config,
    adopt: (next: FerryConfig) => (config = next),
    setAuthorizedKeys: (lines) => front.setAuthorizedKeys(lines),
    clientPublicKey: clientKey.publicKey,
    swapTo: (manifest) => supervisor.swapTo(manifest),
  });
  const listening = await front.listen();
  undo.push(() => front.close());
  // Queued before any session can ask for an image (a login takes network round trips; this
  // runs in the same turn as the listen callback), so sessions wait for this build, not another.
  void reloader.start(saved, (images) => supervisor.useImages(images.current, images.previous)).catch((error: unknown) => log.error({ err: error }, 'the first image could not be put in place'));
  writeDaemonSshConfig(paths, listening);
  const address = frontAddress(listening.host, listening.port);

  const status = () =>
    statusReport({ paths, startedAt, listen: address, config: () => config, reload: reloader.state, supervisor, health: () => health.status(), openSessions: () => front.openSessions, sessions, stateDisk: () => disk.last });
  const control = controlServer(paths, supervisor, status, (reason) => reloader.reload(reason));
  await control.listen();
  undo.push(() => control.close());
  // The host's nix.conf too: a cache added there reaches the guest's nix.conf without a restart
  // (an unchanged result is a cache hit and no swap).
  const watcher = watchConfigFiles([paths.configFile, ...hostNixConfFiles()], (file, event) => void reloader.reload(`${file} ${event}`));
  undo.push(() => watcher.close());
  log.info({ address }, 'ready');
  return () => reloader.state.buildingSince !== undefined;
}

/** The guest's health check; each answer is a clock check too: it sets the clock, and counts for the clock watch. */
function startHealthCheck(supervisor: Supervisor, clock: ClockWatch, privateKey: string | Buffer, log: Logger): HealthCheck {
  return new HealthCheck({
    supervisor,
    probe: async (target, timeoutMs) => {
      const startedAt = Date.now();
      const offset = await syncGuestClock(target, privateKey, { timeoutMs });
      clock.checked(startedAt);
      if (Math.abs(offset) > 2) log.info({ offsetS: Math.round(offset) }, 'set the guest clock (it lagged: its hypervisor was paused, throttled, or the host slept)');
      return offset;
    },
    log,
  });
}

function pickLimits({ daemon }: FerryConfig): Pick<FerryConfig['daemon'], 'loginGraceTimeMs' | 'maxAuthTries' | 'maxStartups'> {
  return { loginGraceTimeMs: daemon.loginGraceTimeMs, maxAuthTries: daemon.maxAuthTries, maxStartups: daemon.maxStartups };
}

/** The control socket's routes (`ferry status`, `start`, `stop`, `restart`, `rebuild`). */
function controlServer(paths: FerryPaths, supervisor: Supervisor, status: () => unknown, reload: (reason: string) => Promise<unknown>): ControlServer {
  return new ControlServer(paths.controlSocket)
    .route('GET', '/status', async () => status())
    .route('POST', '/start', async () => {
      await supervisor.start();
      return status();
    })
    .route('POST', '/stop', async (query) => {
      await supervisor.stop({ hard: query.get('hard') === '1', reason: 'ferry stop' });
      return status();
    })
    .route('POST', '/restart', async () => {
      await supervisor.stop({ reason: 'ferry restart' });
      await supervisor.start();
      return status();
    })
    .route('POST', '/rebuild', async () => ({ result: await reload('requested'), status: status() }));
}

/**
 * `next` resolves with the name of the first SIGTERM or SIGINT; later ones are ignored (shutdown
 * runs once) until `dispose`, once the daemon is down.
 */
function nextSignal(): { next: Promise<string>; dispose(): void } {
  let onSignal!: (signal: NodeJS.Signals) => void;
  const next = new Promise<string>((resolve) => (onSignal = resolve));
  // `on`, not `once`: execa's signal-exit re-raises a signal that has no other listener left,
  // which would kill the daemon in the middle of its clean shutdown.
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return {
    next,
    dispose: () => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    },
  };
}
