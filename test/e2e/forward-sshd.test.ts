/**
 * The SSH front and forwarding against real OpenSSH on both sides: the OpenSSH client talks to
 * the front, and a real sshd (MaxSessions 2) plays the guest.
 */
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestPool } from '../../src/daemon/guest-pool.js';
import type { SessionRecord } from '../../src/daemon/session-log.js';
import { SshFront } from '../../src/daemon/ssh-front.js';
import { sshKeygen, startSshd, type TestSshd } from '../support/sshd.js';

interface SshResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
}

interface SshOptions {
  input?: Buffer | string;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

/** Run the OpenSSH client asynchronously (the front lives in this process: never block it). */
function ssh(args: string[], options: SshOptions = {}): Promise<SshResult> {
  return sshWithChild(args, () => {}, options);
}

function sshWithChild(args: string[], onChild: (child: ChildProcessWithoutNullStreams) => void, options: SshOptions = {}): Promise<SshResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    onChild(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => (options.onStdout ? options.onStdout(d) : out.push(d)));
    child.stderr.on('data', (d: Buffer) => (options.onStderr ? options.onStderr(d) : err.push(d)));
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
    child.stdin.on('error', () => {});
    if (options.input !== undefined) child.stdin.end(options.input);
    else child.stdin.end();
  });
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('SSH front forwarding to a real sshd', () => {
  let sshd: TestSshd;
  let pool: GuestPool;
  let front: SshFront;
  let port: number;
  let clientKey: string;
  let otherKey: string;
  let knownHosts: string;
  const records: SessionRecord[] = [];

  const base = (key = clientKey) => [
    '-p', String(port), '-i', key, '-F', '/dev/null',
    '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'StrictHostKeyChecking=yes',
    '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=10',
  ];
  const run = (command: string, input?: Buffer | string) => ssh([...base(), '127.0.0.1', command], { input });

  beforeAll(async () => {
    sshd = await startSshd({ maxSessions: 2 });
    clientKey = path.join(sshd.dir, 'client_ed25519');
    sshKeygen(clientKey, 'host nix-daemon');
    otherKey = path.join(sshd.dir, 'other_ed25519');
    sshKeygen(otherKey, 'a stranger');
    pool = new GuestPool({
      target: async () => ({ host: '127.0.0.1', port: sshd.port, hostKey: sshd.hostKey }),
      privateKey: sshd.clientPrivateKey,
      username: sshd.user,
      idleExtraMs: 300,
    });
    front = new SshFront({
      port: 0,
      hostKey: ensureKeyPair(path.join(sshd.dir, 'front', 'ssh_host_ed25519_key'), 'test front').privateKey,
      authorizedKeys: [readFileSync(`${clientKey}.pub`, 'utf8')],
      guest: pool,
      onSession: (record) => records.push(record),
    });
    ({ port } = await front.listen());
    // Pin the front's persistent host key, as install does for Nix.
    knownHosts = path.join(sshd.dir, 'known_hosts');
    const frontKey = readFileSync(path.join(sshd.dir, 'front', 'ssh_host_ed25519_key.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ');
    writeFileSync(knownHosts, `[127.0.0.1]:${port} ${frontKey}\n`);
  });

  afterAll(async () => {
    await front?.close();
    await pool?.close();
    await sshd?.stop();
  });

  it('runs a command: stdout and exit status 0, and logs the session', async () => {
    const result = await run('echo hi');
    expect(result.stderr.toString()).toBe('');
    expect(result.stdout.toString()).toBe('hi\n');
    expect(result.code).toBe(0);
    const record = records.find((r) => r.command === 'echo hi');
    expect(record).toMatchObject({ kind: 'exec', bytesOut: 3, bytesErr: 0, exit: { kind: 'status', code: 0 } });
  });

  it('passes exit statuses and signals back', async () => {
    expect((await run('exit 3')).code).toBe(3);
    expect((await run('exit 0')).code).toBe(0);
    const killed = await run('kill -TERM $$');
    expect(killed.code).toBe(255); // how the OpenSSH client reports a remote signal
    expect(records.find((r) => r.command === 'kill -TERM $$')?.exit).toEqual({ kind: 'signal', signal: 'SIGTERM', coreDumped: false });
  });

  it('pipes 20 MB of stdin to the guest intact', async () => {
    const data = randomBytes(20 * 1024 * 1024);
    const result = await run('sha256sum', data);
    expect(result.code).toBe(0);
    expect(result.stdout.toString().split(' ')[0]).toBe(sha256(data));
    expect(records.find((r) => r.command === 'sha256sum')?.bytesIn).toBe(data.length);
  });

  it('delivers 50 MB of stdout and 50 MB of stderr, interleaved, whole, to a slow reader', async () => {
    // The guest makes 50 MB of random data per stream first and records their hashes, then
    // writes them alternately in 64 KiB blocks as fast as it can; the client side below reads in
    // bursts, so the channel window fills with stdout and stderr both waiting on it — the case
    // ssh2 1.17 stalls or duplicates data in without the serial writer.
    const sums = path.join(sshd.dir, 'interleaved');
    const size = 50 * 1024 * 1024;
    const script = [
      't=$(mktemp -d)',
      `head -c ${size} /dev/urandom > $t/out; head -c ${size} /dev/urandom > $t/err`,
      `sha256sum < $t/out > ${sums}.out; sha256sum < $t/err > ${sums}.err`,
      `perl -e 'open(O, "<", $ARGV[0]) or die; open(E, "<", $ARGV[1]) or die; $| = 1; select(STDERR); $| = 1; select(STDOUT);` +
        ` while (1) { $a = read(O, $o, 65536); $b = read(E, $e, 65536); last unless $a || $b; syswrite(STDOUT, $o) if $a; syswrite(STDERR, $e) if $b; }' $t/out $t/err`,
      'rm -r $t',
    ].join('\n');
    const out = createHash('sha256');
    const err = createHash('sha256');
    let outBytes = 0;
    let errBytes = 0;
    let sinceBreak = 0;
    let child: { stdout: NodeJS.ReadableStream; stderr: NodeJS.ReadableStream } | undefined;
    const slowDown = (n: number) => {
      sinceBreak += n;
      if (sinceBreak < 1024 * 1024 || child === undefined) return;
      sinceBreak = 0;
      const { stdout, stderr } = child;
      stdout.pause();
      stderr.pause();
      setTimeout(() => {
        stdout.resume();
        stderr.resume();
      }, 25);
    };
    const result = await sshWithChild([...base(), '127.0.0.1', script], (c) => (child = c), {
      onStdout: (d) => {
        out.update(d);
        outBytes += d.length;
        slowDown(d.length);
      },
      onStderr: (d) => {
        err.update(d);
        errBytes += d.length;
        slowDown(d.length);
      },
    });
    expect(result.code).toBe(0);
    expect(outBytes).toBe(size);
    expect(errBytes).toBe(size);
    expect(out.digest('hex')).toBe(readFileSync(`${sums}.out`, 'utf8').split(' ')[0]);
    expect(err.digest('hex')).toBe(readFileSync(`${sums}.err`, 'utf8').split(' ')[0]);
  }, 60_000);

  it('passes EOF both ways: cat ends when stdin closes', async () => {
    const result = await run('cat; echo done', 'abc\n');
    expect(result.stdout.toString()).toBe('abc\ndone\n');
    expect(result.code).toBe(0);
  });

  it('runs 8 sessions at once over several connections (guest MaxSessions 2), then closes the extra ones', async () => {
    let most = 0;
    const sample = setInterval(() => (most = Math.max(most, pool.connectionCount)), 20);
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => run(`sleep 1; echo session ${i}`)));
    clearInterval(sample);
    results.forEach((result, i) => {
      expect(result.stderr.toString()).toBe('');
      expect(result.stdout.toString()).toBe(`session ${i}\n`);
      expect(result.code).toBe(0);
    });
    expect(most).toBeGreaterThanOrEqual(4);
    await new Promise((r) => setTimeout(r, 1000));
    expect(pool.connectionCount).toBe(1);
    expect(front.openSessions).toBe(0);
  });

  it('runs a pty session', async () => {
    const result = await ssh([...base(), '-tt', '127.0.0.1', 'tty']);
    expect(result.stdout.toString()).toMatch(/^\/dev\/pts\/\d+\r?\n$/);
    expect(result.code).toBe(0);
    expect(records.find((r) => r.command === 'tty')?.pty).toBe(true);
  });

  it('refuses passwords, keyboard-interactive and unknown keys', async () => {
    const password = await ssh([...base(), '-o', 'PreferredAuthentications=password,keyboard-interactive', '-o', 'PubkeyAuthentication=no', '127.0.0.1', 'true']);
    expect(password.code).toBe(255);
    expect(password.stderr.toString()).toMatch(/Permission denied \(publickey\)/);
    const stranger = await ssh([...base(otherKey), '127.0.0.1', 'echo should not run']);
    expect(stranger.code).toBe(255);
    expect(stranger.stdout.toString()).toBe('');
    expect(stranger.stderr.toString()).toMatch(/Permission denied \(publickey\)/);
  });

  it('listens on loopback only (127.0.0.1 by default) and refuses any other address', async () => {
    const listening = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' }).trim().split('\n');
    expect(listening).toHaveLength(1);
    expect(listening[0]).toMatch(new RegExp(`\\s127\\.0\\.0\\.1:${port}\\s`));
    const others = Object.values(os.networkInterfaces())
      .flat()
      .filter((a) => a !== undefined && !a.internal && a.family === 'IPv4')
      .map((a) => a!.address);
    for (const address of others) {
      const error = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
        const socket = net.connect(port, address, () => {
          socket.destroy();
          resolve(undefined);
        });
        socket.once('error', resolve);
      });
      expect(error?.code, `connecting to ${address}:${port}`).toBe('ECONNREFUSED');
    }
    expect(() => new SshFront({ host: '0.0.0.0', hostKey: ensureKeyPair(path.join(sshd.dir, 'x'), 'test front').privateKey, authorizedKeys: [], guest: pool })).toThrow('the SSH front listens on a loopback address only (127.0.0.1 or ::1), not on 0.0.0.0');
  });

  it('tells the client the guest is unreachable instead of hanging', async () => {
    const unreachable = new SshFront({
      port: 0,
      hostKey: ensureKeyPair(path.join(sshd.dir, 'front', 'ssh_host_ed25519_key'), 'test front').privateKey,
      authorizedKeys: [readFileSync(`${clientKey}.pub`, 'utf8')],
      guest: new GuestPool({ target: async () => Promise.reject(new Error('the guest did not boot (test)')), privateKey: sshd.clientPrivateKey }),
    });
    const { port: otherPort } = await unreachable.listen();
    try {
      // A second front on the same key file presents the same, persistent host key.
      const pinned = readFileSync(knownHosts, 'utf8');
      writeFileSync(knownHosts, pinned + pinned.replace(`[127.0.0.1]:${port}`, `[127.0.0.1]:${otherPort}`));
      const args = base().map((a) => (a === String(port) ? String(otherPort) : a));
      const result = await ssh([...args, '127.0.0.1', 'true']);
      expect(result.code).toBe(255);
      expect(result.stderr.toString()).toContain('ferry: cannot reach the guest: the guest did not boot (test)');
    } finally {
      await unreachable.close();
    }
  });

  it('ends a session with status 255 and a readable message when the guest dies mid-session', async () => {
    let sawStart = false;
    const result = await ssh([...base(), '127.0.0.1', 'echo started; sleep 60'], {
      onStdout: (d) => {
        if (!sawStart && d.toString().includes('started')) {
          sawStart = true;
          sshd.killAll();
        }
      },
    });
    expect(sawStart).toBe(true);
    expect(result.code).toBe(255);
    expect(result.stderr.toString()).toMatch(/^ferry: the guest went away: /m);
    expect(front.openSessions).toBe(0);
  }, 30_000);
});

/**
 * ssh-ng's `nix-daemon --stdio` through the front, with the host's real Nix client on one side
 * and, playing the guest's, a real `nix-daemon` on a socket of its own (NIX_DAEMON_SOCKET_PATH)
 * behind the real sshd: the front connects the session to that socket instead of running the
 * command, and runs the command when the socket cannot be reached.
 */
describe("ssh-ng sessions to the guest's nix-daemon socket", () => {
  let sshd: TestSshd;
  let pool: GuestPool;
  let dir: string;
  let socketPath: string;
  let nixDaemon: ChildProcessWithoutNullStreams;
  let nixDaemonLog = '';
  let clientKey: string;
  let knownHosts: string;
  const records: SessionRecord[] = [];
  const fronts: SshFront[] = [];

  /** A front on its own port whose ssh-ng sessions go to `socket`; returns the ssh options to reach it. */
  const frontFor = async (socket: string) => {
    const front = new SshFront({
      port: 0,
      hostKey: ensureKeyPair(path.join(dir, 'front', 'ssh_host_ed25519_key'), 'test front').privateKey,
      authorizedKeys: [readFileSync(`${clientKey}.pub`, 'utf8')],
      guest: pool,
      nixDaemonSocket: socket,
      onSession: (record) => records.push(record),
    });
    fronts.push(front);
    const { port } = await front.listen();
    const hostKey = readFileSync(path.join(dir, 'front', 'ssh_host_ed25519_key.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ');
    writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostKey}\n`, { flag: 'a' });
    return [
      '-p', String(port), '-i', clientKey, '-F', '/dev/null', '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`,
      '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR',
    ];
  };
  /** The record of the session that ends after `count` records were in: the client may exit before the front has seen its session close. */
  const recordAfter = async (count: number) => {
    for (let i = 0; records.length <= count; i++) {
      if (i > 100) throw new Error('no session record came');
      await new Promise((r) => setTimeout(r, 50));
    }
    return records[count];
  };
  /** `nix store ping` over ssh-ng through the front: the host's Nix runs `ssh … nix-daemon --stdio`. */
  const storePing = (sshOptions: string[]) =>
    execa('nix', ['--extra-experimental-features', 'nix-command', 'store', 'ping', '--store', `ssh-ng://${sshd.user}@127.0.0.1`], {
      env: { NIX_SSHOPTS: sshOptions.join(' ') },
      reject: false,
      timeout: 60_000,
      stdin: 'ignore',
    });

  beforeAll(async () => {
    sshd = await startSshd();
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-nix-socket-'));
    clientKey = path.join(dir, 'client_ed25519');
    sshKeygen(clientKey, 'host nix-daemon');
    knownHosts = path.join(dir, 'known_hosts');
    pool = new GuestPool({
      target: async () => ({ host: '127.0.0.1', port: sshd.port, hostKey: sshd.hostKey }),
      privateKey: sshd.clientPrivateKey,
      username: sshd.user,
    });
    socketPath = path.join(dir, 'daemon-socket');
    nixDaemon = spawn('nix-daemon', [], { env: { ...process.env, NIX_DAEMON_SOCKET_PATH: socketPath }, stdio: ['pipe', 'pipe', 'pipe'] });
    nixDaemon.stdout.on('data', (d: Buffer) => (nixDaemonLog += d.toString()));
    nixDaemon.stderr.on('data', (d: Buffer) => (nixDaemonLog += d.toString()));
    for (let i = 0; !(await isListening(socketPath)); i++) {
      if (i > 100) throw new Error(`nix-daemon did not listen on ${socketPath}: ${nixDaemonLog}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(async () => {
    for (const front of fronts) await front.close();
    await pool?.close();
    await sshd?.stop();
    nixDaemon?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("connects nix-daemon --stdio to the socket: the host's Nix talks to the nix-daemon there, and the peer it sees is sshd, no process in between", async () => {
    const options = await frontFor(socketPath);
    const before = records.length;
    const result = await storePing(options);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/^Version: \d/m); // Nix 2.8 prints it on stderr
    expect(await recordAfter(before)).toMatchObject({ command: 'nix-daemon --stdio', via: 'nix-daemon-socket', exit: { kind: 'status', code: 0 } });
    // The nix-daemon names the process that connected: the connection's own sshd, still running for the pool.
    const peer = Number([...nixDaemonLog.matchAll(/accepted connection from pid (\d+), user root \(trusted\)/g)].at(-1)?.[1]);
    expect(readlinkSync(`/proc/${peer}/exe`)).toMatch(/\/sshd$/);
  });

  it("the nix-daemon hanging up first (a protocol mismatch) ends the session with status 1 and a line on stderr, as nix-daemon --stdio does", async () => {
    const options = await frontFor(socketPath);
    const before = records.length;
    // Anything but Nix's magic number, with stdin left open: the nix-daemon refuses the connection and closes it.
    const child = spawn('ssh', [...options, '127.0.0.1', 'nix-daemon --stdio'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.write(Buffer.alloc(8, 1));
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code).toBe(1);
    expect(stderr).toBe("ferry: the guest's nix-daemon closed the connection\n");
    expect(await recordAfter(before)).toMatchObject({ via: 'nix-daemon-socket', exit: { kind: 'status', code: 1 } });
  });

  it('runs nix-daemon --stdio as a command when the socket cannot be reached, and other commands as they are', async () => {
    const options = await frontFor(path.join(dir, 'no-such-socket'));
    let before = records.length;
    const result = await storePing(options);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/^Version: \d/m);
    expect(await recordAfter(before)).toMatchObject({ command: 'nix-daemon --stdio', via: 'exec', exit: { kind: 'status', code: 0 } });
    before = records.length;
    const other = await ssh([...options, '127.0.0.1', 'nix-daemon --version']);
    expect(other.stdout.toString()).toMatch(/^nix-daemon \(Nix\) /);
    expect(await recordAfter(before)).toMatchObject({ command: 'nix-daemon --version', via: 'exec' });
  });
});

function isListening(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
