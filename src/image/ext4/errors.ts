/** The writer's error for what it cannot write: a label too long, content that does not fit, a file that changed while read. */
export class Ext4Error extends Error {}

/**
 * The image could not be created or put in place at the output path (a missing directory, an
 * output that cannot be replaced): the fault is the output's, not the content's.
 */
export class Ext4OutputError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'Ext4OutputError';
  }
}
