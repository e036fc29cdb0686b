/**
 * The output image file. It is created sparse at its final size and written with positional
 * writes, so blocks that are never written (free space, file holes, unused inode tables) stay
 * holes in the host file too.
 */
import { closeSync, fsyncSync, ftruncateSync, openSync, rmSync, writeSync } from 'node:fs';

export class ImageFile {
  private fd: number | undefined;

  /** Creates `path` (which must not exist); on failure nothing is left behind. */
  constructor(path: string, sizeBytes: number) {
    const fd = openSync(path, 'wx', 0o644);
    try {
      ftruncateSync(fd, sizeBytes);
    } catch (error) {
      closeSync(fd);
      rmSync(path, { force: true });
      throw error;
    }
    this.fd = fd;
  }

  writeAt(data: Uint8Array, position: number): void {
    if (this.fd === undefined) throw new Error('internal: write to a closed image file');
    let done = 0;
    while (done < data.length) {
      done += writeSync(this.fd, data, done, data.length - done, position + done);
    }
  }

  /** Puts everything written on the disk (on macOS a full sync: atomic-file.ts says why). */
  sync(): void {
    if (this.fd === undefined) throw new Error('internal: sync of a closed image file');
    fsyncSync(this.fd);
  }

  /**
   * Closes the file; a second call does nothing. (A second `closeSync` of the same descriptor
   * threw EBADF, which hid the error that led to it and skipped removing the temporary file.)
   */
  close(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    this.fd = undefined;
    closeSync(fd);
  }
}
