/**
 * Names are UTF-8, checked on their bytes. Decoders in the usual places (readdir, tar-stream)
 * replace bytes that are not UTF-8 with U+FFFD, after which a real U+FFFD (EF BF BD, a valid
 * character) cannot be told from a replaced byte — and two different names can come out as one
 * (`a\xffb` and `a\uFFFDb`). So the checks here look at the bytes, never for U+FFFD in a string.
 */
import { extract as tarExtract, type Extract } from 'tar-stream';
import { LayerError } from './layer.js';
import type { RawHeader } from './tar-member.js';

// ignoreBOM: keep a leading U+FEFF, which is part of the name, not a byte order mark to drop.
const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export const NOT_UTF8 = 'is not valid UTF-8 (ferry handles UTF-8 names only)';

/** The name the bytes spell, or undefined when they are not UTF-8. */
export function utf8Name(bytes: Uint8Array): string | undefined {
  try {
    return strict.decode(bytes);
  } catch {
    return undefined;
  }
}

/** For messages: the bytes as the user's terminal would more or less show them. */
export const lossy = (bytes: Uint8Array): string => Buffer.from(bytes).toString('utf8');

/**
 * The header with its names decoded strictly. PAX `path`/`linkpath` records (which tar-stream
 * decodes itself and which replace the ustar names, as tar-stream's `_applyLongHeaders` does when
 * they are non-empty) were already checked on their bytes by `byteNamesExtract`.
 */
export function utf8Header(header: RawHeader, description: string): RawHeader {
  const refuse = (entry: string, what: string): never => {
    throw new LayerError(description, `entry ${JSON.stringify(entry)}: the ${what} ${NOT_UTF8}`);
  };
  const fromLatin1 = (latin1: string): string | undefined => utf8Name(Buffer.from(latin1, 'latin1'));
  const name = header.pax?.path ? header.pax.path : (fromLatin1(header.name) ?? refuse(lossy(Buffer.from(header.name, 'latin1')), 'name'));
  let linkname = header.linkname;
  if (header.pax?.linkpath) linkname = header.pax.linkpath;
  else if (linkname) linkname = fromLatin1(linkname) ?? refuse(name, 'link target');
  return { ...header, name, linkname };
}

/**
 * A tar-stream extract that keeps the bytes of names: ustar and GNU long names come out as
 * latin1 (one character per byte) for `utf8Header` to decode strictly, and PAX `path` and
 * `linkpath` records are checked on their bytes before tar-stream decodes them (lossily).
 * tar-stream offers no hook for the latter, so this wraps its `_decodeLongHeader`, the one method
 * that sees a PAX header's bytes; an error thrown there fails the archive's stream. Should
 * tar-stream rename it, this throws at once rather than let invalid names through.
 */
export function byteNamesExtract(description: string): Extract {
  // filenameEncoding is tar-stream's documented option; its bundled typings leave it out.
  const extract = tarExtract({ filenameEncoding: 'latin1' } as Parameters<typeof tarExtract>[0]);
  const internals = extract as unknown as { _decodeLongHeader?: (buf: Buffer) => void; _header?: { type?: string } | null };
  const original = internals._decodeLongHeader;
  if (typeof original !== 'function') throw new Error("tar-stream has no Extract._decodeLongHeader: ferry's check of PAX names needs updating");
  internals._decodeLongHeader = function (this: typeof internals, buf: Buffer): void {
    const type = this._header?.type;
    if (type === 'pax-header' || type === 'pax-global-header') checkPaxRecords(buf, description);
    original.call(this, buf);
  };
  return extract;
}

/** PAX records are `LENGTH key=value\n`, LENGTH in bytes and counting itself (walked as tar-stream does). */
function checkPaxRecords(buf: Buffer, description: string): void {
  const values = new Map<string, Buffer>();
  let rest = buf;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    const length = space < 0 ? NaN : parseInt(rest.subarray(0, space).toString('latin1'), 10);
    if (!length) break;
    const record = rest.subarray(space + 1, length - 1);
    const equals = record.indexOf(0x3d);
    if (equals < 0) break;
    values.set(record.subarray(0, equals).toString('latin1'), record.subarray(equals + 1));
    rest = rest.subarray(length);
  }
  const path = values.get('path');
  const linkpath = values.get('linkpath');
  if (path && utf8Name(path) === undefined) throw new LayerError(description, `entry ${JSON.stringify(lossy(path))}: the name ${NOT_UTF8}`);
  if (linkpath && utf8Name(linkpath) === undefined) {
    const entry = path ? `entry ${JSON.stringify(lossy(path))}: ` : '';
    throw new LayerError(description, `${entry}the link target ${JSON.stringify(lossy(linkpath))} ${NOT_UTF8}`);
  }
}
