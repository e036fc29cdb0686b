/**
 * The install record (paths.installRecord, JSON): every file and directory `ferry install` wrote,
 * with the bytes a modified file had before, so `ferry uninstall` removes exactly those and puts
 * a file like /etc/nix/machines back byte for byte. A later install merges into it and keeps the
 * first "before" — an upgrade must not make ferry's own lines the thing uninstall restores.
 *
 * Install saves it before each change, not after: killed at any point (SIGKILL while it builds
 * the image), it leaves a record of everything it did and of at most one change it was about to
 * make, which uninstall finds not made (absent, or still as before) and skips.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomicSync } from '../atomic-file.js';
import { ExitCode, FerryError } from '../errors.js';

export interface RecordedFile {
  path: string;
  /** 'created': absent before install; 'modified': existed, `previous` holds its bytes. */
  action: 'created' | 'modified';
  /** base64 of the content before install (modified files only). */
  previous?: string;
  previousMode?: number;
  /**
   * sha256 (hex) of what install wrote last: uninstall only removes/restores a file still like
   * that. '' while another writer (the key generator) has yet to make it.
   */
  sha256: string;
  /**
   * What an earlier install wrote, while a later one rewrites the file: stopped before its write
   * landed, the file still holds these bytes, and they are ferry's as much as the new ones.
   */
  earlierSha256?: string;
}

export interface InstallRecord {
  version: 1;
  platform: NodeJS.Platform;
  system: boolean;
  root: string;
  files: RecordedFile[];
  /** Directories install created (parents before children). */
  dirs: string[];
  service?: { kind: 'launchd' | 'systemd'; file: string; label: string };
  installedAt: string;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export function emptyRecord(platform: NodeJS.Platform, system: boolean, root: string): InstallRecord {
  return { version: 1, platform, system, root, files: [], dirs: [], installedAt: new Date().toISOString() };
}

/**
 * The record, or undefined when there is none. A damaged one (bad JSON, not a record) is a
 * FerryError naming the file, thrown before anything is changed: install and uninstall both
 * work from it, and a guess would remove or keep the wrong files.
 */
export function readRecord(file: string): InstallRecord | undefined {
  if (!existsSync(file)) return undefined;
  const damaged = (what: string, cause?: unknown) =>
    new FerryError(`the install record ${file} is damaged: ${what}; nothing was changed`, {
      exitCode: ExitCode.DataError,
      cause,
      hint: 'it lists what `ferry install` wrote; restore it from a backup, or remove the files it names by hand and then the record',
    });
  let record: Partial<InstallRecord> | null;
  try {
    record = JSON.parse(readFileSync(file, 'utf8')) as Partial<InstallRecord> | null;
  } catch (error) {
    if (error instanceof SyntaxError) throw damaged(`not valid JSON (${error.message})`, error);
    throw new FerryError(`cannot read the install record ${file}: ${(error as Error).message}`, { exitCode: ExitCode.NoInput, cause: error });
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record) || record.version !== 1 || !Array.isArray(record.files) || !Array.isArray(record.dirs)) {
    throw damaged('not an install record (expected an object with "version": 1, "files" and "dirs" lists)');
  }
  return record as InstallRecord;
}

/** Notes a file written by install; the first "before" wins. */
export function noteFile(record: InstallRecord, entry: RecordedFile): void {
  const existing = record.files.find((file) => file.path === entry.path);
  if (!existing) record.files.push(entry);
  else if (existing.sha256 !== entry.sha256) {
    if (existing.sha256 !== '') existing.earlierSha256 = existing.sha256;
    existing.sha256 = entry.sha256;
  }
}

/** Is `sha` the hash of bytes install wrote to this file (this time or the time before)? */
export function writtenByInstall(file: RecordedFile, sha: string): boolean {
  return sha === file.sha256 || sha === file.earlierSha256;
}

export function noteDir(record: InstallRecord, dir: string): void {
  if (!record.dirs.includes(dir)) record.dirs.push(dir);
}

/** Written atomically: a kill during the save leaves the previous record, never half of one. */
export function saveRecord(file: string, record: InstallRecord): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileAtomicSync(file, `${JSON.stringify(record, null, 2)}\n`, 0o600);
}
