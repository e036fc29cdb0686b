/**
 * The output image file. It is created sparse at its final size and written with positional
 * writes, so blocks that are never written (free space, file holes, unused inode tables) stay
 * holes in the host file too.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';

export class ImageFile {
  private readonly fd: number;

  constructor(path: string, sizeBytes: number) {
    this.fd = openSync(path, 'wx', 0o644);
    ftruncateSync(this.fd, sizeBytes);
  }

  writeAt(data: Uint8Array, position: number): void {
    let done = 0;
    while (done < data.length) {
      done += writeSync(this.fd, data, done, data.length - done, position + done);
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
