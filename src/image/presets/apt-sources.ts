/**
 * Where ferry's private apt state (apt.ts) fetches a Debian suite from: the mirror and keyring of
 * the host's own configured Debian source (/etc/apt/sources.list.d/*.sources in deb822 form,
 * /etc/apt/sources.list and *.list in one-line form), so a host behind a local mirror keeps using
 * it, and the key apt already trusts for it. Only read: the host's apt configuration is never
 * changed. The target suite's own sources (SUITE, SUITE-updates, SUITE-security) are written from
 * them in deb822 form.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** One `deb` source of the host's: the fields ferry reads. */
export interface HostSource {
  uris: string[];
  suites: string[];
  components: string[];
  /** A keyring path, or an inline armored key (deb822 allows either); undefined when not given. */
  signedBy?: string;
}

/** What ferry's sources are made from: the archive and the security archive, each with its key. */
export interface DebianMirror {
  archive: { uri: string; signedBy?: string };
  security?: { uri: string; signedBy?: string };
}

/** Debian's names for its releases, as suites appear in sources (with -updates, -security …). */
const DEBIAN_SUITE = /^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)(-updates|-security|-backports|-proposed-updates|\/updates)?$/;

/** Used where the host has no Debian source of its own (another distribution). */
const FALLBACK: DebianMirror = {
  archive: { uri: 'http://deb.debian.org/debian', signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg' },
  security: { uri: 'http://deb.debian.org/debian-security', signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg' },
};

/** The deb822 paragraphs of a .sources file (comments dropped, continuation lines joined by newlines). */
export function parseDeb822(text: string): Array<Map<string, string>> {
  const paragraphs: Array<Map<string, string>> = [];
  let current = new Map<string, string>();
  let key: string | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (line.trim() === '') {
      if (current.size > 0) paragraphs.push(current);
      current = new Map();
      key = undefined;
    } else if (/^\s/.test(line) && key !== undefined) {
      // An inline key's empty lines are written as " ." (deb822).
      current.set(key, `${current.get(key)}\n${line.trim() === '.' ? '' : line.trim()}`);
    } else {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      key = line.slice(0, colon).trim().toLowerCase();
      current.set(key, line.slice(colon + 1).trim());
    }
  }
  if (current.size > 0) paragraphs.push(current);
  return paragraphs;
}

export function sourcesFromDeb822(text: string): HostSource[] {
  const words = (value: string | undefined) => (value ?? '').split(/\s+/).filter(Boolean);
  return parseDeb822(text)
    .filter((p) => words(p.get('types')).includes('deb') && !/^(no|false)$/i.test(p.get('enabled') ?? 'yes'))
    .map((p) => ({ uris: words(p.get('uris')), suites: words(p.get('suites')), components: words(p.get('components')), signedBy: p.get('signed-by')?.trim() || undefined }));
}

/** `deb [signed-by=… arch=…] URI SUITE COMPONENT…` lines. */
export function sourcesFromOneLine(text: string): HostSource[] {
  const sources: HostSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const match = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!match) continue;
    const signedBy = /(?:^|\s)signed-by=(\S+)/.exec(match[1] ?? '')?.[1];
    sources.push({ uris: [match[2]], suites: [match[3]], components: match[4].split(/\s+/).filter(Boolean), signedBy });
  }
  return sources;
}

/** Every `deb` source the host's apt reads. Unreadable files are skipped: a source ferry cannot read is one it cannot use. */
export function hostSources(etcApt = '/etc/apt'): HostSource[] {
  const read = (path: string) => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return '';
    }
  };
  const sources = sourcesFromOneLine(read(join(etcApt, 'sources.list')));
  const parts = join(etcApt, 'sources.list.d');
  const names = existsSync(parts) ? readdirSync(parts).sort() : [];
  for (const name of names) {
    if (name.endsWith('.sources')) sources.push(...sourcesFromDeb822(read(join(parts, name))));
    else if (name.endsWith('.list')) sources.push(...sourcesFromOneLine(read(join(parts, name))));
  }
  return sources;
}

/**
 * The host's Debian archive (a source with a plain release suite and `main`) and security archive
 * (one with a `-security` suite); Debian's own servers and keyring where the host has none.
 */
export function debianMirror(sources: readonly HostSource[] = hostSources()): DebianMirror {
  const debian = sources.filter((s) => s.components.includes('main') && s.uris.length > 0);
  const release = (suite: string) => {
    const match = DEBIAN_SUITE.exec(suite);
    return match !== null && match[2] === undefined;
  };
  const archive = debian.find((s) => s.suites.some(release));
  if (!archive) return FALLBACK;
  const security = debian.find((s) => s.suites.some((suite) => /-security$|\/updates$/.test(suite) && DEBIAN_SUITE.test(suite)));
  return {
    archive: { uri: archive.uris[0], signedBy: archive.signedBy },
    security: security ? { uri: security.uris[0], signedBy: security.signedBy } : undefined,
  };
}

/** The deb822 sources of `suite` from `mirror`: the release with its updates, and its security updates. */
export function suiteSources(mirror: DebianMirror, suite: string): string {
  const paragraph = (uri: string, suites: string, signedBy?: string) =>
    [`Types: deb`, `URIs: ${uri}`, `Suites: ${suites}`, `Components: main`, ...(signedBy ? [`Signed-By: ${indentKey(signedBy)}`] : [])].join('\n');
  const paragraphs = [paragraph(mirror.archive.uri, `${suite} ${suite}-updates`, mirror.archive.signedBy)];
  // sid has no security archive.
  if (mirror.security && suite !== 'sid' && suite !== 'unstable') paragraphs.push(paragraph(mirror.security.uri, `${suite}-security`, mirror.security.signedBy));
  return `${paragraphs.join('\n\n')}\n`;
}

/** An inline key back into deb822's continuation form (" ." for empty lines); a path stays as it is. */
function indentKey(signedBy: string): string {
  if (!signedBy.includes('\n')) return signedBy;
  return signedBy
    .split('\n')
    .map((line, i) => (i === 0 ? line : ` ${line === '' ? '.' : line}`))
    .join('\n');
}
