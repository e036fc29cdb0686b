/**
 * The daemon's SSH forwarding against going straight to the guest's sshd (issue 4, "Speed"),
 * side by side in one run, with a real OpenSSH sshd on 127.0.0.1 standing in for the guest
 * (test/support/sshd.ts) and the real OpenSSH client on both paths.
 *
 *   node --import tsx bench/forward.ts [--size 1G] [--runs 3] [--latency-runs 20] [--json]
 *
 * - throughput, each way: `head -c SIZE /dev/zero | ssh … 'cat > /dev/null'` (upload) and
 *   `ssh … 'head -c SIZE /dev/zero' > /dev/null` (download), piped by sh so this process only
 *   runs the front; median wall time of N runs → MB/s; targets: front ≥ 0.8× direct;
 * - latency: `ssh … true`, median of N → ratio (target ≤ 1.2×) and added milliseconds.
 * The front runs in this process, with the Node flags of the daemon's service (DAEMON_NODE_FLAGS;
 * the script re-runs itself with them). The two paths alternate within each round so the shared
 * machine's noise hits both alike. One
 * untimed warm-up per path first (the front's pool connects to the guest then, as it would have
 * long before in the daemon: the guest is up).
 */
import { ensureKeyPair } from '../src/keys/ssh-keys.js';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { GuestPool } from '../src/daemon/guest-pool.js';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.js';
import { SshFront } from '../src/daemon/ssh-front.js';
import { sshKeygen, startSshd } from '../test/support/sshd.js';

// The front runs in this process: give it the Node flags the daemon's service runs with.
if (!DAEMON_NODE_FLAGS.every((flag) => process.execArgv.includes(flag))) {
  const rerun = spawnSync(process.execPath, [...DAEMON_NODE_FLAGS, ...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(rerun.status ?? 1);
}

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '1G' },
    runs: { type: 'string', default: '3' },
    'latency-runs': { type: 'string', default: '20' },
    json: { type: 'boolean', default: false },
  },
});
const size = values.size!;
const sizeBytes = parseSize(size);
const runs = Number(values.runs);
const latencyRuns = Number(values['latency-runs']);

function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)$/.exec(text);
  if (!match) throw new Error(`--size ${text}: expected a number with an optional K, M or G suffix (like head -c)`);
  return Number(match[1]) * 1024 ** ' KMG'.indexOf(match[2] || ' ');
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function sh(command: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`${command} → exit ${code}: ${stderr}`))));
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

const sshd = await startSshd({ maxSessions: 10 });
const work = mkdtempSync(join(tmpdir(), 'ferry-bench-forward-'));
const clientKey = join(work, 'client_ed25519');
const clientPublic = sshKeygen(clientKey, 'bench client');
const pool = new GuestPool({
  target: async () => ({ host: '127.0.0.1', port: sshd.port, hostKey: sshd.hostKey }),
  privateKey: sshd.clientPrivateKey,
  username: sshd.user,
});
const front = new SshFront({ port: 0, hostKey: ensureKeyPair(join(work, 'front_host_ed25519'), 'test front').privateKey, authorizedKeys: [clientPublic], guest: pool });
const { port: frontPort } = await front.listen();
const frontHostKey = readFileSync(join(work, 'front_host_ed25519.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ');
const guestHostKey = sshd.hostKey.split(' ').slice(0, 2).join(' ');
const knownHosts = join(work, 'known_hosts');
writeFileSync(knownHosts, `[127.0.0.1]:${frontPort} ${frontHostKey}\n[127.0.0.1]:${sshd.port} ${guestHostKey}\n`);

const common = `-F /dev/null -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=yes -o UserKnownHostsFile=${knownHosts}`;
const paths = {
  direct: `ssh ${common} -p ${sshd.port} -i ${sshd.clientKeyPath} root@127.0.0.1`,
  front: `ssh ${common} -p ${frontPort} -i ${clientKey} 127.0.0.1`,
} as const;
type PathName = keyof typeof paths;
const names: PathName[] = ['direct', 'front'];

const upload = (p: PathName) => sh(`head -c ${sizeBytes} /dev/zero | ${paths[p]} ${quote('cat > /dev/null')}`);
const download = (p: PathName) => sh(`${paths[p]} ${quote(`head -c ${sizeBytes} /dev/zero`)} > /dev/null`);
const latency = (p: PathName) => sh(`${paths[p]} true`);

const times: Record<'upload' | 'download' | 'latency', Record<PathName, number[]>> = {
  upload: { direct: [], front: [] },
  download: { direct: [], front: [] },
  latency: { direct: [], front: [] },
};

try {
  for (const p of names) await latency(p); // warm-up: the front's pool connects here
  for (let round = 0; round < latencyRuns; round++) {
    for (const p of round % 2 ? [...names].reverse() : names) times.latency[p].push(await latency(p));
  }
  for (let round = 0; round < runs; round++) {
    for (const p of round % 2 ? [...names].reverse() : names) {
      times.upload[p].push(await upload(p));
      times.download[p].push(await download(p));
    }
  }
} finally {
  await front.close();
  await pool.close();
  await sshd.stop();
  rmSync(work, { recursive: true, force: true });
}

const mbps = (ms: number) => sizeBytes / 1e6 / (ms / 1000);
const result = {
  size,
  runs,
  latencyRuns,
  machine: { cpus: cpus().length, load: loadavg().map((l) => Math.round(l * 100) / 100) },
  upload: { directMBps: mbps(median(times.upload.direct)), frontMBps: mbps(median(times.upload.front)) },
  download: { directMBps: mbps(median(times.download.direct)), frontMBps: mbps(median(times.download.front)) },
  latency: { directMs: median(times.latency.direct), frontMs: median(times.latency.front) },
  raw: times,
};
const ratios = {
  upload: result.upload.frontMBps / result.upload.directMBps,
  download: result.download.frontMBps / result.download.directMBps,
  latency: result.latency.frontMs / result.latency.directMs,
  addedMs: result.latency.frontMs - result.latency.directMs,
};

if (values.json) {
  console.log(JSON.stringify({ ...result, ratios }, null, 2));
} else {
  const row = (what: string, direct: string, viaFront: string, ratio: string, target: string, ok: boolean) =>
    `${what.padEnd(22)}${direct.padStart(12)}${viaFront.padStart(12)}${ratio.padStart(9)}   ${target.padEnd(8)} ${ok ? 'ok' : 'MISSED'}`;
  console.log(`SSH forwarding, ${size} each way, median of ${runs} (latency: median of ${latencyRuns}); ${result.machine.cpus} CPUs, load ${result.machine.load.join(' ')}`);
  console.log(`${''.padEnd(22)}${'direct'.padStart(12)}${'via front'.padStart(12)}${'ratio'.padStart(9)}   target`);
  console.log(row('upload (cat>/dev/null)', `${result.upload.directMBps.toFixed(0)} MB/s`, `${result.upload.frontMBps.toFixed(0)} MB/s`, `${ratios.upload.toFixed(2)}×`, '≥ 0.8×', ratios.upload >= 0.8));
  console.log(row('download (head -c)', `${result.download.directMBps.toFixed(0)} MB/s`, `${result.download.frontMBps.toFixed(0)} MB/s`, `${ratios.download.toFixed(2)}×`, '≥ 0.8×', ratios.download >= 0.8));
  console.log(row('latency (ssh … true)', `${result.latency.directMs.toFixed(0)} ms`, `${result.latency.frontMs.toFixed(0)} ms`, `${ratios.latency.toFixed(2)}×`, '≤ 1.2×', ratios.latency <= 1.2));
  console.log(`added latency: ${ratios.addedMs.toFixed(1)} ms`);
}
