/**
 * The guest pool's handshake bound (`[daemon] ssh-timeout`): a real ssh2 client, through the
 * pool, against a real local TCP server that accepts and never speaks SSH — what a guest whose
 * sshd hangs looks like. Time is vitest's fake clock, so the 20 s default is checked as it is,
 * to the millisecond, in no real time.
 */
import net, { type AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DEFAULTS } from '../../src/config/defaults.js';
import { GuestPool } from '../../src/daemon/guest-pool.js';

/** A TCP server that accepts connections and sends nothing (not even an SSH version line). */
async function silentServer(): Promise<{ port: number; accepted: Promise<void>; close: () => Promise<void> }> {
  const sockets: net.Socket[] = [];
  let onAccept!: () => void;
  const accepted = new Promise<void>((resolve) => (onAccept = resolve));
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => {});
    onAccept();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    accepted,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe('guest pool handshake timeout', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('gives up on a guest that accepts TCP and never speaks SSH, at the ssh-timeout bound', async () => {
    const server = await silentServer();
    const key = ssh2.utils.generateKeyPairSync('ed25519');
    const hostKey = ssh2.utils.generateKeyPairSync('ed25519');
    const pool = new GuestPool({
      target: async () => ({ host: '127.0.0.1', port: server.port, hostKey: hostKey.public }),
      privateKey: key.private,
      handshakeTimeoutMs: () => DEFAULTS.sshTimeoutMs,
    });
    try {
      let outcome: Error | 'opened' | undefined;
      pool.open({ kind: 'exec', command: 'true' }).then(
        () => (outcome = 'opened'),
        (error: Error) => (outcome = error),
      );
      await server.accepted; // the client is connected and its clock is running

      await vi.advanceTimersByTimeAsync(DEFAULTS.sshTimeoutMs - 1);
      expect(outcome).toBeUndefined(); // still waiting, one millisecond before the bound
      await vi.advanceTimersByTimeAsync(1);
      expect(outcome).toBeInstanceOf(Error);
      expect((outcome as Error).message).toBe(
        `the guest's sshd at 127.0.0.1:${server.port} did not finish the SSH handshake within 20 s ([daemon] ssh-timeout)`,
      );
      expect(((outcome as Error).cause as Error).message).toBe('Timed out while waiting for handshake');
      expect(pool.connectionCount).toBe(0); // the dead connection is not kept for the next session
    } finally {
      await pool.close();
      await server.close();
    }
  });

  it('the bound is the configured one, asked for at each connection', async () => {
    const server = await silentServer();
    let bound = 1500;
    const pool = new GuestPool({
      target: async () => ({ host: '127.0.0.1', port: server.port, hostKey: ssh2.utils.generateKeyPairSync('ed25519').public }),
      privateKey: ssh2.utils.generateKeyPairSync('ed25519').private,
      handshakeTimeoutMs: () => bound,
    });
    try {
      bound = 3000; // a changed config before the first connection
      let failedAt: number | undefined;
      const started = Date.now();
      pool.open({ kind: 'shell' }).catch(() => (failedAt = Date.now()));
      await server.accepted;
      await vi.advanceTimersByTimeAsync(2999);
      expect(failedAt).toBeUndefined();
      await vi.advanceTimersByTimeAsync(1);

      expect(failedAt! - started).toBe(3000);
    } finally {
      await pool.close();
      await server.close();
    }
  });
});
