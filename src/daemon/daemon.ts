/**
 * `ferry daemon`: what launchd (or systemd) runs. Wires the pieces together — config, image,
 * supervisor, guest connection pool, SSH front, control socket, config watch — and takes them
 * down in reverse order on SIGTERM.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { watch, type FSWatcher } from 'chokidar';
import { loadConfig } from '../config/load.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { buildImage, type ImageManifest } from '../image/build.js';
import { ensureStateDisk } from '../image/state-disk.js';
import { ensureKeyPair } from '../keys/ssh-keys.js';
import { bootGuest, runningGuest, stopGuest } from '../vm/guest.js';
import { daemonIsRunning } from './control-client.js';
import { ControlServer } from './control-server.js';
import { ClockWatch, syncGuestClock } from './guest-control.js';
import { GuestPool, type GuestChannelRequest } from './guest-pool.js';
import { createDaemonLogger } from './logger.js';
import type { SessionRecord } from './session-log.js';
import { writeDaemonSshConfig } from './ssh-alias.js';
import type { DaemonStatus } from './status.js';
import { SshFront } from './ssh-front.js';
import { Supervisor, type GuestTarget } from './supervisor.js';
import { writeFileAtomic } from '../atomic-file.js';

const VERSION = '0.1.0';
const RECENT_SESSIONS = 20;

interface SavedImages {
  current: string;
  previous?: string;
}

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
  log.info({ version: VERSION, config: paths.configFile, stateDir: paths.stateDir }, 'ferry daemon starting');
  await writeFile(paths.daemonPid, `${process.pid}\n`);

  const clientKey = ensureKeyPair(paths.clientKey, 'ferry-client');
  const guestKey = ensureKeyPair(paths.guestClientKey, 'ferry-daemon-to-guest');

  // A guest left running by a daemon that died is not ours to adopt: stop it cleanly.
  if (await runningGuest(paths)) {
    log.warn('a guest from an earlier daemon is still running; stopping it');
    await stopGuest(paths).catch((error) => log.error({ err: error }, 'could not stop the old guest'));
  }

  const { current, previous } = await initialImages(paths, config, log);
  const status = {
    configError: undefined as string | undefined,
    buildError: undefined as string | undefined,
    lastReloadAt: undefined as string | undefined,
    sessionsTotal: 0,
    recent: [] as SessionRecord[],
  };

  const supervisor: Supervisor = new Supervisor(
    {
      boot: async (manifest) => {
        await ensureStateDisk(paths.stateDisk, config.guest.stateDiskSizeBytes);
        const guest = await bootGuest({ manifest, config, paths, detached: false });
        clock.reset();
        return guest;
      },
      stop: ({ hard }) => stopGuest(paths, { hard }),
      guestHostKey: () => readFileSync(`${paths.guestHostKey}.pub`, 'utf8').trim(),
      saveImages: (image, before) => saveImages(paths, image, before),
      closeConnections: (): Promise<void> => pool.close(),
      idleTimeoutMs: () => config.daemon.idleTimeoutMs,
      logger: log,
    },
    current,
    previous,
  );
  const clock = new ClockWatch();
  const pool: GuestPool = new GuestPool({
    target: (): Promise<GuestTarget> => supervisor.ensureRunning(),
    privateKey: guestKey.privateKey,
    handshakeTimeoutMs: () => config.daemon.sshTimeoutMs,
    logger: log,
  });
  // Before a session: the guest's clock is set again if the host slept since the last check.
  const guestSource = {
    open: async (request: GuestChannelRequest) => {
      if (supervisor.state === 'running' && clock.due) {
        try {
          const target = await supervisor.ensureRunning();
          const offset = await syncGuestClock(target, guestKey.privateKey);
          if (Math.abs(offset) > 2) log.info({ offsetS: Math.round(offset) }, 'set the guest clock (the host slept)');
        } catch (error) {
          log.warn({ err: error }, 'could not check the guest clock');
        }
        clock.checked();
      }
      return pool.open(request);
    },
  };

  const front = new SshFront({
    port: config.daemon.port,
    hostKeyPath: paths.daemonHostKey,
    authorizedKeys: authorizedKeys(config, clientKey.publicKey, log),
    guest: guestSource,
    logger: log,
    onSession: (record) => {
      status.sessionsTotal += 1;
      status.recent.push(record);
      if (status.recent.length > RECENT_SESSIONS) status.recent.shift();
    },
  });
  front.on('sessions', (open: number) => supervisor.sessionsChanged(open));
  const listening = await front.listen().catch((error: NodeJS.ErrnoException) => {
    throw new FerryError(`cannot listen on 127.0.0.1:${config.daemon.port}: ${error.message}`, {
      exitCode: ExitCode.Unavailable,
      hint: error.code === 'EADDRINUSE' ? 'another program (another ferry?) uses this port; set [daemon] port in ferry.toml' : undefined,
    });
  });
  writeDaemonSshConfig(paths, listening.port);
  log.info({ address: `${listening.host}:${listening.port}` }, 'SSH front listening');

  const statusReport = (): DaemonStatus => ({
    daemon: {
      pid: process.pid,
      version: VERSION,
      startedAt: startedAt.toISOString(),
      uptimeMs: Date.now() - startedAt.getTime(),
      listen: `${listening.host}:${listening.port}`,
      configFile: paths.configFile,
      logFile: paths.daemonLog,
      configError: status.configError,
      buildError: status.buildError,
      lastReloadAt: status.lastReloadAt,
    },
    guest: {
      ...supervisor.status(),
      system: config.guest.system,
      extraSystems: config.guest.extraSystems,
      interpreter: config.guest.interpreter,
    },
    sessions: { open: front.openSessions, total: status.sessionsTotal },
    recentSessions: status.recent.slice().reverse(),
  });

  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (reason: string) => {
    reloading = reloading.then(async () => {
      status.lastReloadAt = new Date().toISOString();
      let next: FerryConfig;
      try {
        next = await loadConfig(paths.configFile);
        status.configError = undefined;
      } catch (error) {
        status.configError = (error as Error).message;
        log.error({ err: error, file: paths.configFile }, 'the changed config is not valid; the running guest keeps serving with the previous one');
        return { outcome: 'config-error', error: status.configError };
      }
      if (next.daemon.port !== config.daemon.port) log.warn({ port: next.daemon.port }, 'a new port takes effect when the daemon restarts');
      config = next;
      // New logins use the new config's keys at once, whatever becomes of the image build.
      try {
        front.setAuthorizedKeys(authorizedKeys(config, clientKey.publicKey, log));
      } catch (error) {
        log.error({ err: error }, 'the changed config names an authorized key that is not valid; logins keep the previous keys');
      }
      log.info({ reason }, 'building the image for the new config');
      let manifest: ImageManifest;
      try {
        manifest = await buildImage({ config, paths });
        status.buildError = undefined;
      } catch (error) {
        status.buildError = (error as Error).message;
        log.error({ err: error }, 'the image build failed; the running guest keeps serving');
        return { outcome: 'build-error', error: status.buildError };
      }
      return supervisor.swapTo(manifest);
    });
    return reloading;
  };

  const control = new ControlServer(paths.controlSocket)
    .route('GET', '/status', async () => statusReport())
    .route('POST', '/start', async () => {
      await supervisor.start();
      return statusReport();
    })
    .route('POST', '/stop', async (query) => {
      await supervisor.stop({ hard: query.get('hard') === '1', reason: 'ferry stop' });
      return statusReport();
    })
    .route('POST', '/restart', async () => {
      await supervisor.stop({ reason: 'ferry restart' });
      await supervisor.start();
      return statusReport();
    })
    .route('POST', '/rebuild', async () => ({ result: await reload('requested'), status: statusReport() }));
  await control.listen();

  const watcher: FSWatcher = watch(paths.configFile, { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
  let debounce: NodeJS.Timeout | undefined;
  watcher.on('all', (event) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => void reload(`${paths.configFile} ${event}`), 300);
  });
  log.info('ready');

  await new Promise<void>((resolve) => {
    let stopping = false;
    const shutdown = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      clearTimeout(debounce);
      await watcher.close();
      await control.close();
      await front.close();
      await supervisor.stop({ reason: 'daemon shutdown' });
      await pool.close();
      clock.close();
      await rm(paths.daemonPid, { force: true });
      log.info('stopped');
      log.flush();
      resolve();
    };
    // `on`, not `once`: execa's signal-exit re-raises a signal that has no other listener left,
    // which would kill the daemon in the middle of its clean shutdown.
    process.on('SIGTERM', () => void shutdown('SIGTERM'));
    process.on('SIGINT', () => void shutdown('SIGINT'));
  });
}

/**
 * The image to run: the config's, built now (a cache hit when nothing changed). If that build
 * fails but an image ran before, that one keeps serving and the error shows in status.
 */
async function initialImages(paths: FerryPaths, config: FerryConfig, log: Logger): Promise<{ current: ImageManifest; previous?: ImageManifest }> {
  const saved = await loadSavedImages(paths);
  try {
    log.info('building the image (a cache hit when nothing changed)');
    const built = await buildImage({ config, paths, onStep: (step) => log.info(step) });
    const previous = saved.current && saved.current.id !== built.id ? saved.current : saved.previous;
    await saveImages(paths, built, previous);
    return { current: built, previous };
  } catch (error) {
    if (!saved.current) throw error;
    log.error({ err: error }, `the image build failed; using the image that ran before (${saved.current.id})`);
    return { current: saved.current, previous: saved.previous };
  }
}

async function loadSavedImages(paths: FerryPaths): Promise<{ current?: ImageManifest; previous?: ImageManifest }> {
  const text = await readFile(paths.currentImage, 'utf8').catch(() => undefined);
  if (!text) return {};
  const saved = JSON.parse(text) as SavedImages;
  const load = async (file?: string) =>
    file && existsSync(file) ? (JSON.parse(await readFile(file, 'utf8')) as ImageManifest) : undefined;
  return { current: await load(saved.current), previous: await load(saved.previous) };
}

async function saveImages(paths: FerryPaths, current: ImageManifest, previous: ImageManifest | undefined): Promise<void> {
  const saved: SavedImages = { current: current.manifestPath, previous: previous?.manifestPath };
  await writeFileAtomic(paths.currentImage, `${JSON.stringify(saved, null, 2)}\n`);
}

function authorizedKeys(config: FerryConfig, clientPublicKey: string, log: Logger): string[] {
  const keys = [clientPublicKey];
  for (const file of config.daemon.authorizedKeys) {
    try {
      keys.push(...readFileSync(file, 'utf8').split('\n').filter((line) => line.trim() && !line.startsWith('#')));
    } catch (error) {
      log.warn({ file, err: error }, 'cannot read an authorized-keys file from the config; skipping it');
    }
  }
  return keys;
}
