/**
 * ferry's ext4 writer against `mke2fs -t ext4 -d` on the same directory (issue 2, "Speed"),
 * with `mkfs.erofs` for reference.
 *
 *   node --import tsx bench/mkfs.ts [--runs 5] [--tree debian|synthetic|all] [--json] [--save FILE] [--out-dir DIR]
 *
 * Runs the real CLI (./bin/ferry → dist/, so build with `npx tsc -p .` first). For each tree: one
 * untimed warm-up run of each tool (ferry's also picks the image size S that both ext4 tools then
 * get), then N timed rounds, the tools interleaved within each round so that noise from the
 * shared machine hits them alike. Wall time is measured here around the child; peak RSS comes
 * from GNU time (`/usr/bin/time`, Debian package `time`). Outputs are removed and `sync`ed
 * between runs, outside the timing, so one tool's dirty pages are not written back on another's
 * clock. Both ext4 tools fsync their image before exiting (ferry since it syncs every file it
 * writes, src/atomic-file.ts), so their times compare as they are; mkfs.erofs does not. ferry's
 * output is checked once per tree with `e2fsck -fn`; an unclean image fails the bench.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { describeMachine, describeTree, e2fsckClean, GNU_TIME, measure, median, mib } from './measure.js';
import { rootfsDirectory } from './rootfs.js';
import { DEFAULT_SYNTHETIC, syntheticTree } from './synthetic-tree.js';

const REPO = resolve(import.meta.dirname, '..');
const FERRY = join(REPO, 'bin', 'ferry');

type ToolName = 'ferry' | 'mke2fs' | 'mke2fs -T default' | 'mkfs.erofs';

/**
 * Below 512 MiB mke2fs.conf's "small" (and "floppy") usage types switch mke2fs to 1 KiB blocks
 * and 4× the inodes; ferry always makes 4 KiB blocks. The plain `mke2fs` row is what the issue's
 * targets compare against; `-T default` (4 KiB blocks, one inode per 16 KiB, as ferry) is added
 * below this size as the like-for-like format.
 */
const MKE2FS_SMALL_BELOW = 512 * 1024 ** 2;

interface Run {
  seconds: number;
  /** User + system CPU seconds: less disturbed than wall time by other load on a shared machine. */
  cpuSeconds: number;
  peakRssKiB: number;
}

interface ToolResult {
  tool: ToolName;
  command: string;
  runs: Run[];
  medianSeconds: number;
  minSeconds: number;
  maxSeconds: number;
  medianCpuSeconds: number;
  /** The largest peak RSS over the timed runs. */
  peakRssMiB: number;
  allocatedBytes: number;
  apparentBytes: number;
  /** ferry only: its own split between reading the sources and writing the image (medians). */
  ferryTimings?: { layersMs: number; writeMs: number };
}

interface TreeResult {
  tree: string;
  path: string;
  entries: number;
  files: number;
  contentBytes: number;
  imageSizeBytes: number;
  tools: ToolResult[];
  ratios: {
    time: number;
    /** Median CPU seconds, ferry / mke2fs. */
    cpu: number;
    ferryPeakRssMiB: number;
    allocated: number;
    timeOk: boolean;
    rssOk: boolean;
    allocatedOk: boolean;
    /** Against `mke2fs -T default` (same block size and inode ratio as ferry), when it ran. */
    likeForLike?: { time: number; cpu: number; allocated: number };
  };
}

const TARGET_TIME_RATIO = 1.0;
const TARGET_RSS_MIB = 200;
const TARGET_SIZE_TOLERANCE = 0.1;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
      tree: { type: 'string', default: 'all' },
      json: { type: 'boolean', default: false },
      'out-dir': { type: 'string' },
      save: { type: 'string' },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) fail(`--runs: expected a whole number ≥ 1, got ${JSON.stringify(values.runs)}`);
  const trees = values.tree === 'all' ? ['debian', 'synthetic'] : [values.tree!];
  for (const tree of trees) {
    if (tree !== 'debian' && tree !== 'synthetic') fail(`--tree: expected debian, synthetic or all, got ${JSON.stringify(tree)}`);
  }
  const log = (line: string) => process.stderr.write(`${line}\n`);
  checkPrerequisites();

  const outDir = values['out-dir'] ?? mkdtempSync(join(tmpdir(), 'ferry-bench-'));
  const machine = describeMachine();
  log(`machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.os}, Node ${machine.node}, load average ${machine.loadAverage.join(' ')}`);
  const results: TreeResult[] = [];
  try {
    for (const tree of trees) {
      const path = tree === 'debian' ? await rootfsDirectory(log) : await syntheticTree(DEFAULT_SYNTHETIC, log);
      results.push(await benchTree(tree === 'debian' ? 'debian rootfs' : 'synthetic', path, runs, outDir, log));
    }
  } finally {
    if (!values['out-dir']) rmSync(outDir, { recursive: true, force: true });
  }

  const report = `${JSON.stringify({ date: new Date().toISOString(), machine, runs, trees: results }, null, 2)}\n`;
  if (values.save) writeFileSync(values.save, report);
  if (values.json) {
    process.stdout.write(report);
  } else {
    process.stdout.write(`${new Date().toISOString().slice(0, 10)}, ${machine.cpus} × ${machine.cpuModel}, ${machine.os}, Node ${machine.node}; median of ${runs}, page cache warm\n\n`);
    for (const result of results) process.stdout.write(`${formatTree(result)}\n`);
  }
  const missed = results.filter((r) => !(r.ratios.timeOk && r.ratios.rssOk && r.ratios.allocatedOk));
  if (missed.length > 0) log(`targets missed for: ${missed.map((r) => r.tree).join(', ')}`);
}

async function benchTree(name: string, dir: string, runs: number, outDir: string, log: (line: string) => void): Promise<TreeResult> {
  const content = describeTree(dir);
  log(`${name}: ${dir} (${content.entries} entries, ${content.files} files, ${mib(content.bytes)} MiB)`);
  const output = (tool: ToolName) => join(outDir, `${tool.replace(/[^a-z0-9.]+/gi, '-')}.img`);

  // Warm-up, untimed: fills the page cache with the tree, and ferry's run picks the size.
  log('  warm-up: ferry (automatic size)');
  const sizing = await measure(FERRY, ['image', 'mkfs', dir, '-o', output('ferry'), '--json']);
  const sizeBytes = (JSON.parse(sizing.stdout) as { sizeBytes: number }).sizeBytes;
  removeOutput(output('ferry'));
  const commands: Partial<Record<ToolName, string[]>> = {
    ferry: [FERRY, 'image', 'mkfs', dir, '-o', output('ferry'), '--size', String(sizeBytes), '--json'],
    mke2fs: ['mke2fs', '-q', '-F', '-t', 'ext4', '-d', dir, output('mke2fs'), `${sizeBytes / 1024}k`],
  };
  if (sizeBytes < MKE2FS_SMALL_BELOW) {
    commands['mke2fs -T default'] = ['mke2fs', '-q', '-F', '-t', 'ext4', '-T', 'default', '-d', dir, output('mke2fs -T default'), `${sizeBytes / 1024}k`];
  }
  commands['mkfs.erofs'] = ['mkfs.erofs', output('mkfs.erofs'), dir];
  const tools = Object.keys(commands) as ToolName[];
  for (const tool of tools.filter((t) => t !== 'ferry')) {
    log(`  warm-up: ${tool}`);
    await measure(commands[tool]![0], commands[tool]!.slice(1));
    removeOutput(output(tool));
  }

  const samples = new Map<ToolName, Run[]>(tools.map((t) => [t, []]));
  const sizes = new Map<ToolName, { allocated: number; apparent: number }>();
  const ferryTimings: Array<{ layersMs: number; writeMs: number }> = [];
  for (let round = 1; round <= runs; round++) {
    for (const tool of tools) {
      const run = await measure(commands[tool]![0], commands[tool]!.slice(1));
      samples.get(tool)!.push({ seconds: run.seconds, cpuSeconds: run.cpuSeconds, peakRssKiB: run.peakRssKiB });
      const st = statSync(output(tool));
      sizes.set(tool, { allocated: st.blocks * 512, apparent: st.size });
      if (tool === 'ferry') {
        const json = JSON.parse(run.stdout) as { sizeBytes: number; timings: { layersMs: number; writeMs: number } };
        if (json.sizeBytes !== sizeBytes) throw new Error(`ferry wrote a ${json.sizeBytes}-byte image when asked for ${sizeBytes}`);
        ferryTimings.push(json.timings);
        if (round === 1) e2fsckClean(output('ferry'), name, log);
      }
      log(`  run ${round}/${runs} ${tool}: ${run.seconds.toFixed(2)} s (${run.cpuSeconds.toFixed(2)} s CPU), ${mib(run.peakRssKiB * 1024)} MiB peak RSS`);
      removeOutput(output(tool));
    }
  }

  const results = tools.map((tool): ToolResult => {
    const seconds = samples.get(tool)!.map((r) => r.seconds);
    return {
      tool,
      command: commands[tool]!.join(' ').replace(REPO + '/', './'),
      runs: samples.get(tool)!,
      medianSeconds: median(seconds),
      minSeconds: Math.min(...seconds),
      maxSeconds: Math.max(...seconds),
      medianCpuSeconds: median(samples.get(tool)!.map((r) => r.cpuSeconds)),
      peakRssMiB: Math.max(...samples.get(tool)!.map((r) => r.peakRssKiB)) / 1024,
      allocatedBytes: sizes.get(tool)!.allocated,
      apparentBytes: sizes.get(tool)!.apparent,
      ...(tool === 'ferry'
        ? { ferryTimings: { layersMs: median(ferryTimings.map((t) => t.layersMs)), writeMs: median(ferryTimings.map((t) => t.writeMs)) } }
        : {}),
    };
  });
  const ferry = results.find((r) => r.tool === 'ferry')!;
  const mke2fs = results.find((r) => r.tool === 'mke2fs')!;
  const time = ferry.medianSeconds / mke2fs.medianSeconds;
  const same = results.find((r) => r.tool === 'mke2fs -T default');
  const allocated = ferry.allocatedBytes / mke2fs.allocatedBytes;
  return {
    tree: name,
    path: dir,
    entries: content.entries,
    files: content.files,
    contentBytes: content.bytes,
    imageSizeBytes: sizeBytes,
    tools: results,
    ratios: {
      time,
      cpu: ferry.medianCpuSeconds / mke2fs.medianCpuSeconds,
      ferryPeakRssMiB: ferry.peakRssMiB,
      allocated,
      timeOk: time <= TARGET_TIME_RATIO,
      rssOk: ferry.peakRssMiB <= TARGET_RSS_MIB,
      allocatedOk: Math.abs(allocated - 1) <= TARGET_SIZE_TOLERANCE,
      ...(same
        ? {
            likeForLike: {
              time: ferry.medianSeconds / same.medianSeconds,
              cpu: ferry.medianCpuSeconds / same.medianCpuSeconds,
              allocated: ferry.allocatedBytes / same.allocatedBytes,
            },
          }
        : {}),
    },
  };
}

function removeOutput(path: string): void {
  rmSync(path, { force: true });
  // Write back whatever is still dirty now, not during the next tool's timed run.
  spawnSync('sync');
}

function checkPrerequisites(): void {
  if (!existsSync(GNU_TIME)) fail(`${GNU_TIME} is missing: install the Debian package \`time\` (peak RSS of each tool comes from it)`);
  if (!existsSync(join(REPO, 'dist', 'cli.js'))) fail('dist/cli.js is missing: build ferry first with `npx tsc -p .`');
  for (const tool of ['mke2fs', 'mkfs.erofs', 'e2fsck']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) fail(`${tool} is not on PATH (Debian packages e2fsprogs, erofs-utils)`);
  }
  const stale = staleOutputs();
  if (stale.length > 0) process.stderr.write(`warning: ${stale.join(', ')} newer than dist/; run \`npx tsc -p .\` to bench the current code\n`);
}

/** Sources of the mkfs path whose compiled dist/ file is missing or older. */
function staleOutputs(): string[] {
  const sources = ['src/image/ext4', 'src/image/layers', 'src/image/tree.ts', 'src/image/mkfs.ts', 'src/commands/image.ts', 'src/atomic-file.ts'];
  const stale: string[] = [];
  for (const source of sources) {
    const full = join(REPO, source);
    if (!existsSync(full)) continue;
    const files = statSync(full).isDirectory()
      ? readdirSync(full, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => join(source, f))
      : [source];
    for (const file of files) {
      const compiled = join(REPO, file.replace(/^src\//, 'dist/').replace(/\.ts$/, '.js'));
      if (!existsSync(compiled) || statSync(compiled).mtimeMs < statSync(join(REPO, file)).mtimeMs) stale.push(file);
    }
  }
  return stale;
}

function formatTree(r: TreeResult): string {
  const header = `${r.tree}: ${r.files.toLocaleString('en')} files, ${r.entries.toLocaleString('en')} entries, ${mib(r.contentBytes)} MiB of file data; image size ${mib(r.imageSizeBytes)} MiB (ferry's automatic size, given to both ext4 tools)`;
  const rows = [
    ['tool', 'median s', 'min s', 'max s', 'CPU s', 'peak RSS MiB', 'allocated MiB', 'apparent MiB'],
    ...r.tools.map((t) => [
      t.tool,
      t.medianSeconds.toFixed(2),
      t.minSeconds.toFixed(2),
      t.maxSeconds.toFixed(2),
      t.medianCpuSeconds.toFixed(2),
      t.peakRssMiB.toFixed(0),
      mib(t.allocatedBytes),
      mib(t.apparentBytes),
    ]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const table = rows.map((row) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ')).join('\n');
  const ferry = r.tools.find((t) => t.tool === 'ferry')!;
  const mark = (ok: boolean) => (ok ? 'ok' : 'MISSED');
  const ratios =
    `ferry / mke2fs (both fsync their image): time ${r.ratios.time.toFixed(2)}× (target ≤ ${TARGET_TIME_RATIO.toFixed(1)}×) ${mark(r.ratios.timeOk)}, ` +
    `CPU time ${r.ratios.cpu.toFixed(2)}×; ` +
    `peak RSS ${r.ratios.ferryPeakRssMiB.toFixed(0)} MB (target ≤ ${TARGET_RSS_MIB} MB) ${mark(r.ratios.rssOk)}; ` +
    `allocated image ${r.ratios.allocated.toFixed(3)}× (target within ${TARGET_SIZE_TOLERANCE * 100}%) ${mark(r.ratios.allocatedOk)}`;
  const like = r.ratios.likeForLike;
  const likeLine = like
    ? `ferry / mke2fs -T default (4 KiB blocks like ferry; plain mke2fs picks 1 KiB blocks below 512 MiB): time ${like.time.toFixed(2)}×, CPU time ${like.cpu.toFixed(2)}×, allocated image ${like.allocated.toFixed(3)}×\n`
    : '';
  const split = ferry.ferryTimings ? `ferry's own split (median): reading the tree ${ferry.ferryTimings.layersMs} ms, writing the image ${ferry.ferryTimings.writeMs} ms` : '';
  return `${header}\n\n${table}\n\n${ratios}\n${likeLine}${split}\n`;
}

function fail(message: string): never {
  process.stderr.write(`bench/mkfs: ${message}\n`);
  process.exit(2);
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/mkfs: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
