/** The writer's error for what it cannot write: a label too long, content that does not fit, a file that changed while read. */
export class Ext4Error extends Error {}
