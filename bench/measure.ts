/**
 * What the benches share: a command measured under GNU time (wall time here, CPU time and peak
 * RSS from its report), the machine described, e2fsck's verdict on ferry's image, medians.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';

export const GNU_TIME = '/usr/bin/time';

export interface Measured {
  seconds: number;
  cpuSeconds: number;
  peakRssKiB: number;
  stdout: string;
}

/** Runs a command under GNU time; wall time from here, CPU time and peak RSS (KiB) from time's report. */
export function measure(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Measured> {
  const report = join(tmpdir(), `ferry-bench-time-${process.pid}`);
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(GNU_TIME, ['-f', '%e %M %U %S', '-o', report, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) {
        reject(new Error(`${command} ${args.join(' ')} exited with ${code}:\n${Buffer.concat(stderr).toString()}`));
        return;
      }
      const fields = readFileSync(report, 'utf8').trim().split('\n').pop()!.split(' ');
      rmSync(report, { force: true });
      resolvePromise({ seconds, cpuSeconds: Number(fields[2]) + Number(fields[3]), peakRssKiB: Number(fields[1]), stdout: Buffer.concat(stdout).toString() });
    });
  });
}

export function e2fsckClean(image: string, tree: string, log: (line: string) => void): void {
  const result = spawnSync('e2fsck', ['-fn', image], { encoding: 'utf8' });
  if (result.status !== 0) {
    process.stderr.write(`${result.stdout}${result.stderr}`);
    throw new Error(`e2fsck -fn found problems (exit ${result.status}) in ferry's image of the ${tree} tree (${image})`);
  }
  log(`  e2fsck -fn: ferry's image is clean (${result.stdout.trim().split('\n').pop()})`);
}

export function describeTree(root: string): { entries: number; files: number; bytes: number } {
  let entries = 0;
  let files = 0;
  let bytes = 0;
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      entries += 1;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) {
        files += 1;
        bytes += lstatSync(path).size;
      }
    }
  };
  walk(root);
  return { entries, files, bytes };
}

export function describeMachine() {
  const os = existsSync('/etc/debian_version') ? `Debian ${readFileSync('/etc/debian_version', 'utf8').trim()}` : process.platform;
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    os,
    node: process.version,
    loadAverage: loadavg().map((l) => Number(l.toFixed(2))),
    mke2fs: (spawnSync('mke2fs', ['-V'], { encoding: 'utf8' }).stderr.split('\n')[0] ?? '').trim(),
  };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function mib(bytes: number): string {
  return (bytes / 1024 ** 2).toFixed(1);
}
