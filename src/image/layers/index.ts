/**
 * Makes a layer from a host path: a directory becomes a `dir` layer, a file a `tar` layer
 * (compressed or not; the compression is recognised when the archive is read).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DirLayer, type DirLayerOptions } from './dir.js';
import { LayerError, type Layer } from './layer.js';
import { TarLayer, type TarLayerOptions } from './tar.js';

export { DirLayer, type DirLayerOptions } from './dir.js';
export { LayerError, type Layer } from './layer.js';
export { TarLayer, type TarLayerOptions } from './tar.js';

export interface PathLayerOptions {
  /** Keep owners from the source; default: true for tarballs, false for directories. */
  keepOwners?: boolean;
}

export async function layerFromPath(path: string, options: PathLayerOptions = {}): Promise<Layer> {
  const absolute = resolve(path);
  let isDirectory: boolean;
  try {
    const st = await stat(absolute);
    if (!st.isDirectory() && !st.isFile()) {
      throw new LayerError(`layer ${absolute}`, 'expected a directory or a tarball, found another kind of file');
    }
    isDirectory = st.isDirectory();
  } catch (err) {
    if (err instanceof LayerError) throw err;
    throw new LayerError(`layer ${absolute}`, `expected a directory or a tarball: ${(err as Error).message}`, { cause: err });
  }
  const layerOptions: DirLayerOptions & TarLayerOptions =
    options.keepOwners === undefined ? {} : { keepOwners: options.keepOwners };
  return isDirectory ? new DirLayer(absolute, layerOptions) : new TarLayer(absolute, layerOptions);
}
