/**
 * The SSH front and forwarding against real OpenSSH on both sides: the OpenSSH client talks to
 * the front, and a real sshd (MaxSessions 2) plays the guest.
 */
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
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
