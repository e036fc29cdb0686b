import type { Tree } from '../tree.js';

/**
 * A layer adds files to the image tree. Layers are applied in order; a later layer's entries
 * override an earlier layer's at the same path.
 */
export interface Layer {
  /** Human-readable, for progress and errors: e.g. `tar /path/rootfs.tar.zst`. */
  readonly description: string;
  /**
   * A hash of everything this layer will put in the tree (for the image cache). Must be cheap
   * compared with `apply` where possible (e.g. file size + mtime for a tarball).
   */
  fingerprint(): Promise<string>;
  /** Adds this layer's entries to the tree (metadata only; contents are read when writing). */
  apply(tree: Tree): Promise<void>;
}

export class LayerError extends Error {
  constructor(
    readonly layer: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${layer}: ${message}`, options);
    this.name = 'LayerError';
  }
}
