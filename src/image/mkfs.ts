/**
 * `ferry image mkfs`: the ext4 writer on its own. Sources (directories or tarballs) are layered
 * in order into one tree and written to an image; nothing but ferry's own code is used.
 */
import { stat } from 'node:fs/promises';
import { FerryError, ExitCode } from '../errors.js';
import { writeExt4, type Ext4Progress, type Ext4Result } from './ext4/index.js';
import { guard } from './user-errors.js';
import { layerFromPath, type Layer } from './layers/index.js';
import { Tree } from './tree.js';

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
    await checkOutputDirectory(options.output);
    for (const layer of layers) {
      options.onStep?.(`reading ${layer.description}`);
      await layer.apply(tree);
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

async function checkOutputDirectory(output: string): Promise<void> {
  const st = await stat(output).catch(() => undefined);
  if (st?.isDirectory()) throw new FerryError(`output ${output} is a directory; expected an image file path`, { exitCode: ExitCode.CantCreate });
}
