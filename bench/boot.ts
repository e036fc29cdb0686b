/**
 * Boot time: ferry's guest against the same Debian rootfs booted by its own systemd (issue 3,
 * "Speed"), side by side in one run, under the same qemu binary, accelerator, vCPUs, memory,
 * kernel and ferry's initramfs.
 *
 *   node --import tsx bench/boot.ts [--runs 3] [--accel tcg] [--json] [--save FILE] [--keep]
 *
 * - ferry: the `debian` preset image from `buildImage` (downloads and images cached in
 *   ~/.cache/ferry-test/ferry-cache, keys in a temp state dir), booted with the qemu argv that
 *   ferry's backend builds (`guestVmSpec` + `buildQemuArgv`).
 * - systemd: mmdebstrap's rootfs with the same packages plus `systemd-sysv` (cached under
 *   ~/.cache/ferry-test/rootfs/<hash of argv>/, beside the tests' rootfs), written to ext4 by ferry's writer with a
 *   static network (systemd-networkd, enabled), a fixed machine-id (no first-boot work), a pinned
 *   sshd host key and a `builder` user with the same key. Booted with ferry's initramfs and
 *   `ferry.init=/lib/systemd/systemd` (stage 1 hands over to systemd instead of busybox init), so
 *   the only difference from ferry's boot is what runs after switch_root.
 *
 * Per boot, from spawning qemu: the console lines that mark readiness (FERRY-READY; systemd's
 * "Started ssh.service" and "Reached target multi-user.target") and the first `ssh … true` as
 * builder that succeeds (real OpenSSH, a new attempt 100 ms after each failed one — or 1 s after
 * the start of one that still hangs — from qemu's start on). Both guests get a fresh copy of the same empty state disk (vdb) every boot, and are
 * killed once measured. The two alternate within each round so the shared machine's load hits
 * both alike; the table shows medians.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config/load.js';
import { resolvePaths, type FerryPaths } from '../src/config/paths.js';
import { buildImage } from '../src/image/build.js';
import { imageCmdline, type ImageManifest } from '../src/image/manifest.js';
import { ferryKeys } from '../src/keys/ferry-keys.js';
import { writeExt4 } from '../src/image/ext4/index.js';
import { OVERLAY_DIR } from '../src/image/guest-os/stage1.js';
import { writeGzippedCpio } from '../src/image/initramfs/index.js';
import { TarLayer } from '../src/image/layers/tar.js';
import { DEBIAN_PACKAGES, DEBIAN_SUITE } from '../src/image/presets/debian.js';
import { cachedMmdebstrap } from '../src/image/presets/mmdebstrap.js';
import { ensureStateDisk } from '../src/image/state-disk.js';
import { Tree, type Inode } from '../src/image/tree.js';
import type { VmSpec } from '../src/vm/backend.js';
import { FileTail } from '../src/vm/console.js';
import { freePort } from '../src/vm/free-port.js';
import type { QemuAccelerator } from '../src/vm/facts.js';
import { guestCmdline } from '../src/vm/instance/spec.js';
import { buildQemuArgv } from '../src/vm/qemu.js';
import { fixtureCacheRoot } from '../test/support/fixtures.js';
import { readContent } from '../test/support/tree-content.js';

const TARGET_RATIO = 0.4;
const CACHE = fixtureCacheRoot();
const QEMU = 'qemu-system-x86_64';
const BUILDER_UID = 1000;
/** A boot that has not answered ssh by then is a failure, not a slow sample. */
const BOOT_TIMEOUT_MS = 300_000;
/** Early attempts hang (see firstSsh); this many may be under way at once. */
const MAX_SSH_IN_FLIGHT = 8;
/** After the first ssh, how long to wait for readiness lines that come later (systemd's targets). */
const MARKER_GRACE_MS = 30_000;

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    accel: { type: 'string', default: 'tcg' },
    json: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    save: { type: 'string' },
  },
});
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) fail(`--runs: expected a whole number ≥ 1, got ${JSON.stringify(values.runs)}`);
const accel = values.accel as QemuAccelerator;
if (!['tcg', 'kvm'].includes(accel)) fail(`--accel: expected tcg or kvm, got ${JSON.stringify(values.accel)}`);
const log = (line: string) => process.stderr.write(`${line}\n`);

type GuestKind = 'ferry' | 'systemd';

/** A console line that marks a stage of the boot, and its name in the results. */
interface Marker {
  name: string;
  pattern: RegExp;
}

const MARKERS: Record<GuestKind, Marker[]> = {
  ferry: [{ name: 'FERRY-READY', pattern: /FERRY-READY/ }],
  systemd: [
    // systemd prints its status lines on the console unless `quiet` is on the command line.
    { name: 'Started ssh.service', pattern: /Started .*ssh\.service/ },
    { name: 'Reached multi-user.target', pattern: /Reached target .*multi-user\.target/ },
    { name: 'Reached graphical.target', pattern: /Reached target .*graphical\.target/ },
  ],
};

interface SshAttempt {
  startMs: number;
  /** null: still running when another attempt succeeded (then killed). */
  endMs: number | null;
  /** 'ok', or the last line ssh printed on stderr. */
  result: string;
}

interface BootSample {
  guest: GuestKind;
  round: number;
  /** ms from spawning qemu to the first successful `ssh … true`. */
  firstSshMs: number;
  /**
   * qemu's CPU time (user + system, all threads) when the first ssh succeeded: the work the boot
   * took, much less disturbed by other load on a shared machine than wall time (an idle vCPU
   * sleeps under tcg too). Includes qemu's own start-up and the ssh attempts' networking.
   */
  qemuCpuMs: number;
  sshAttempts: SshAttempt[];
  /** ms of one more `ssh … true` right after the first success: the cost of a login itself. */
  secondSshMs: number;
  /** ms from spawning qemu to each marker line as the host saw it (console file polled every 20 ms). */
  markers: Record<string, number | null>;
  /** ferry: the guest's own uptime in FERRY-READY (from the kernel's start, not qemu's). */
  guestUptimeMs?: number;
  /**
   * systemd: the kernel timestamp of systemd's first message on the console, i.e. about when
   * stage 1 handed over — the part both boots share (firmware aside) ends there.
   */
  handoverUptimeMs?: number;
}

interface BootInput {
  kind: GuestKind;
  kernel: string;
  initrd: string;
  cmdline: string;
  systemDisk: string;
}

function fail(message: string): never {
  process.stderr.write(`bench/boot: ${message}\n`);
  process.exit(2);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

function checkPrerequisites(): void {
  for (const [tool, pkg] of [[QEMU, 'qemu-system-x86'], ['ssh', 'openssh-client'], ['ssh-keygen', 'openssh-client'], ['mmdebstrap', 'mmdebstrap']] as const) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) fail(`${tool} not found on PATH (Debian package ${pkg})`);
  }
}

// ---------------------------------------------------------------------------------------------
// The systemd reference image

/**
 * mmdebstrap's arguments for the reference: ferry's debian preset packages plus systemd as init,
 * with what a default `apt install systemd-sysv` on a standard system has beside it: udev
 * (without it no .device unit ever appears — systemd waits 90 s for dev-ttyS0.device — and
 * networkd never configures the link) and dbus (systemd's recommended system bus).
 */
export function systemdRootfsArgv(): string[] {
  return ['--variant=essential', `--include=${[...DEBIAN_PACKAGES, 'systemd-sysv', 'udev', 'dbus'].join(',')}`, '--architectures=amd64', DEBIAN_SUITE];
}

/** The reference rootfs tarball, through the debian preset's cache (keyed by the mmdebstrap argv). */
async function systemdRootfsTar(): Promise<string> {
  const argv = systemdRootfsArgv();
  log(`the systemd reference rootfs: mmdebstrap ${argv.join(' ')} (cached; about a minute the first time)`);
  return cachedMmdebstrap(CACHE, argv);
}

/** A regular file's bytes from the tree (the tar layer points into an uncompressed tarball). */
async function readTreeFile(tree: Tree, path: string): Promise<Buffer> {
  const node = tree.lookup(path);
  if (!node || node.kind !== 'file') throw new Error(`the systemd rootfs has no regular file /${path}`);
  const content = node.content;
  if (content.kind !== 'stream') return readContent(content);
  throw new Error(`/${path} is in a compressed stream; the bench expects mmdebstrap's plain tarball`);
}

function addFile(tree: Tree, path: string, text: string, perm = 0o644, owner = 0): Inode {
  const data = Buffer.from(text);
  return tree.add(path, { kind: 'file', perm, uid: owner, gid: owner, size: data.length, content: { kind: 'bytes', data } });
}

async function appendLine(tree: Tree, path: string, line: string): Promise<void> {
  const node = tree.lookup(path)!;
  const text = (await readTreeFile(tree, path)).toString('utf8');
  addFile(tree, path, `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}${line}\n`, node.perm, node.uid);
  tree.lookup(path)!.gid = node.gid;
}

/**
 * The reference system disk: the rootfs as mmdebstrap made it, plus what an installed Debian
 * would have for this job — a network config, a machine-id, the sshd host key the client pins,
 * and a `builder` user that logs in with the same key as ferry's.
 */
async function buildSystemdDisk(tarPath: string, outPath: string, keys: { hostPrivate: string; hostPublic: string; clientPublic: string }): Promise<void> {
  const tree = new Tree();
  await new TarLayer(tarPath, { keepOwners: true }).apply(tree);
  const unit = (name: string) => `/lib/systemd/system/${name}`;
  // Through usr/: the tree does not follow the merged-/usr symlinks (/lib → usr/lib).
  for (const required of ['usr/lib/systemd/systemd', 'usr/lib/systemd/system/ssh.service', 'usr/lib/systemd/system/systemd-networkd.service']) {
    if (!tree.lookup(required)) throw new Error(`the systemd rootfs ${tarPath} has no /${required}`);
  }
  // The same static address ferry's stage 2 sets for qemu user networking; `en*` whatever the
  // PCI slot makes of the name (enp0s3 under q35 with ferry's device order).
  addFile(tree, 'etc/systemd/network/10-qemu-user.network', '[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n');
  // `systemctl enable systemd-networkd` (its socket comes with it, as the unit's Also= says).
  const link = (path: string, target: string) => tree.add(path, { kind: 'symlink', perm: 0o777, target, size: Buffer.byteLength(target) });
  link('etc/systemd/system/multi-user.target.wants/systemd-networkd.service', unit('systemd-networkd.service'));
  link('etc/systemd/system/sockets.target.wants/systemd-networkd.socket', unit('systemd-networkd.socket'));
  // openssh-server's postinst enables ssh.service; make sure, since the boot is timed to it.
  if (!tree.lookup('etc/systemd/system/multi-user.target.wants/ssh.service')) link('etc/systemd/system/multi-user.target.wants/ssh.service', unit('ssh.service'));
  // A fixed machine-id: an installed system's every boot, not a first boot (no presets, no firstboot).
  addFile(tree, 'etc/machine-id', 'f3a1c0de5eb00700b0075e57f3a1c0de\n', 0o444);
  addFile(tree, 'etc/hostname', 'systemd-reference\n');
  addFile(tree, 'etc/ssh/ssh_host_ed25519_key', keys.hostPrivate, 0o600);
  addFile(tree, 'etc/ssh/ssh_host_ed25519_key.pub', keys.hostPublic);
  await appendLine(tree, 'etc/passwd', `builder:x:${BUILDER_UID}:${BUILDER_UID}:bench builder:/home/builder:/bin/sh`);
  await appendLine(tree, 'etc/group', `builder:x:${BUILDER_UID}:`);
  await appendLine(tree, 'etc/shadow', 'builder:*:19000:0:99999:7:::');
  tree.add('home/builder', { kind: 'dir', perm: 0o755, uid: BUILDER_UID, gid: BUILDER_UID });
  tree.add('home/builder/.ssh', { kind: 'dir', perm: 0o700, uid: BUILDER_UID, gid: BUILDER_UID });
  addFile(tree, 'home/builder/.ssh/authorized_keys', keys.clientPublic, 0o600, BUILDER_UID);
  await writeExt4(tree, outPath, { label: 'systemd-ref', timestamp: Math.floor(Date.now() / 1000) });
}

/**
 * ferry's initramfs with an empty config archive appended: stage 1 copies the archive's
 * ferry/overlay into the root, and the reference gets nothing from ferry's generated files.
 */
async function systemdInitrd(manifest: ImageManifest, work: string): Promise<string> {
  const overlay = join(work, 'empty-config.cpio.gz');
  const parts = OVERLAY_DIR.split('/');
  await writeGzippedCpio(parts.map((_, i) => ({ kind: 'dir' as const, path: parts.slice(0, i + 1).join('/'), mode: 0o755 })), overlay, { mtime: 0 });
  const initrd = join(work, 'systemd-initrd.img');
  await copyFile(manifest.initramfs.path, initrd);
  await writeFile(initrd, await readFile(overlay), { flag: 'a' });
  return initrd;
}

// ---------------------------------------------------------------------------------------------
// One boot

function sshArgs(keyPath: string, knownHosts: string, port: number): string[] {
  return [
    '-F', '/dev/null', '-i', keyPath, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
    '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'HostKeyAlias=bench-guest',
    '-o', 'StrictHostKeyChecking=yes', '-o', 'ConnectTimeout=5', '-o', 'LogLevel=ERROR',
    '-p', String(port), 'builder@127.0.0.1', 'true',
  ];
}

/**
 * The first `ssh … true` that succeeds, in ms from qemu's start. A new attempt starts 100 ms after
 * the latest one failed, and 1 s after the latest one started if it still hangs: before the
 * guest has its address, qemu's user networking accepts the connection on the host and retries
 * the SYN into the guest with TCP backoff, so an early attempt can hang for seconds after sshd is
 * up. Up to MAX_SSH_IN_FLIGHT run at once; the first success counts, the rest are killed.
 */
async function firstSsh(args: string[], since: () => number, gone: () => boolean, qemuStderr: () => string): Promise<{ ms: number; attempts: SshAttempt[] }> {
  const inFlight = new Set<ChildProcess>();
  const attempts: SshAttempt[] = [];
  let lastStart = -Infinity;
  let lastEnd = -Infinity;
  let lastError = '';
  let success: number | undefined;
  try {
    while (success === undefined) {
      if (gone()) throw new Error(`qemu exited before ssh answered: ${qemuStderr().trim()}`);
      if (since() > BOOT_TIMEOUT_MS) throw new Error(`no successful ssh after ${BOOT_TIMEOUT_MS / 1000} s (last: ${lastError})`);
      const now = since();
      // Retry 100 ms after a failure even while earlier attempts still hang: once the guest's
      // address is up a refused connection fails fast, and waiting out the hung ones would
      // measure this loop's pacing instead of the guest.
      const due = (lastEnd >= lastStart && now - lastEnd >= 100) || now - lastStart >= 1000;
      if (due && inFlight.size < MAX_SSH_IN_FLIGHT) {
        const attempt: SshAttempt = { startMs: now, endMs: null, result: 'running' };
        attempts.push(attempt);
        lastStart = now;
        const child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
        inFlight.add(child);
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
        child.once('close', (code) => {
          inFlight.delete(child);
          attempt.endMs = since();
          attempt.result = code === 0 ? 'ok' : stderr.trim().split('\n').pop() || `exit ${code}`;
          if (code === 0) success ??= since();
          else {
            lastEnd = since();
            lastError = stderr.trim() || `exit ${code}`;
          }
        });
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return { ms: success, attempts };
  } finally {
    for (const child of inFlight) child.kill('SIGKILL');
  }
}

async function bootOnce(input: BootInput, round: number, ctx: { work: string; stateTemplate: string; clientKey: string; knownHosts: string }): Promise<BootSample> {
  const runDir = join(ctx.work, `run-${input.kind}-${round}`);
  await mkdir(runDir, { recursive: true });
  const stateDisk = join(runDir, 'state.img');
  if (spawnSync('cp', ['--sparse=always', ctx.stateTemplate, stateDisk]).status !== 0) throw new Error(`cannot copy ${ctx.stateTemplate}`);
  const port = await freePort();
  const spec: VmSpec = {
    name: `bench-${input.kind}`,
    system: 'x86_64-linux',
    cpus: 2,
    memoryBytes: 2 ** 30,
    kernel: input.kernel,
    initrd: input.initrd,
    cmdline: input.cmdline,
    disks: [
      { path: input.systemDisk, readOnly: true },
      { path: stateDisk, readOnly: false },
    ],
    sshPortOnHost: port,
    consoleLog: join(runDir, 'console.log'),
    runDir,
  };
  const argv = buildQemuArgv(spec, { accelerator: accel, qmpSocket: join(runDir, 'qmp.sock'), pidfile: join(runDir, 'qemu.pid') });
  const markers: Record<string, number | null> = Object.fromEntries(MARKERS[input.kind].map((m) => [m.name, null]));
  let guestUptimeMs: number | undefined;
  let handoverUptimeMs: number | undefined;
  let pending = '';
  const started = performance.now();
  const since = () => Math.round(performance.now() - started);
  const qemu: ChildProcess = spawn(QEMU, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let qemuStderr = '';
  qemu.stderr!.on('data', (d: Buffer) => (qemuStderr += d.toString()));
  const exited = new Promise<void>((resolve) => qemu.once('exit', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const tail = new FileTail(
    spec.consoleLog,
    (text) => {
      pending += text;
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        const handover = /^\[\s*(\d+\.\d+)\] systemd\[1\]/.exec(line);
        if (handover && handoverUptimeMs === undefined) handoverUptimeMs = Math.round(Number(handover[1]) * 1000);
        for (const marker of MARKERS[input.kind]) {
          if (markers[marker.name] === null && marker.pattern.test(line)) {
            markers[marker.name] = since();
            const uptime = /uptime=(\d+(?:\.\d+)?)/.exec(line);
            if (uptime) guestUptimeMs = Math.round(Number(uptime[1]) * 1000);
          }
        }
      }
    },
    20,
  );
  tail.start();
  try {
    const probe = await firstSsh(sshArgs(ctx.clientKey, ctx.knownHosts, port), since, () => gone, () => qemuStderr);
    const firstSshMs = probe.ms;
    const qemuCpuMs = processCpuMs(qemu.pid!);
    const attempts = probe.attempts;
    const secondStart = since();
    const second = spawnSync('ssh', sshArgs(ctx.clientKey, ctx.knownHosts, port), { stdio: 'ignore', timeout: 30_000 });
    const secondSshMs = since() - secondStart;
    if (second.status !== 0) throw new Error(`a second ssh … true right after the first failed (exit ${second.status})`);
    const graceEnd = performance.now() + MARKER_GRACE_MS;
    while (Object.values(markers).some((v) => v === null) && performance.now() < graceEnd && !gone) await new Promise((r) => setTimeout(r, 50));
    await tail.poll();
    return { guest: input.kind, round, firstSshMs, qemuCpuMs, sshAttempts: attempts, secondSshMs, markers, ...(guestUptimeMs !== undefined ? { guestUptimeMs } : {}), ...(handoverUptimeMs !== undefined ? { handoverUptimeMs } : {}) };
  } catch (error) {
    const consoleTail = readFileSync(spec.consoleLog, 'utf8').split('\n').slice(-20).join('\n');
    throw new Error(`${input.kind} boot ${round}: ${(error as Error).message}\nconsole (${spec.consoleLog}):\n${consoleTail}`);
  } finally {
    await tail.stop();
    if (!gone) qemu.kill('SIGKILL');
    await exited;
    if (!values.keep) await rm(stateDisk, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** utime + stime of a process from /proc/PID/stat (fields 14 and 15, after the parenthesised name). */
function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Math.round(((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS);
}

function qemuVersion(): string {
  return spawnSync(QEMU, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '';
}

function configText(): string {
  return `[guest]\ncpus = 2\nmemory = "1GiB"\nstate-disk-size = "2GiB"\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n`;
}

async function main(): Promise<void> {
  checkPrerequisites();
  const work = mkdtempSync(join(tmpdir(), 'ferry-bench-boot-'));
  const loadBefore = loadavg().map((x) => Number(x.toFixed(2)));
  const samples: BootSample[] = [];
  try {
    const env = {
      ...(process.env as Record<string, string>),
      FERRY_STATE_DIR: join(work, 'state'),
      FERRY_CACHE_DIR: join(CACHE, 'ferry-cache'),
      FERRY_CONFIG: join(work, 'ferry.toml'),
    };
    writeFileSync(env.FERRY_CONFIG, configText());
    const paths: FerryPaths = resolvePaths({ env });
    const config = await loadConfig(paths.configFile, { mustExist: true });
    log('building ferry\'s debian image (buildImage; cached)');
    const manifest = await buildImage({ config, paths, keys: ferryKeys(paths), onStep: (label) => log(`  ${label}`) });
    log(`  image ${manifest.id}: system disk ${manifest.systemDisk.cacheHit ? 'cached' : 'built'}, initrd ${manifest.initrd.sizeBytes} bytes`);

    const stateTemplate = join(work, 'state-template.img');
    await ensureStateDisk(stateTemplate, config.guest.stateDiskSizeBytes);

    const tar = await systemdRootfsTar();
    const systemdDisk = join(work, 'systemd-system.img');
    log(`writing the systemd reference disk from ${tar}`);
    const hostPublic = readFileSync(`${paths.guestHostKey}.pub`, 'utf8');
    await buildSystemdDisk(tar, systemdDisk, {
      hostPrivate: readFileSync(paths.guestHostKey, 'utf8'),
      hostPublic,
      clientPublic: readFileSync(`${paths.guestClientKey}.pub`, 'utf8'),
    });
    const knownHosts = join(work, 'known_hosts');
    writeFileSync(knownHosts, `bench-guest ${hostPublic.trim().split(/\s+/).slice(0, 2).join(' ')}\n`);

    const baseCmdline = imageCmdline(manifest).replace(/\s*ferry\.system=\S+/, '');
    const inputs: Record<GuestKind, Omit<BootInput, 'cmdline'> & { cmdline: () => string }> = {
      ferry: {
        kind: 'ferry',
        kernel: manifest.kernel.path,
        initrd: manifest.initrd.path,
        systemDisk: manifest.systemDisk.path,
        cmdline: () => guestCmdline(manifest, config, 'user', Math.floor(Date.now() / 1000)),
      },
      systemd: {
        kind: 'systemd',
        kernel: manifest.kernel.path,
        initrd: await systemdInitrd(manifest, work),
        systemDisk: systemdDisk,
        cmdline: () => `${baseCmdline} ferry.init=/lib/systemd/systemd`,
      },
    };
    const ctx = { work, stateTemplate, clientKey: paths.guestClientKey, knownHosts };
    for (let round = 1; round <= runs; round++) {
      // Alternate which goes first, so neither always follows the other's teardown.
      const order: GuestKind[] = round % 2 ? ['ferry', 'systemd'] : ['systemd', 'ferry'];
      for (const kind of order) {
        const input = inputs[kind];
        const sample = await bootOnce({ ...input, cmdline: input.cmdline() }, round, ctx);
        samples.push(sample);
        const marks = Object.entries(sample.markers).map(([name, ms]) => `${name} ${ms === null ? '—' : `${(ms / 1000).toFixed(2)} s`}`).join(', ');
        log(`  round ${round}/${runs} ${kind}: first ssh ${(sample.firstSshMs / 1000).toFixed(2)} s (${sample.sshAttempts.length} attempts), next ssh ${sample.secondSshMs} ms, qemu CPU ${(sample.qemuCpuMs / 1000).toFixed(2)} s; ${marks}; load ${loadavg()[0]!.toFixed(2)}`);
      }
    }
    const loadAfter = loadavg().map((x) => Number(x.toFixed(2)));
    report(samples, { manifest, loadBefore, loadAfter });
  } finally {
    if (values.keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

function report(samples: BootSample[], info: { manifest: ImageManifest; loadBefore: number[]; loadAfter: number[] }): void {
  const of = (kind: GuestKind) => samples.filter((s) => s.guest === kind);
  const med = (kind: GuestKind, pick: (s: BootSample) => number | null | undefined) => {
    const xs = of(kind).map(pick).filter((x): x is number => typeof x === 'number');
    return xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length } : undefined;
  };
  const rows = [
    { label: 'ferry: qemu start → FERRY-READY', stat: med('ferry', (s) => s.markers['FERRY-READY']) },
    { label: 'ferry: qemu start → first ssh', stat: med('ferry', (s) => s.firstSshMs) },
    { label: 'systemd: qemu start → Started ssh.service', stat: med('systemd', (s) => s.markers['Started ssh.service']) },
    { label: 'systemd: qemu start → multi-user.target', stat: med('systemd', (s) => s.markers['Reached multi-user.target']) },
    { label: 'systemd: qemu start → first ssh', stat: med('systemd', (s) => s.firstSshMs) },
    { label: 'ferry: qemu CPU time at first ssh', stat: med('ferry', (s) => s.qemuCpuMs) },
    { label: 'systemd: qemu CPU time at first ssh', stat: med('systemd', (s) => s.qemuCpuMs) },
    { label: 'ferry: one more ssh … true (login cost)', stat: med('ferry', (s) => s.secondSshMs) },
    { label: 'systemd: one more ssh … true (login cost)', stat: med('systemd', (s) => s.secondSshMs) },
  ];
  const ferrySsh = rows[1]!.stat!.median;
  const systemdSsh = rows[4]!.stat!.median;
  const ratio = ferrySsh / systemdSsh;
  const cpuRatio = rows[5]!.stat!.median / rows[6]!.stat!.median;
  const readyRatio = rows[0]!.stat && rows[2]!.stat ? rows[0]!.stat.median / rows[2]!.stat.median : undefined;
  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    qemu: qemuVersion(),
    accelerator: accel,
    loadAverageBefore: info.loadBefore,
    loadAverageAfter: info.loadAfter,
  };
  const result = {
    date: new Date().toISOString(),
    machine,
    runs,
    guest: { cpus: 2, memory: '1 GiB', kernel: info.manifest.kernel.version, imageId: info.manifest.id },
    medians: Object.fromEntries(rows.map((r) => [r.label, r.stat ?? null])),
    ratios: { firstSsh: ratio, qemuCpuAtFirstSsh: cpuRatio, readyVsSshServiceStarted: readyRatio ?? null, target: TARGET_RATIO, ok: ratio <= TARGET_RATIO },
    samples,
  };
  if (values.save) writeFileSync(values.save, `${JSON.stringify(result, null, 2)}\n`);
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const s = (ms: number) => (ms / 1000).toFixed(2);
  const out: string[] = [];
  out.push(`${result.date.slice(0, 10)}, ${machine.cpus} × ${machine.cpuModel}, ${machine.qemu}, -accel ${accel}; guests: 2 vCPUs, 1 GiB, kernel ${info.manifest.kernel.version}`);
  out.push(`median of ${runs}; load average ${info.loadBefore.join(' ')} before, ${info.loadAfter.join(' ')} after`);
  out.push('');
  const width = Math.max(...rows.map((r) => r.label.length));
  out.push(`${'measure'.padEnd(width)}  median s  min s  max s`);
  for (const row of rows) {
    if (!row.stat) out.push(`${row.label.padEnd(width)}         —`);
    else out.push(`${row.label.padEnd(width)}  ${s(row.stat.median).padStart(8)}  ${s(row.stat.min).padStart(5)}  ${s(row.stat.max).padStart(5)}`);
  }
  out.push('');
  out.push(`ferry / systemd, first ssh: ${ratio.toFixed(2)}× (target ≤ ${TARGET_RATIO}×) ${ratio <= TARGET_RATIO ? 'ok' : 'MISSED'}`);
  out.push(`ferry / systemd, qemu CPU time at first ssh: ${cpuRatio.toFixed(2)}× (the steadier measure on a loaded machine)`);
  if (readyRatio !== undefined) out.push(`ferry FERRY-READY / systemd "Started ssh.service": ${readyRatio.toFixed(2)}×`);
  const uptimes = of('ferry').map((x) => x.guestUptimeMs).filter((x): x is number => x !== undefined);
  if (uptimes.length) out.push(`ferry's guest uptime at FERRY-READY (kernel start → ready, median): ${s(median(uptimes))} s`);
  const handovers = of('systemd').map((x) => x.handoverUptimeMs).filter((x): x is number => x !== undefined);
  if (handovers.length) out.push(`systemd's first console message at guest uptime (kernel + stage 1, shared by both boots; median): ${s(median(handovers))} s`);
  process.stdout.write(`${out.join('\n')}\n`);
}

await main();
