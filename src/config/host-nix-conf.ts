/**
 * The host's Nix settings as its nix-daemon reads them: /etc/nix/nix.conf and what it includes.
 * The guest's binary caches follow these (guest.nix.substituters = "host").
 *
 * Read from the files, not from `nix show-config`: that answers with the settings of whoever runs
 * it (~/.config/nix/nix.conf, NIX_CONFIG), so `ferry image build` in a shell and the daemon under
 * launchd or systemd would see different caches and build two different config archives from one
 * host. The system's files are what the host's nix-daemon substitutes from, and the same for both.
 * They need no Nix either: a host without one has no file, and the guest keeps Nix's defaults.
 *
 * Nix's rules (libutil/config.cc): `#` starts a comment; `include PATH` (relative to the including
 * file's directory) must exist, `!include PATH` may not; `NAME = VALUE…` sets a setting and a
 * later one replaces it; `extra-NAME = VALUE…` appends to NAME.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

/** /etc/nix/nix.conf: where a multi-user Nix (the official installer, Determinate, nix-darwin) keeps it. */
export const HOST_NIX_CONF = '/etc/nix/nix.conf';

/** One list setting as the files leave it: `value` when NAME is set, and what extra-NAME adds. */
export interface NixListSetting {
  /** Set by `NAME = …` (possibly empty); undefined when only Nix's default applies. */
  readonly value?: readonly string[];
  /** Appended by `extra-NAME = …`, after `value` (or after Nix's default). */
  readonly extra: readonly string[];
}

export interface HostNixSettings {
  readonly substituters: NixListSetting;
  readonly trustedPublicKeys: NixListSetting;
}

/**
 * Assignments in the order Nix applies them, includes expanded in place. `files`, when given,
 * collects every file named on the way (read or missing): what a watcher of these settings watches.
 */
export function nixConfAssignments(
  file: string,
  read: (file: string) => string | undefined = readText,
  files?: string[],
): Array<{ name: string; words: string[] }> {
  const out: Array<{ name: string; words: string[] }> = [];
  const visit = (current: string, depth: number) => {
    if (depth <= 16 && files && !files.includes(current)) files.push(current);
    // A missing `include` is an error to Nix; for reading settings it is the same as an empty file.
    const text = read(current);
    if (text === undefined || depth > 16) return; // > 16: an include loop, which Nix would fail on
    for (const raw of text.split('\n')) {
      const words = raw.replace(/#.*/, '').trim().split(/\s+/).filter((word) => word !== '');
      if (words.length === 0) continue;
      if ((words[0] === 'include' || words[0] === '!include') && words.length === 2) {
        visit(path.resolve(path.dirname(current), words[1]), depth + 1);
        continue;
      }
      if (words.length < 2 || words[1] !== '=') continue;
      out.push({ name: words[0], words: words.slice(2) });
    }
  };
  visit(file, 0);
  return out;
}

/** The list setting `name` after every assignment and extra- of it. */
export function listSetting(assignments: ReadonlyArray<{ name: string; words: string[] }>, name: string): NixListSetting {
  let value: string[] | undefined;
  let extra: string[] = [];
  for (const assignment of assignments) {
    if (assignment.name === name) {
      // A later NAME = replaces what came before, extras included.
      value = [...assignment.words];
      extra = [];
    } else if (assignment.name === `extra-${name}`) extra.push(...assignment.words);
  }
  return { value, extra };
}

/** The host's binary caches and their keys, from its nix.conf (nothing set where it has none). */
export function readHostNixSettings(file = HOST_NIX_CONF, read: (file: string) => string | undefined = readText): HostNixSettings {
  const assignments = nixConfAssignments(file, read);
  return { substituters: listSetting(assignments, 'substituters'), trustedPublicKeys: listSetting(assignments, 'trusted-public-keys') };
}

/** The host's nix.conf and every file it includes (present or not, since one may appear later). */
export function hostNixConfFiles(file = HOST_NIX_CONF): string[] {
  const files: string[] = [];
  nixConfAssignments(file, readText, files);
  return files;
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    // Absent or unreadable (no Nix here, or a file only root may read): Nix's defaults apply.
    return undefined;
  }
}
