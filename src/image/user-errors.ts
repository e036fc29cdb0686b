/**
 * The image code's errors (a bad layer, a path escaping the root, an image that does not fit)
 * turned into errors for people, with exit codes that tell them apart. Shared by
 * `ferry image mkfs` and `ferry image build`.
 */
import { ExitCode, FerryError } from '../errors.js';
import { Ext4Error, Ext4OutputError } from './ext4/index.js';
import { LayoutError } from './ext4/layout.js';
import { LayerError } from './layers/layer.js';
import { TreeError } from './tree.js';

/** Turns the image code's errors into errors for people, with exit codes that tell them apart. */
export async function guard<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof FerryError) throw error;
    if (error instanceof LayerError) {
      const missing = /ENOENT|no such file/i.test(error.message);
      throw new FerryError(error.message, { exitCode: missing ? ExitCode.NoInput : ExitCode.DataError, cause: error });
    }
    if (error instanceof Ext4OutputError) throw new FerryError(error.message, { exitCode: ExitCode.CantCreate, cause: error });
    if (error instanceof TreeError) throw new FerryError(error.message, { exitCode: ExitCode.DataError, cause: error });
    if (error instanceof Ext4Error || error instanceof LayoutError) throw new FerryError(error.message, { exitCode: ExitCode.DataError, cause: error });
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOSPC' || code === 'EROFS') {
      throw new FerryError((error as Error).message, { exitCode: code === 'ENOENT' ? ExitCode.NoInput : ExitCode.CantCreate, cause: error });
    }
    throw error;
  }
}
