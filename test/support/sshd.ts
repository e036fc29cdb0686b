/**
 * A real OpenSSH server on 127.0.0.1 standing in for the guest's sshd: its own host key, config
 * and authorized_keys in a temp dir, logging in as root (the test machine's only user with a
 * shell to spare). Used by the forwarding e2e tests and bench/forward.ts.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface TestSshd {
  readonly dir: string;
  readonly port: number;
  /** The sshd's host key, as an OpenSSH public key line. */
  readonly hostKey: string;
  /** The key that logs in to it (OpenSSH private key) and its public line. */
  readonly clientKeyPath: string;
  readonly clientPrivateKey: string;
  readonly user: string;
  readonly process: ChildProcess;
  /** SIGKILL the listener and every per-connection sshd under it: the guest vanishes. */
  killAll(): void;
  stop(): Promise<void>;
}

export function sshKeygen(file: string, comment: string): string {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  return readFileSync(`${file}.pub`, 'utf8').trim();
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function startSshd(options: { maxSessions?: number } = {}): Promise<TestSshd> {
  // sshd refuses to start without its privilege separation directory (Debian makes it at boot).
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-sshd-'));
  const hostKey = sshKeygen(path.join(dir, 'host_ed25519'), 'guest host key');
  const clientKeyPath = path.join(dir, 'guest_client_ed25519');
  const clientPublic = sshKeygen(clientKeyPath, 'guest client key');
  writeFileSync(path.join(dir, 'authorized_keys'), `${clientPublic}\n`, { mode: 0o600 });
  const port = await freePort();
  const config = [
    `ListenAddress 127.0.0.1`,
    `HostKey ${dir}/host_ed25519`,
    `AuthorizedKeysFile ${dir}/authorized_keys`,
    `PidFile ${dir}/sshd.pid`,
    'PermitRootLogin yes',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'StrictModes no',
    `MaxSessions ${options.maxSessions ?? 10}`,
    'MaxStartups 100:30:200',
    'AcceptEnv LANG LC_* FERRY_*',
    'PrintMotd no',
    'LogLevel ERROR',
  ].join('\n');
  writeFileSync(path.join(dir, 'sshd_config'), `${config}\n`);
  const child = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', path.join(dir, 'sshd_config'), '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  await waitForPort(port, child, () => log);

  // The whole tree is listed first, then killed parents first: a connection's sshd killed after
  // its command would report the command's SIGKILL as the session's exit, which a vanished guest
  // never does (seen as a flaky "guest went away" test).
  const tree = (pid: number): number[] => [pid, ...execPgrepChildren(pid).flatMap(tree)];
  const killTree = (pid: number) => {
    for (const each of tree(pid)) {
      try {
        process.kill(each, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  };
  return {
    dir,
    port,
    hostKey,
    clientKeyPath,
    clientPrivateKey: readFileSync(clientKeyPath, 'utf8'),
    user: 'root',
    process: child,
    killAll() {
      for (const pid of execPgrepChildren(child.pid!)) killTree(pid);
      child.kill('SIGKILL');
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function execPgrepChildren(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`sshd exited with ${child.exitCode}: ${log()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sshd did not listen on 127.0.0.1:${port} within 10 s: ${log()}`);
}
