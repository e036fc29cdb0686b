/** `ferry image …`: build and inspect guest images. */
import type { Command } from 'commander';
import { parseSize } from '../config/units.js';
import { ExitCode, FerryError } from '../errors.js';
import { mkfs } from '../image/mkfs.js';
import { createProgress, formatDurationMs, humanBytes } from '../ui/progress.js';

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('build and inspect guest images');

  image
    .command('mkfs')
    .description('write an ext4 image from directories and tarballs (plain, gzip, xz, zstd), later sources overriding earlier ones')
    .argument('<source...>', 'directories or tarballs, applied in order')
    .requiredOption('-o, --output <image>', 'the image file to write (replaced atomically)')
    .option('--size <size>', 'image size, e.g. 2GiB (default: the content plus headroom)')
    .option('--label <label>', 'volume label, at most 16 bytes')
    .option('--json', 'print the result as JSON on stdout')
    .addHelpText('after', '\nExit codes: 0 ok, 64 usage, 65 bad input (e.g. a tarball entry escaping the root), 66 a source is missing, 73 cannot write the image.')
    .action(async (sources: string[], opts: { output: string; size?: string; label?: string; json?: boolean }) => {
      let sizeBytes: number | undefined;
      if (opts.size !== undefined) {
        const parsed = parseSize(opts.size);
        if (!parsed.ok) throw new FerryError(`--size: ${parsed.message}`, { exitCode: ExitCode.Usage });
        sizeBytes = parsed.value;
      }
      const progress = createProgress({ quiet: opts.json });
      const result = await mkfs({
        sources,
        output: opts.output,
        sizeBytes,
        label: opts.label,
        onStep: (label) => progress.step(label),
        onProgress: (p) => p.phase === 'data' && progress.update(p.done, p.total, 'bytes'),
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
}
