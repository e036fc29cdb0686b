/**
 * `ferry image mkfs`: the ext4 writer on its own. Sources (directories or tarballs) are layered
 * in order into one tree and written to an image; nothing but ferry's own code is used.
 */
import { lstat, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { FerryError, ExitCode } from '../errors.js';
import { writeExt4, type Ext4Progress, type Ext4Result } from './ext4/index.js';
import { lostFoundMessage } from './ext4/plan.js';
import { guard } from './user-errors.js';
import { layerFromPath, type Layer } from './layers/index.js';
import { Tree, type Inode } from './tree.js';

export interface MkfsOptions {
  sources: string[];
  output: string;
  sizeBytes?: number;
  label?: string;
  onStep?: (label: string) => void;
  onProgress?: (progress: Ext4Progress) => void;
}

export interface MkfsResult extends Ext4Result {
  layers: string[];
  timings: { layersMs: number; writeMs: number };
}

export async function mkfs(options: MkfsOptions): Promise<MkfsResult> {
  const tree = new Tree();
  const layers: Layer[] = [];
  const started = performance.now();
  await guard(async () => {
    for (const source of options.sources) layers.push(await layerFromPath(source));
    await checkOutput(options.output);
    // Which layer put a /lost+found that is not a directory, so the refusal can name it.
    let lostFound: Inode | undefined;
    let lostFoundFrom = '';
    for (const layer of layers) {
      options.onStep?.(`reading ${layer.description}`);
      await layer.apply(tree);
      const now = tree.root.children?.get('lost+found');
      if (now !== lostFound) [lostFound, lostFoundFrom] = [now, layer.description];
    }
    if (lostFound && lostFound.kind !== 'dir') {
      throw new FerryError(`${lostFoundFrom}: ${lostFoundMessage(lostFound.kind)}`, { exitCode: ExitCode.DataError });
    }
  });
  const layersDone = performance.now();
  options.onStep?.(`writing ${options.output}`);
  const result = await guard(() =>
    writeExt4(tree, options.output, { sizeBytes: options.sizeBytes, label: options.label, onProgress: options.onProgress }),
  );
  return {
    ...result,
    layers: layers.map((l) => l.description),
    timings: { layersMs: Math.round(layersDone - started), writeMs: Math.round(performance.now() - layersDone) },
  };
}

/**
 * The output must be a new path or a regular file, which the finished image replaces by a rename.
 * Anything else there is refused before any work: a device, FIFO or socket would be replaced by
 * a regular file (it once replaced a machine's /dev/null), and a symlink is not followed — the
 * rename would replace the link itself, not what it points to — so the user names the target.
 */
async function checkOutput(output: string): Promise<void> {
  const refuse = (message: string) => new FerryError(message, { exitCode: ExitCode.CantCreate });
  const st = await lstat(output).catch(() => undefined);
  if (st?.isDirectory()) throw refuse(`output ${output} is a directory; expected an image file path`);
  if (output.endsWith('/')) throw refuse(`output ${output} ends with '/'; expected an image file path, not a directory`);
  if (st?.isSymbolicLink()) throw refuse(`output ${output} is a symlink; ferry does not write through it: give the path it points to`);
  if (st && !st.isFile()) throw refuse(`output ${output} exists and is ${kindOf(st)}, not a regular file; ferry only replaces regular files`);
  if (!st) {
    const directory = dirname(output);
    const parent = await stat(directory).catch(() => undefined);
    if (!parent) throw refuse(`the output directory ${directory} does not exist`);
    if (!parent.isDirectory()) throw refuse(`the output directory ${directory} is not a directory`);
  }
}

function kindOf(st: { isCharacterDevice(): boolean; isBlockDevice(): boolean; isFIFO(): boolean; isSocket(): boolean }): string {
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}
