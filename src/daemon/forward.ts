/**
 * Forward one SSH session from the front to the guest: the client's exec or shell request (with
 * its pty, environment, window changes and signals) is replayed on a guest channel from the
 * pool, and the bytes flow both ways with backpressure until the guest reports how the command
 * ended. If the guest cannot be reached or goes away, the client gets a readable message on
 * stderr and exit status 255 instead of a hang. ssh-ng's `nix-daemon --stdio` is connected to the
 * guest's nix-daemon socket instead of run (nix-daemon-socket.ts says why).
 */
import type { ClientChannel, PseudoTtyInfo, PseudoTtyOptions, ServerChannel, Session, WindowChangeInfo } from 'ssh2';
import { forgetResumedChunks, SerialChannelWriter } from './channel-writer.js';
import { NIX_DAEMON_SOCKET } from '../image/guest-os/stage2.js';
import { isChannelOpenFailure, type GuestChannelRequest, type GuestLease, type GuestSessionRequest } from './guest-pool.js';
import { isNixDaemonStdio, socketSessionStatus } from './nix-daemon-socket.js';
import { DISK_FULL_TEXT, OutputSpotter } from './output-spotter.js';
import { silentLogger, SessionMeter, type FrontLogger, type SessionExit, type SessionRecord } from './session-log.js';

/** What forwarding needs from the pool. */
export interface GuestChannelSource {
  open(request: GuestChannelRequest): Promise<GuestLease>;
}

export interface ForwardOptions {
  readonly pool: GuestChannelSource;
  readonly id: number;
  /** The login name the client gave; logged only (the guest user is the pool's). */
  readonly user: string;
  /** Called once when the session's command starts (exec or shell accepted). */
  readonly onStart?: (meter: SessionMeter) => void;
  /**
   * The line the client gets on stderr when the guest says "No space left on device" (the state
   * disk is full: the fix is in ferry.toml, which the guest's own message cannot name).
   */
  readonly diskFullNote?: () => string;
  /** Where ssh-ng's `nix-daemon --stdio` sessions are connected: the guest's nix-daemon socket unless told otherwise (tests). */
  readonly nixDaemonSocket?: string;
  readonly logger?: FrontLogger;
}

/** The exit status a client sees when ferry, not the command, ended the session (like ssh's own 255). */
export const FORWARD_FAILURE_STATUS = 255;

/**
 * Handle every request of `session` (a freshly accepted front session channel). Resolves with the
 * session's record once it closed, or undefined if the client never ran anything in it.
 */
export function forwardSession(session: Session, options: ForwardOptions): Promise<SessionRecord | undefined> {
  return new Promise((resolve) => {
    let pty: PseudoTtyInfo | undefined;
    let window: WindowChangeInfo | undefined;
    const env: Record<string, string> = {};
    let guest: ClientChannel | undefined;
    let started = false;

    session.on('pty', (accept, _reject, info) => {
      pty = info;
      accept?.();
    });
    // Passed on; the guest's sshd applies its AcceptEnv.
    session.on('env', (accept, _reject, info) => {
      env[info.key] = info.val;
      accept?.();
    });
    session.on('window-change', (accept, _reject, info) => {
      window = info;
      guest?.setWindow(info.rows, info.cols, info.height, info.width);
      accept?.();
    });
    session.on('signal', (accept, reject, info) => {
      if (guest === undefined) return reject?.();
      try {
        guest.signal(info.name);
        accept?.();
      } catch {
        reject?.(); // a name ssh2 does not know
      }
    });

    const begin = (kind: 'exec' | 'shell', front: ServerChannel | undefined, command?: string) => {
      if (front === undefined) return;
      started = true;
      const meter = new SessionMeter(options.id, options.user, kind, command, pty !== undefined);
      options.onStart?.(meter);
      const request: GuestSessionRequest = { kind, command, pty: pty === undefined ? undefined : ptyOptions(pty, window), env };
      run(front, request, meter, options, (channel) => (guest = channel)).then(resolve, (error: unknown) =>
        resolve(meter.finish({ kind: 'error', message: `internal error: ${String(error)}` })),
      );
    };
    session.once('exec', (accept, _reject, info) => begin('exec', accept(), info.command));
    session.once('shell', (accept) => begin('shell', accept()));
    session.once('close', () => {
      if (!started) resolve(undefined);
    });
  });
}

function ptyOptions(info: PseudoTtyInfo, window: WindowChangeInfo | undefined): PseudoTtyOptions {
  const size = window ?? info;
  const modes = (info as { modes?: PseudoTtyOptions['modes'] }).modes;
  return { term: info.term, rows: size.rows, cols: size.cols, width: size.width, height: size.height, modes: modes ?? undefined };
}

async function run(
  front: ServerChannel,
  request: GuestSessionRequest,
  meter: SessionMeter,
  options: ForwardOptions,
  onGuest: (channel: ClientChannel) => void,
): Promise<SessionRecord> {
  const { diskFullNote } = options;
  const newline = request.pty === undefined ? '\n' : '\r\n';
  const writer = new SerialChannelWriter(front, { afterEachWrite: () => forgetResumedChunks(front) });
  let frontClosed = false;
  front.once('close', () => {
    frontClosed = true;
    writer.discard();
  });
  // A client that vanishes makes writes fail; the session record says what happened.
  writer.on('error', () => {});
  front.on('error', () => {});
  front.stderr.on('error', () => {});

  const giveUp = async (message: string): Promise<SessionRecord> => {
    if (!frontClosed) {
      writer.write('stderr', Buffer.from(`ferry: ${message}${newline}`));
      await writer.whenIdle();
      front.exit(FORWARD_FAILURE_STATUS);
      front.end();
    }
    return meter.finish({ kind: 'error', message });
  };

  let lease: GuestLease;
  try {
    lease = await openGuest(request, meter, options);
  } catch (error) {
    return giveUp(`cannot reach the guest: ${messageOf(error)}`);
  }
  const guest = lease.channel;
  meter.markReady();
  if (frontClosed) {
    guest.close();
    return meter.finish({ kind: 'error', message: 'the client left before the guest was ready' });
  }
  onGuest(guest);
  const piped = pipe(front, guest, writer, meter, diskFullNote && (() => noteLine(request, `ferry: ${diskFullNote()}`, newline)));
  // A socket that ends its output is done (the forwarder exits then too): ending ours closes the
  // channel, where a session's channel closes when its process exits.
  if (meter.via === 'nix-daemon-socket') guest.once('end', () => guest.end());
  await new Promise<void>((resolve) => guest.once('close', () => resolve()));

  const exit = piped.exit() ?? (meter.via === 'nix-daemon-socket' && lease.lostReason() === undefined ? socketExit(piped.clientEnded(), writer, newline) : undefined);
  if (frontClosed) return meter.finish(exit ?? { kind: 'error', message: 'the client went away' });
  // Everything the guest sent must reach the client before the exit status and EOF.
  if (lease.lostReason() === undefined) await piped.stderrEnded;
  await writer.whenIdle();
  if (frontClosed) return meter.finish(exit ?? { kind: 'error', message: 'the client went away' });

  if (exit === undefined) {
    const lost = lease.lostReason();
    return giveUp(lost === undefined ? 'the guest closed the session without an exit status' : `the guest went away: ${lost.message}`);
  }
  sendExit(front, exit);
  // ssh2 drops an exit status sent after EOF, so EOF goes here, after the exit, with the close.
  front.end();
  return meter.finish(exit);
}

/**
 * The guest side of a session: ssh-ng's nix-daemon session connected to the guest's nix-daemon
 * socket, or, for every other request — and should the guest refuse that channel (its sshd
 * forbids socket forwarding, its nix-daemon is not listening) — the request run by its sshd, so
 * that the guest's own nix-daemon --stdio says what is wrong.
 */
async function openGuest(request: GuestSessionRequest, meter: SessionMeter, { pool, nixDaemonSocket = NIX_DAEMON_SOCKET, logger = silentLogger }: ForwardOptions): Promise<GuestLease> {
  if (isNixDaemonStdio(request)) {
    try {
      const lease = await pool.open({ kind: 'socket', socketPath: nixDaemonSocket });
      meter.via = 'nix-daemon-socket';
      return lease;
    } catch (error) {
      if (!isChannelOpenFailure(error)) throw error;
      logger.debug({ session: meter.id, socket: nixDaemonSocket, error: messageOf(error) }, "the guest refused a channel to its nix-daemon socket; running nix-daemon --stdio instead");
    }
  }
  return pool.open(request);
}

/**
 * How a session connected to the nix-daemon socket ended (a socket has no exit status): as
 * `nix-daemon --stdio` would have, with its message when the guest's nix-daemon hung up first.
 */
function socketExit(clientEnded: boolean, writer: SerialChannelWriter, newline: string): SessionExit {
  const code = socketSessionStatus(clientEnded);
  if (code !== 0) writer.write('stderr', Buffer.from(`ferry: the guest's nix-daemon closed the connection${newline}`));
  return { kind: 'status', code };
}

/**
 * The bytes of a running session, both ways, with backpressure: guest stdout and stderr through
 * the client's one writer, client stdin to the guest, EOF passed on. Returns when the guest's
 * stderr ended and, once the guest channel closed, how the command ended (if the guest said).
 */
function pipe(
  front: ServerChannel,
  guest: ClientChannel,
  writer: SerialChannelWriter,
  meter: SessionMeter,
  diskFullLine?: () => string,
): { stderrEnded: Promise<void>; exit: () => SessionExit | undefined; clientEnded: () => boolean } {
  guest.on('error', () => {});
  guest.stderr.on('error', () => {});

  // Guest → client: one writer for both streams; pause the guest while the client is slow.
  const pauseGuest = () => {
    guest.pause();
    guest.stderr.pause();
  };
  const resumeGuest = () => {
    guest.resume();
    guest.stderr.resume();
  };
  writer.on('drain', resumeGuest);
  // The client is gone; keep reading so the guest side can finish and close.
  writer.on('error', resumeGuest);
  // The disk-full line goes out right after the guest's own message (on either stream: ssh-ng
  // carries build errors in its protocol on stdout), while the client still shows what comes.
  const spotters = { stdout: new OutputSpotter(DISK_FULL_TEXT), stderr: new OutputSpotter(DISK_FULL_TEXT) };
  let noted = false; // once per session
  const fromGuest = (stream: 'stdout' | 'stderr', data: Buffer) => {
    if (stream === 'stdout') meter.bytesOut += data.length;
    else meter.bytesErr += data.length;
    let more = writer.write(stream, data);
    if (diskFullLine && !noted && spotters[stream].feed(data)) {
      noted = true;
      more = writer.write('stderr', Buffer.from(diskFullLine())) && more;
    }
    if (!more) pauseGuest();
  };
  guest.on('data', (data: Buffer) => fromGuest('stdout', data));
  guest.stderr.on('data', (data: Buffer) => fromGuest('stderr', data));
  const stderrEnded = new Promise<void>((resolve) => guest.stderr.once('end', resolve));

  // Client → guest: stdin, paused while the guest's window is full; EOF passed on.
  front.on('data', (data: Buffer) => {
    meter.bytesIn += data.length;
    if (!guest.write(data)) front.pause();
  });
  guest.on('drain', () => front.resume());
  let clientEnded = false;
  front.once('end', () => {
    clientEnded = true;
    guest.end();
  });
  front.once('close', () => guest.close());

  let exit: SessionExit | undefined;
  guest.on('exit', (code: number | null, signal?: string, coreDumped?: boolean) => {
    exit = code === null || code === undefined ? { kind: 'signal', signal: signal ?? 'SIGKILL', coreDumped: coreDumped === true } : { kind: 'status', code };
  });
  return { stderrEnded, exit: () => exit, clientEnded: () => clientEnded };
}

/** The command's exit status or signal, as the guest reported it, to the client. */
function sendExit(front: ServerChannel, exit: SessionExit): void {
  if (exit.kind === 'status') {
    front.exit(exit.code);
  } else if (exit.kind === 'signal') {
    try {
      front.exit(exit.signal, exit.coreDumped, '');
    } catch {
      front.exit(FORWARD_FAILURE_STATUS); // a signal name ssh2 cannot send
    }
  }
}

/**
 * A line for the client's stderr in the middle of a session. Nix's ssh-ng client shows nothing
 * of ssh's stderr once a build runs, except Nix's own JSON log lines ("@nix {…}", as
 * `nix-daemon --stdio` itself would send with --log-format internal-json): ferry's note takes
 * that form there, and stays a plain line for every other command.
 */
function noteLine(request: GuestSessionRequest, text: string, newline: string): string {
  if (request.command?.startsWith('nix-daemon ')) return `@nix ${JSON.stringify({ action: 'msg', level: 0, msg: text })}\n`;
  return `${text}${newline}`;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
