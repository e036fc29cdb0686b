/**
 * The install record (paths.installRecord, JSON): every file and directory `ferry install` wrote,
 * with the bytes a modified file had before, so `ferry uninstall` removes exactly those and puts
 * a file like /etc/nix/machines back byte for byte. A later install merges into it and keeps the
 * first "before" — an upgrade must not make ferry's own lines the thing uninstall restores.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { ExitCode, FerryError } from '../errors.js';

export interface RecordedFile {
  path: string;
  /** 'created': absent before install; 'modified': existed, `previous` holds its bytes. */
  action: 'created' | 'modified';
  /** base64 of the content before install (modified files only). */
  previous?: string;
  previousMode?: number;
  /** sha256 (hex) of what install wrote last: uninstall only removes/restores a file still like that. */
  sha256: string;
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

export function readRecord(file: string): InstallRecord | undefined {
  if (!existsSync(file)) return undefined;
  try {
    const record = JSON.parse(readFileSync(file, 'utf8')) as InstallRecord;
    if (record.version !== 1 || !Array.isArray(record.files) || !Array.isArray(record.dirs)) throw new Error('unknown format');
    return record;
  } catch (error) {
    throw new FerryError(`the install record ${file} is not readable: ${(error as Error).message}`, {
      exitCode: ExitCode.DataError,
      hint: 'it lists what `ferry install` wrote; restore it from a backup, or remove the files it names by hand',
    });
  }
}

/** Notes a file written by install; the first "before" wins. */
export function noteFile(record: InstallRecord, entry: RecordedFile): void {
  const existing = record.files.find((file) => file.path === entry.path);
  if (existing) existing.sha256 = entry.sha256;
  else record.files.push(entry);
}

export function noteDir(record: InstallRecord, dir: string): void {
  if (!record.dirs.includes(dir)) record.dirs.push(dir);
}
