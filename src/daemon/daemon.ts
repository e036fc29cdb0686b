/**
 * `ferry daemon`: what launchd (or systemd) runs. Wires the pieces together — config, image,
 * supervisor, guest connection pool, SSH front, control socket, config watch — and takes them
 * down in reverse order on SIGTERM. The pieces: guest-vm.ts (boot and stop), saved-images.ts,
 * reload.ts (a changed ferry.toml), status-report.ts (`GET /status`).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { loadConfig } from '../config/load.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { ferryKeys } from '../keys/ferry-keys.js';
import { daemonIsRunning } from './control-client.js';
import { ControlServer } from './control-server.js';
import { ClockWatch, clockCheckedSource } from './guest-control.js';
import { GuestPool } from './guest-pool.js';
import { guestVmDeps, stopLeftoverGuest } from './guest-vm.js';
import { createDaemonLogger } from './logger.js';
import { authorizedKeyLines, ConfigReload, watchConfigFile } from './reload.js';
import { initialImages, saveImages } from './saved-images.js';
import { frontAddress, writeDaemonSshConfig } from './ssh-alias.js';
import { SshFront } from './ssh-front.js';
import { DAEMON_VERSION, SessionHistory, statusReport } from './status-report.js';
import { Supervisor } from './supervisor.js';

export interface DaemonOptions {
  paths: FerryPaths;
  /** Human-readable logs on stdout (default: when stdout is a terminal). */
  pretty?: boolean;
}

export async function runDaemon(options: DaemonOptions): Promise<void> {
  const { paths } = options;
  let config = await loadConfig(paths.configFile);
  await mkdir(paths.stateDir, { recursive: true, mode: 0o700 });
  if (await daemonIsRunning(paths.controlSocket)) {
    throw new FerryError(`a ferry daemon is already running (control socket ${paths.controlSocket})`, { exitCode: ExitCode.TempFail });
  }
  const log = createDaemonLogger({ file: paths.daemonLog, level: config.daemon.logLevel, pretty: options.pretty });
  const startedAt = new Date();
  log.info({ version: DAEMON_VERSION, config: paths.configFile, stateDir: paths.stateDir }, 'ferry daemon starting');
  await writeFile(paths.daemonPid, `${process.pid}\n`);

  const keys = ferryKeys(paths);
  const { client: clientKey, guestClient: guestKey } = keys;
  await stopLeftoverGuest(paths, log);

  const { current, previous } = await initialImages(paths, config, log);
  const clock = new ClockWatch();
  const supervisor: Supervisor = new Supervisor(
    {
      ...guestVmDeps(paths, () => config, () => clock.reset()),
      saveImages: (image, before) => saveImages(paths, image, before),
      closeConnections: (): Promise<void> => pool.close(),
      idleTimeoutMs: () => config.daemon.idleTimeoutMs,
      logger: log,
    },
    current,
    previous,
  );
  const pool: GuestPool = new GuestPool({
    target: () => supervisor.ensureRunning(),
    privateKey: guestKey.privateKey,
    handshakeTimeoutMs: () => config.daemon.sshTimeoutMs,
    logger: log,
  });

  const sessions = new SessionHistory();
  const front = new SshFront({
    host: config.daemon.listen,
    port: config.daemon.port,
    hostKey: keys.daemonHost.privateKey,
    authorizedKeys: authorizedKeyLines(config, clientKey.publicKey, log),
    guest: clockCheckedSource({ supervisor, pool, clock, privateKey: guestKey.privateKey, log }),
    logger: log,
    onSession: (record) => sessions.add(record),
    // The limits before login, read at start (a change takes effect at restart).
    ...pickLimits(config),
  });
  front.on('sessions', (open: number) => supervisor.sessionsChanged(open));
  const listening = await front.listen();
  writeDaemonSshConfig(paths, listening);
  const address = frontAddress(listening.host, listening.port);
  log.info({ address }, 'SSH front listening');

  const reloader = new ConfigReload({
    paths,
    log,
    config: () => config,
    adopt: (next: FerryConfig) => (config = next),
    setAuthorizedKeys: (lines) => front.setAuthorizedKeys(lines),
    clientPublicKey: clientKey.publicKey,
    swapTo: (manifest) => supervisor.swapTo(manifest),
  });
  const status = () =>
    statusReport({ paths, startedAt, listen: address, config: () => config, reload: reloader.state, supervisor, openSessions: () => front.openSessions, sessions });
  const control = controlServer(paths, supervisor, status, (reason) => reloader.reload(reason));
  await control.listen();
  const watcher = watchConfigFile(paths.configFile, (event) => void reloader.reload(`${paths.configFile} ${event}`));
  log.info('ready');

  await untilSignalled(log, async () => {
    await watcher.close();
    await control.close();
    await front.close();
    await supervisor.stop({ reason: 'daemon shutdown' });
    await pool.close();
    clock.close();
    await rm(paths.daemonPid, { force: true });
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

/** Resolves after SIGTERM or SIGINT, once `shutdown` has run (once, however many signals come). */
function untilSignalled(log: Logger, shutdown: () => Promise<void>): Promise<void> {
  return new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      await shutdown();
      log.info('stopped');
      log.flush();
      resolve();
    };
    // `on`, not `once`: execa's signal-exit re-raises a signal that has no other listener left,
    // which would kill the daemon in the middle of its clean shutdown.
    process.on('SIGTERM', () => void onSignal('SIGTERM'));
    process.on('SIGINT', () => void onSignal('SIGINT'));
  });
}
