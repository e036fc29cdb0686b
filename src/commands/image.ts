/** `ferry image …`: build and inspect guest images. */
import type { Command } from 'commander';
import { parseSize } from '../config/units.js';
import { ExitCode, FerryError } from '../errors.js';
import { resolvePaths } from '../config/paths.js';
import { createProgress, formatDurationMs, humanBytes, writerProgress } from '../ui/progress.js';

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('build and inspect guest images');

  image
    .command('mkfs')
    .description('write an ext4 image from directories and tarballs (plain, gzip, xz, zstd), later sources overriding earlier ones')
    .argument('<source...>', 'directories or tarballs, applied in order')
    .requiredOption('-o, --output <image>', 'the image file to write: a new path or a regular file, replaced atomically')
    .option('--size <size>', 'image size, e.g. 2GiB (default: the content plus headroom)')
    .option('--label <label>', 'volume label, at most 16 bytes')
    .option('--json', 'print the result as JSON on stdout')
    .addHelpText(
      'after',
      '\nThe output is replaced only if it is a regular file. Anything else at that path is refused:\n' +
        'a directory, a device, a FIFO or a socket, and a symlink, which is not followed (name its target).\n' +
        'A /lost+found in the sources must be a directory (or absent; one is made).\n' +
        'Exit codes: 0 ok, 64 usage, 65 bad input (e.g. a tarball entry escaping the root), 66 a source is missing,\n' +
        '73 cannot write the image (the output directory is missing, the output is not a regular file or cannot be replaced).',
    )
    .action(async (sources: string[], opts: { output: string; size?: string; label?: string; json?: boolean }) => {
      let sizeBytes: number | undefined;
      if (opts.size !== undefined) {
        const parsed = parseSize(opts.size);
        if (!parsed.ok) throw new FerryError(`--size: ${parsed.message}`, { exitCode: ExitCode.Usage });
        sizeBytes = parsed.value;
      }
      const progress = createProgress({ quiet: opts.json });
      // Loaded on use, so `ferry --help` and other commands start fast and small.
      const { mkfs } = await import('../image/mkfs.js');
      const result = await mkfs({
        sources,
        output: opts.output,
        sizeBytes,
        label: opts.label,
        ...writerProgress(progress),
      });
      progress.done();
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      } else {
        process.stdout.write(
          `${result.path}: ${humanBytes(result.sizeBytes)} ext4, ${result.usedInodes} inodes used, ` +
            `${humanBytes(result.usedBlocks * 4096)} used, UUID ${result.uuid} ` +
            `(read ${formatDurationMs(result.timings.layersMs)}, wrote ${formatDurationMs(result.timings.writeMs)})\n`,
        );
      }
    });

  image
    .command('build')
    .description('build the guest image (system disk, initramfs, generated config) into the content-addressed cache')
    .option('-c, --config <file>', 'the config file (default: $FERRY_CONFIG or the platform default)')
    .option('--json', 'print the manifest (paths, hashes, sizes, timings) as JSON on stdout')
    .option('--refresh', 'look for newer base packages (kernel, busybox) instead of reusing the ones fetched before')
    .addHelpText(
      'after',
      '\nUnchanged inputs are a cache hit. A change of generated files only (keys, nix.conf, users)\n' +
        'rebuilds only the small config archive; the system disk is not read or rewritten.\n' +
        'Exit codes: 0 ok, 65 bad layer, 66 missing input, 69 a tool or package is unavailable, 78 bad config.',
    )
    .action(async (opts: { config?: string; json?: boolean; refresh?: boolean }) => {
      if (!opts.json) return buildCommand(opts);
      // A script reading --json gets an object on failure too; the message on stderr and the
      // exit code stay what they are without --json.
      try {
        await buildCommand(opts);
      } catch (error) {
        process.stdout.write(`${JSON.stringify(jsonError(error), null, 2)}\n`);
        throw error;
      }
    });
}

async function buildCommand(opts: { config?: string; json?: boolean; refresh?: boolean }): Promise<void> {
  const paths = resolvePaths({ configFile: opts.config });
  const { loadConfig } = await import('../config/load.js');
  const { buildImage } = await import('../image/build.js');
  const { ferryKeys } = await import('../keys/ferry-keys.js');
  const config = await loadConfig(paths.configFile, { mustExist: paths.configFileNamedBy });
  const progress = createProgress({ quiet: opts.json });
  const manifest = await buildImage({
    config,
    paths,
    keys: ferryKeys(paths),
    refresh: opts.refresh,
    ...writerProgress(progress),
  });
  progress.done();
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
    return;
  }
  const part = (name: string, p: { path: string; sizeBytes: number; cacheHit: boolean }) =>
    `  ${name.padEnd(12)} ${p.cacheHit ? 'cached ' : 'built  '} ${humanBytes(p.sizeBytes).padStart(10)}  ${p.path}\n`;
  process.stdout.write(
    `image ${manifest.id} (${manifest.preset}, ${manifest.system}, kernel ${manifest.kernel.version})\n` +
      part('system disk', manifest.systemDisk) +
      (manifest.storeDisks ?? []).map((disk, i) => part(i === 0 ? 'store disk' : 'store delta', disk)).join('') +
      part('initramfs', manifest.initramfs) +
      part('config', manifest.config) +
      part('initrd', manifest.initrd) +
      `  manifest     ${manifest.manifestPath}\n`,
  );
}

/** What `--json` prints when a command fails: the message, the exit code the command ends with, the hint. */
function jsonError(error: unknown): { error: string; exitCode: number; hint?: string } {
  if (error instanceof FerryError) return { error: error.message, exitCode: error.exitCode, ...(error.hint === undefined ? {} : { hint: error.hint }) };
  return { error: `internal error: ${error instanceof Error ? error.message : String(error)}`, exitCode: ExitCode.Software };
}
