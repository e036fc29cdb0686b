/**
 * File changes made by install and uninstall: written atomically, compared first (an unchanged
 * file is not touched, so a second install changes nothing), noted in the install record, and
 * reported line by line. In a dry run the same decisions are made and reported, and nothing is
 * written.
 */
import { existsSync, lstatSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { guardFs, type Report, type SystemWrites } from './privileged.js';
import { noteDir, noteFile, sha256, type InstallRecord } from './record.js';

// Their home is privileged.ts, which performs the writes; named here too for install and uninstall.
export { guardFs, type Report } from './privileged.js';

export type WriteOutcome = 'created' | 'updated' | 'unchanged';

export class FileWriter {
  /** How many files or directories were (or, in a dry run, would be) created or changed. */
  changes = 0;

  constructor(
    private readonly record: InstallRecord,
    private readonly dryRun: boolean,
    private readonly report: Report,
    /** Does the writing: directly, or through sudo for root's files when ferry runs as a user. */
    private readonly system: SystemWrites,
  ) {}

  private get verb() {
    return this.dryRun ? 'would ' : '';
  }

  /** mkdir -p, noting each directory it creates. */
  async ensureDir(dir: string, mode = 0o755): Promise<void> {
    const missing: string[] = [];
    for (let current = dir; !existsSync(current); current = path.dirname(current)) missing.unshift(current);
    for (const created of missing) {
      await this.system.makeDir(created, mode);
      noteDir(this.record, created);
      this.changes += 1;
    }
  }

  async write(file: string, content: string | Buffer, mode = 0o644, what = ''): Promise<WriteOutcome> {
    const data = typeof content === 'string' ? Buffer.from(content) : content;
    const before = existsSync(file) || isSymlink(file) ? guardFs(file, () => readFileSync(file)) : undefined;
    const beforeMode = before ? lstatSync(file).mode & 0o7777 : undefined;
    const label = what ? ` (${what})` : '';
    if (before && before.equals(data) && beforeMode === mode) {
      this.report(`unchanged ${file}${label}`);
      return 'unchanged';
    }
    noteFile(this.record, {
      path: file,
      action: before ? 'modified' : 'created',
      previous: before?.toString('base64'),
      previousMode: beforeMode,
      sha256: sha256(data),
    });
    this.changes += 1;
    // Reported first, so a sudo command that follows reads as the way this change is made.
    this.system.say(file, `${this.verb}${before ? 'update' : 'create'} ${file}${label}`);
    await this.ensureDir(path.dirname(file));
    await this.system.writeFile(file, data, mode);
    return before ? 'updated' : 'created';
  }

  /** Notes a file something else (a key generator) created during install. */
  noteCreated(file: string, what = ''): void {
    if (this.dryRun) {
      this.report(`would create ${file}${what ? ` (${what})` : ''}`);
      this.changes += 1;
      return;
    }
    noteFile(this.record, { path: file, action: 'created', sha256: sha256(readFileSync(file)) });
    this.changes += 1;
    this.report(`create ${file}${what ? ` (${what})` : ''}`);
  }
}

export function isSymlink(file: string): boolean {
  try {
    return lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

export function readIfExists(file: string): Buffer | undefined {
  return existsSync(file) ? guardFs(file, () => readFileSync(file)) : undefined;
}

export function removeFile(file: string): void {
  guardFs(file, () => rmSync(file, { force: true }));
}
