import { describe, expect, it } from 'vitest';
import { isNixDaemonStdio, socketSessionStatus } from '../../src/daemon/nix-daemon-socket.js';

describe("which sessions go to the guest's nix-daemon socket", () => {
  it("is ssh-ng's own command, as OpenSSH sends it (spacing aside), without a pty", () => {
    expect(isNixDaemonStdio({ kind: 'exec', command: 'nix-daemon --stdio' })).toBe(true);
    expect(isNixDaemonStdio({ kind: 'exec', command: ' nix-daemon  --stdio ' })).toBe(true);
  });

  it('runs anything else as it is: other programs, other arguments, a pty, a shell', () => {
    for (const command of ['nix-store --serve --write', 'nix-daemon --stdio --store /x', '/nix/store/abc-nix/bin/nix-daemon --stdio', 'nix-daemon', 'nix-daemon --stdio; id', 'exec nix-daemon --stdio']) {
      expect(isNixDaemonStdio({ kind: 'exec', command }), command).toBe(false);
    }
    expect(isNixDaemonStdio({ kind: 'exec', command: 'nix-daemon --stdio', pty: { term: 'xterm', rows: 24, cols: 80, width: 0, height: 0 } })).toBe(false);
    expect(isNixDaemonStdio({ kind: 'shell' })).toBe(false);
  });

  it('ends as nix-daemon --stdio would: 0 when the client ended first, 1 when the nix-daemon hung up', () => {
    expect(socketSessionStatus(true)).toBe(0);
    expect(socketSessionStatus(false)).toBe(1);
  });
});
