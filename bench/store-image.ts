/**
 * A big closure into an image (issue 15, item 2): about 1 GiB in about 20,000 files from the host's
 * Nix store (bench/store-closure.ts), written by
 *   - ferry: `ferry image build` with the closure as a nix layer, its store disk removed before
 *     each run (the system disk, initramfs and preset stay cached, as after any earlier build);
 *   - mkfs.erofs as nixpkgs' linux-builder makes its store image at every start of the VM
 *     (nixos/modules/virtualisation/qemu-vm.nix, `useNixStoreImage`, which
 *     nixos/modules/profiles/nix-builder-vm.nix sets): `tar --create … --files-from STORE-PATHS |
 *     mkfs.erofs --quiet --force-uid=0 --force-gid=0 -L nix-store -U eb176051-… -T 0 --tar=f`,
 *     with erofs-utils from Debian trixie (1.8; bookworm's 1.5 has no `--tar`) in a chroot made
 *     once with mmdebstrap, tar from the host;
 *   - mkfs.erofs 1.5 (bookworm, on the host) with the same options (but -L, which 1.5 lacks) on
 *     a directory holding the closure (hard links into the store), for reference;
 *   - `mke2fs -t ext4 -d` on that directory, at the size ferry chose.
 * Every tool's time includes an fsync of its image (`sync FILE`, timed with it: mke2fs and ferry
 * sync their own already, mkfs.erofs does not). One untimed warm-up of each, then N rounds with
 * the tools interleaved; `sync` between runs, untimed. e2fsck -fn on ferry's disk once.
 *
 * Then the incremental case: N times, one small new store path (`nix-store --add` of a file)
 * added to the layer's paths, `ferry image build` timed — the base store disk stays, a delta of
 * that path is written; and the config-only rebuild (guest.nix.max-jobs changed) N times.
 *
 *   node --import tsx bench/store-image.ts [--runs 5] [--json] [--save FILE]
 *
 * Runs the real CLI (./bin/ferry → dist/: build with `npx tsc -p .` first), as root (the debian
 * preset and the chroot), with the tests' download cache (~/.cache/ferry-test/ferry-cache/downloads).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { cachedMmdebstrap } from '../src/image/presets/mmdebstrap.js';
import { describeMachine, describeTree, e2fsckClean, GNU_TIME, measure, median, mib, type Measured } from './measure.js';
import { cacheRoot } from './rootfs.js';
import { DEFAULT_CLOSURE, storeClosure } from './store-closure.js';

const REPO = resolve(import.meta.dirname, '..');
const FERRY = join(REPO, 'bin', 'ferry');
/** The linux-builder's fixed store image UUID (qemu-vm.nix). */
const BUILDER_UUID = 'eb176051-bd15-49b7-9e6b-462e0b467019';
const EROFS_OPTIONS = ['--quiet', '--force-uid=0', '--force-gid=0', '-L', 'nix-store', '-U', BUILDER_UUID, '-T', '0'];
const TARGET_RATIO = 0.5;
const TARGET_RSS_MIB = 200;
const TARGET_INCREMENTAL_S = 1;

type Tool = 'ferry' | 'mkfs.erofs (linux-builder)' | 'mkfs.erofs 1.5 dir' | 'mke2fs -d';

interface Sample {
  seconds: number;
  cpuSeconds: number;
  peakRssKiB: number;
}

interface Manifest {
  systemDisk: { cacheHit: boolean };
  storeDisks?: Array<{ path: string; sizeBytes: number; cacheHit: boolean }>;
  config: { cacheHit: boolean };
  timings: Record<string, number>;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, json: { type: 'boolean', default: false }, save: { type: 'string' } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) fail(`--runs: expected a whole number ≥ 1, got ${JSON.stringify(values.runs)}`);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  checkPrerequisites();
  const machine = describeMachine();
  log(`machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.os}, Node ${machine.node}, load average ${machine.loadAverage.join(' ')}`);

  const closure = await storeClosure(DEFAULT_CLOSURE, log);
  const work = mkdtempSync(join(tmpdir(), 'ferry-bench-store-'));
  try {
    // The closure as a directory for the tools that read one: hard links, so the same page cache.
    const stage = join(work, 'stage');
    mkdirSync(join(stage, 'nix', 'store'), { recursive: true });
    await execa('cp', ['-al', ...closure.paths, join(stage, 'nix', 'store')]);
    const content = describeTree(join(stage, 'nix', 'store'));
    log(`closure: ${closure.paths.length} store paths, ${content.files} files, ${content.entries} entries, ${mib(content.bytes)} MiB`);
    const storePathsFile = join(work, 'store-paths');
    writeFileSync(storePathsFile, `${closure.paths.join('\n')}\n`);
    const chroot = await trixieErofs(log);

    const ferry = new FerryBuilds(work);
    log('  warm-up: ferry (the system disk and the first store disk)');
    let manifest = await ferry.build([closure.top], 4);
    const storeDisk = manifest.storeDisks?.[0];
    if (!storeDisk || manifest.storeDisks!.length !== 1) throw new Error('ferry wrote no single store disk for the nix layer');
    const sizeBytes = storeDisk.sizeBytes;

    const outputs: Record<Tool, string> = {
      ferry: storeDisk.path,
      'mkfs.erofs (linux-builder)': join(chroot, 'tmp', 'store.img'),
      'mkfs.erofs 1.5 dir': join(work, 'erofs15.img'),
      'mke2fs -d': join(work, 'mke2fs.img'),
    };
    const commands: Record<Tool, [string, string[]]> = {
      ferry: [FERRY, ['image', 'build', '--json']], // run with the FerryBuilds environment
      'mkfs.erofs (linux-builder)': [
        'sh',
        [
          '-c',
          // As qemu-vm.nix: store paths relative to the image root, Darwin's case hack dropped.
          `tar --create --absolute-names --verbatim-files-from --transform 'flags=rSh;s|/nix/store/||' --transform 'flags=rSh;s|~nix~case~hack~[[:digit:]]\\+||g' --files-from "$1" | chroot "$2" mkfs.erofs ${EROFS_OPTIONS.join(' ')} --tar=f /tmp/store.img`,
          'sh',
          storePathsFile,
          chroot,
        ],
      ],
      // 1.5 has no -L: the same options but the label.
      'mkfs.erofs 1.5 dir': ['mkfs.erofs', [...EROFS_OPTIONS.filter((o) => o !== '-L' && o !== 'nix-store'), outputs['mkfs.erofs 1.5 dir'], join(stage, 'nix', 'store')]],
      'mke2fs -d': ['mke2fs', ['-q', '-F', '-t', 'ext4', '-d', stage, outputs['mke2fs -d'], `${sizeBytes / 1024}k`]],
    };
    const tools = Object.keys(commands) as Tool[];
    const run = async (tool: Tool): Promise<Measured & { manifest?: Manifest }> => {
      if (tool === 'ferry') ferry.removeStoreDisks();
      else rmSync(outputs[tool], { force: true });
      spawnSync('sync');
      const [command, args] = commands[tool];
      const made = await measure(command, args, tool === 'ferry' ? ferry.env : undefined);
      const synced = await measure('sync', [outputs[tool]]);
      return { ...made, seconds: made.seconds + synced.seconds, manifest: tool === 'ferry' ? (JSON.parse(made.stdout) as Manifest) : undefined };
    };
    for (const tool of tools.filter((t) => t !== 'ferry')) {
      log(`  warm-up: ${tool}`);
      await run(tool);
    }
    const samples = new Map<Tool, Sample[]>(tools.map((t) => [t, []]));
    const sizes = new Map<Tool, { allocated: number; apparent: number }>();
    const ferryStoreMs: number[] = [];
    for (let round = 1; round <= runs; round++) {
      for (const tool of tools) {
        const result = await run(tool);
        samples.get(tool)!.push({ seconds: result.seconds, cpuSeconds: result.cpuSeconds, peakRssKiB: result.peakRssKiB });
        const st = statSync(outputs[tool]);
        sizes.set(tool, { allocated: st.blocks * 512, apparent: st.size });
        if (result.manifest) {
          if (result.manifest.storeDisks?.[0]?.cacheHit !== false || !result.manifest.systemDisk.cacheHit) throw new Error('ferry did not write exactly its store disk');
          ferryStoreMs.push(result.manifest.timings.storeDisks);
          if (round === 1) e2fsckClean(outputs.ferry, 'closure', log);
        }
        log(`  run ${round}/${runs} ${tool}: ${result.seconds.toFixed(2)} s (${result.cpuSeconds.toFixed(2)} s CPU), ${mib(result.peakRssKiB * 1024)} MiB peak RSS`);
      }
    }

    // The incremental case: the base stays cached, one small path more each time.
    const incremental: Sample[] = [];
    const deltaBytes: number[] = [];
    for (let round = 1; round <= runs; round++) {
      const small = await addSmallPath(work, round);
      spawnSync('sync');
      manifest = await ferry.build([closure.top, small], 4, (m) => incremental.push(m));
      const [base, delta] = manifest.storeDisks ?? [];
      if (!base?.cacheHit || !delta || delta.cacheHit) throw new Error(`round ${round}: expected the cached base and a new delta, got ${JSON.stringify(manifest.storeDisks)}`);
      deltaBytes.push(statSync(delta.path).blocks * 512);
      if (round === 1) e2fsckClean(delta.path, 'delta', log);
      log(`  incremental ${round}/${runs}: ${incremental.at(-1)!.seconds.toFixed(2)} s (store disks ${manifest.timings.storeDisks} ms)`);
    }
    const configOnly: Sample[] = [];
    for (let round = 1; round <= runs; round++) {
      spawnSync('sync');
      manifest = await ferry.build([closure.top], 10 + round, (m) => configOnly.push(m));
      if (!manifest.systemDisk.cacheHit || manifest.config.cacheHit || !(manifest.storeDisks ?? []).every((d) => d.cacheHit)) {
        throw new Error(`config-only round ${round} rebuilt more than the config archive`);
      }
      log(`  config-only ${round}/${runs}: ${configOnly.at(-1)!.seconds.toFixed(2)} s`);
    }

    const summary = tools.map((tool) => {
      const list = samples.get(tool)!;
      return {
        tool,
        medianSeconds: median(list.map((s) => s.seconds)),
        minSeconds: Math.min(...list.map((s) => s.seconds)),
        maxSeconds: Math.max(...list.map((s) => s.seconds)),
        medianCpuSeconds: median(list.map((s) => s.cpuSeconds)),
        peakRssMiB: Math.max(...list.map((s) => s.peakRssKiB)) / 1024,
        allocatedBytes: sizes.get(tool)!.allocated,
        apparentBytes: sizes.get(tool)!.apparent,
      };
    });
    const of = (tool: Tool) => summary.find((s) => s.tool === tool)!;
    const ratio = of('ferry').medianSeconds / of('mkfs.erofs (linux-builder)').medianSeconds;
    const report = {
      date: new Date().toISOString(),
      machine,
      loadAverageAfter: describeMachine().loadAverage,
      runs,
      closure: { paths: closure.paths.length, files: content.files, entries: content.entries, bytes: content.bytes },
      tools: summary,
      samples: Object.fromEntries(samples),
      ferryStoreDiskMs: median(ferryStoreMs),
      ratios: {
        ferryToErofs: ratio,
        ferryToErofs15: of('ferry').medianSeconds / of('mkfs.erofs 1.5 dir').medianSeconds,
        ferryToMke2fs: of('ferry').medianSeconds / of('mke2fs -d').medianSeconds,
      },
      incremental: { medianSeconds: median(incremental.map((s) => s.seconds)), samples: incremental, deltaAllocatedBytes: deltaBytes },
      configOnly: { medianSeconds: median(configOnly.map((s) => s.seconds)), samples: configOnly },
    };
    if (values.save) writeFileSync(values.save, `${JSON.stringify(report, null, 2)}\n`);
    if (values.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else process.stdout.write(format(report));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** `ferry image build` with a nix layer, in a cache of its own that shares the tests' downloads. */
class FerryBuilds {
  readonly env: Record<string, string>;
  private readonly images: string;

  constructor(work: string) {
    const cache = join(work, 'cache');
    mkdirSync(cache, { recursive: true });
    const downloads = join(cacheRoot(), 'ferry-cache', 'downloads');
    mkdirSync(downloads, { recursive: true });
    symlinkSync(downloads, join(cache, 'downloads'));
    this.images = join(cache, 'images');
    this.env = { ...(process.env as Record<string, string>), FERRY_CONFIG: join(work, 'ferry.toml'), FERRY_STATE_DIR: join(work, 'state'), FERRY_CACHE_DIR: cache };
  }

  /** One build with these nix-layer paths and max-jobs; `onSample` gets its time and RSS. */
  async build(paths: string[], maxJobs: number, onSample?: (sample: Sample) => void): Promise<Manifest> {
    writeFileSync(
      this.env.FERRY_CONFIG,
      `[guest]\npreset = "debian"\n\n[guest.nix]\nmax-jobs = ${maxJobs}\n\n[[image.layers]]\ntype = "nix"\npaths = ${JSON.stringify(paths)}\n`,
    );
    const result = await measure(FERRY, ['image', 'build', '--json'], this.env);
    onSample?.({ seconds: result.seconds, cpuSeconds: result.cpuSeconds, peakRssKiB: result.peakRssKiB });
    return JSON.parse(result.stdout) as Manifest;
  }

  /** The store disks and their records, so the next build writes its store disk anew. */
  removeStoreDisks(): void {
    if (!existsSync(this.images)) return;
    for (const name of readdirSync(this.images)) if (name.startsWith('store-')) rmSync(join(this.images, name), { force: true });
  }
}

/** A new small store path (a 2 KiB text file) for round `round` of this run. */
async function addSmallPath(work: string, round: number): Promise<string> {
  const file = join(work, `ferry-bench-small-${process.pid}-${Date.now()}-${round}.txt`);
  writeFileSync(file, `${'a small store path\n'.repeat(110)}${round}\n`);
  return (await execa('nix-store', ['--add', file])).stdout.trim();
}

/** A trixie chroot with erofs-utils (1.8, which has `--tar`), made once with mmdebstrap and unpacked. */
async function trixieErofs(log: (line: string) => void): Promise<string> {
  const tar = await cachedMmdebstrap(join(cacheRoot(), 'bench-tree'), ['--variant=essential', '--include=erofs-utils', 'trixie']);
  const dir = join(tar, '..', 'root');
  if (!existsSync(join(dir, 'usr', 'bin', 'mkfs.erofs'))) {
    log(`unpacking ${tar}`);
    const temp = `${dir}.tmp-${process.pid}`;
    mkdirSync(temp, { recursive: true });
    await execa('tar', ['-xpf', tar, '--numeric-owner', '-C', temp]);
    rmSync(dir, { recursive: true, force: true });
    await execa('mv', [temp, dir]);
  }
  const version = await execa('chroot', [dir, 'mkfs.erofs', '--version'], { reject: false });
  log(`linux-builder reference: ${(version.stdout || version.stderr).split('\n')[0]} (Debian trixie, in ${dir})`);
  return dir;
}

function format(r: {
  date: string;
  machine: ReturnType<typeof describeMachine>;
  loadAverageAfter: number[];
  runs: number;
  closure: { paths: number; files: number; entries: number; bytes: number };
  tools: Array<{ tool: string; medianSeconds: number; minSeconds: number; maxSeconds: number; medianCpuSeconds: number; peakRssMiB: number; allocatedBytes: number; apparentBytes: number }>;
  ferryStoreDiskMs: number;
  ratios: { ferryToErofs: number; ferryToErofs15: number; ferryToMke2fs: number };
  incremental: { medianSeconds: number; samples: Sample[]; deltaAllocatedBytes: number[] };
  configOnly: { medianSeconds: number; samples: Sample[] };
}): string {
  const rows = [
    ['tool', 'median s', 'min s', 'max s', 'CPU s', 'peak RSS MiB', 'allocated MiB', 'apparent MiB'],
    ...r.tools.map((t) => [t.tool, t.medianSeconds.toFixed(2), t.minSeconds.toFixed(2), t.maxSeconds.toFixed(2), t.medianCpuSeconds.toFixed(2), t.peakRssMiB.toFixed(0), mib(t.allocatedBytes), mib(t.apparentBytes)]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const table = rows.map((row) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ')).join('\n');
  const mark = (ok: boolean) => (ok ? 'ok' : 'MISSED');
  const ferry = r.tools.find((t) => t.tool === 'ferry')!;
  const range = (samples: Sample[]) => `${Math.min(...samples.map((s) => s.seconds)).toFixed(2)}–${Math.max(...samples.map((s) => s.seconds)).toFixed(2)} s`;
  return (
    `${r.date.slice(0, 10)}, ${r.machine.cpus} × ${r.machine.cpuModel}, ${r.machine.os}, Node ${r.machine.node}; median of ${r.runs}, page cache warm, every image synced; ` +
    `load average ${r.machine.loadAverage.join(' ')} before, ${r.loadAverageAfter.join(' ')} after\n\n` +
    `closure: ${r.closure.paths} store paths, ${r.closure.files.toLocaleString('en')} files, ${r.closure.entries.toLocaleString('en')} entries, ${mib(r.closure.bytes)} MiB of file data\n\n` +
    `${table}\n\n` +
    `ferry / mkfs.erofs as the linux-builder runs it: ${r.ratios.ferryToErofs.toFixed(2)}× (target ≤ ${TARGET_RATIO}×) ${mark(r.ratios.ferryToErofs <= TARGET_RATIO)}; ` +
    `peak RSS ${ferry.peakRssMiB.toFixed(0)} MB (target ≤ ${TARGET_RSS_MIB} MB) ${mark(ferry.peakRssMiB <= TARGET_RSS_MIB)}\n` +
    `ferry / mkfs.erofs 1.5 on the directory: ${r.ratios.ferryToErofs15.toFixed(2)}×; ferry / mke2fs -d: ${r.ratios.ferryToMke2fs.toFixed(2)}×\n` +
    `ferry's store disk alone (manifest timings, median): ${r.ferryStoreDiskMs} ms of the whole \`ferry image build\`\n\n` +
    `one small store path added (base cached, a delta written): median ${r.incremental.medianSeconds.toFixed(2)} s (${range(r.incremental.samples)}; target ≤ ${TARGET_INCREMENTAL_S} s) ${mark(r.incremental.medianSeconds <= TARGET_INCREMENTAL_S)}; ` +
    `delta ${(median(r.incremental.deltaAllocatedBytes) / 1024).toFixed(0)} KiB allocated\n` +
    `config-only rebuild (max-jobs changed): median ${r.configOnly.medianSeconds.toFixed(2)} s (${range(r.configOnly.samples)})\n`
  );
}

function checkPrerequisites(): void {
  if (process.getuid?.() !== 0) fail('run as root: the debian preset and the linux-builder reference (a chroot) need it');
  if (!existsSync(GNU_TIME)) fail(`${GNU_TIME} is missing: install the Debian package \`time\``);
  if (!existsSync(join(REPO, 'dist', 'cli.js'))) fail('dist/cli.js is missing: build ferry first with `npx tsc -p .`');
  for (const tool of ['mke2fs', 'mkfs.erofs', 'e2fsck', 'nix-store', 'nix-build', 'mmdebstrap', 'tar', 'chroot']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) fail(`${tool} is not on PATH (Debian packages e2fsprogs, erofs-utils, nix-bin, mmdebstrap)`);
  }
}

function fail(message: string): never {
  process.stderr.write(`bench/store-image: ${message}\n`);
  process.exit(2);
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/store-image: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
