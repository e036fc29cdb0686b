/**
 * ssh-ng's remote command is `nix-daemon --stdio`: in the guest that starts a process which
 * connects to the guest's nix-daemon socket as the builder and copies bytes both ways until
 * its stdin ends (Nix's `forwardStdioConnection`). One such process per build, and under tcg its
 * start alone — a dynamically linked C++ program with a dozen libraries — costs ~0.45 s of
 * emulated CPU, about as much as the build itself (measured here: 10 sessions through the pooled
 * connection, the Nix handshake and close, 0.57 s of qemu CPU each with the exec, 0.13 s each
 * connected to the socket).
 *
 * So the front connects such a session to that socket itself, over the pooled connection (a
 * direct-streamlocal channel, which the builder's sshd process connects: the guest's nix-daemon
 * sees the builder as its peer, as it saw the forwarder, and trusts it the same). Only the exact
 * command, without a pty: any other command — another `remote-program`, `--store`, the ssh://
 * protocol's `nix-store --serve` — runs as it is.
 */
import type { GuestSessionRequest } from './guest-pool.js';

/** The command Nix's ssh-ng store runs on the remote side (its default `remote-program` with `--stdio`). */
export const NIX_DAEMON_STDIO = 'nix-daemon --stdio';

/** Whether `request` is ssh-ng's nix-daemon session, which the front connects to the daemon socket. */
export function isNixDaemonStdio(request: GuestSessionRequest): boolean {
  return request.kind === 'exec' && request.pty === undefined && request.command?.trim().split(/\s+/).join(' ') === NIX_DAEMON_STDIO;
}

/**
 * How a socket session ended, as `nix-daemon --stdio` would have ended: 0 when the client ended
 * its input first (the normal end: Nix closes the connection), 1 when the guest's nix-daemon
 * closed it first (the forwarder's "unexpected EOF from daemon socket").
 */
export function socketSessionStatus(clientEnded: boolean): number {
  return clientEnded ? 0 : 1;
}
