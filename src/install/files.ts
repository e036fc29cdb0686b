/**
 * File changes made by install and uninstall: written atomically, compared first (an unchanged
 * file is not touched, so a second install changes nothing), noted in the install record, and
 * reported line by line. In a dry run the same decisions are made and reported, and nothing is
 * written.
 *
 * Each change is noted and the record saved to disk before the change is made, so a kill at any
 * point leaves a record that `ferry uninstall` undoes (see record.ts).
 */
import { existsSync, lstatSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { guardFs, type Report, type SystemWrites } from './privileged.js';
import { noteDir, noteFile, saveRecord, sha256, type InstallRecord } from './record.js';

// Their home is privileged.ts, which performs the writes; named here too for install and uninstall.
export { guardFs, type Report } from './privileged.js';

export type WriteOutcome = 'created' | 'updated' | 'unchanged';

/** A file another writer (a key generator) makes, and what to call it in the report. */
export interface MadeFile {
  file: string;
  what?: string;
}

export class FileWriter {
  /** How many files or directories were (or, in a dry run, would be) created or changed. */
  changes = 0;

  constructor(
    private readonly record: InstallRecord,
    private readonly dryRun: boolean,
    private readonly report: Report,
    /** Does the writing: directly, or through sudo for root's files when ferry runs as a user. */
    private readonly system: SystemWrites,
    /** Where the record is saved before each change (none: kept in memory only). */
    private readonly recordFile?: string,
  ) {}

  private get verb() {
    return this.dryRun ? 'would ' : '';
  }

  /**
   * Saves the record before a change. The record's own directories come first, noted in it: they
   * cannot be listed in a record on disk before they exist, so only the instant between their
   * mkdir and this first save is not covered.
   */
  private async saveBeforeChange(): Promise<void> {
    if (this.dryRun || !this.recordFile) return;
    const missing = missingDirs(path.dirname(this.recordFile));
    for (const dir of missing) {
      noteDir(this.record, dir);
      await this.system.makeDir(dir, 0o700);
      this.changes += 1;
    }
    saveRecord(this.recordFile, this.record);
  }

  /** mkdir -p, noting each directory it creates. */
  async ensureDir(dir: string, mode = 0o755): Promise<void> {
    for (const created of missingDirs(dir)) {
      noteDir(this.record, created);
      await this.saveBeforeChange();
      // The record's own directory may be among them, just made by saveBeforeChange.
      if (existsSync(created)) continue;
      await this.system.makeDir(created, mode);
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
    await this.saveBeforeChange();
    await this.system.writeFile(file, data, mode);
    return before ? 'updated' : 'created';
  }

  /**
   * Files something else makes (`make`: a key generator), those absent now noted and saved
   * first, then hashed and reported once made. In a dry run only reported; `make` is not run.
   */
  async made<T>(files: readonly MadeFile[], make: () => T): Promise<T | undefined> {
    const fresh = files.filter(({ file }) => !existsSync(file));
    if (this.dryRun) {
      for (const { file, what } of fresh) this.report(`would create ${file}${what ? ` (${what})` : ''}`);
      this.changes += fresh.length;
      return undefined;
    }
    for (const { file } of fresh) noteFile(this.record, { path: file, action: 'created', sha256: '' });
    if (fresh.length > 0) await this.saveBeforeChange();
    const result = make();
    for (const { file, what } of fresh) {
      noteFile(this.record, { path: file, action: 'created', sha256: sha256(readFileSync(file)) });
      this.changes += 1;
      this.report(`create ${file}${what ? ` (${what})` : ''}`);
    }
    return result;
  }
}

/** `dir` and those of its parents that do not exist, outermost first. */
function missingDirs(dir: string): string[] {
  const missing: string[] = [];
  for (let current = dir; !existsSync(current); current = path.dirname(current)) missing.unshift(current);
  return missing;
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
