/**
 * The one parser of OpenSSH public key lines: `type base64 [comment]`, as in a .pub file, a
 * known_hosts entry's key or an authorized_keys line — which may start with options
 * (`restrict,command="…" ssh-ed25519 AAAA… comment`, sshd(8) AUTHORIZED_KEYS FILE FORMAT).
 *
 * A line is accepted only when its base64 field decodes to a key blob that names the same type
 * (the blob's first field is the type, as OpenSSH writes it), so a line cut short, two fields
 * swapped or a private key pasted by mistake is refused here rather than at login. Options are
 * returned, not interpreted: a caller that cannot honour them (the daemon's front) must refuse a
 * line that has them.
 */
import { ExitCode, FerryError } from '../errors.js';

export interface PublicKeyLine {
  /** e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`. */
  readonly type: string;
  /** The key blob, base64 as in the line. */
  readonly base64: string;
  /** Everything after the key, spaces inside kept; '' when there is none. */
  readonly comment: string;
  /** The authorized_keys options before the type, verbatim; '' when there are none. */
  readonly options: string;
}

export class PublicKeyLineError extends Error {
  constructor(
    readonly line: string,
    readonly reason: string,
  ) {
    super(`not an OpenSSH public key line (${reason}): ${abbreviate(line)}`);
    this.name = 'PublicKeyLineError';
  }
}

/** Parses one line (surrounding whitespace and a CR of a CRLF file ignored). */
export function parsePublicKeyLine(line: string): PublicKeyLine | PublicKeyLineError {
  const text = line.trim();
  if (text === '') return new PublicKeyLineError(line, 'empty');
  if (/[\r\n]/.test(text)) return new PublicKeyLineError(line, 'more than one line');
  const plain = keyFields(text);
  if (!(plain instanceof PublicKeyLineError)) return { ...plain, options: '' };
  // Not `type base64 …` from the start: maybe authorized_keys options come first.
  const options = optionsField(text);
  if (options === undefined || options.length === text.length) return plain;
  const rest = keyFields(text.slice(options.length).trimStart());
  return rest instanceof PublicKeyLineError ? plain : { ...rest, options };
}

/** `type base64` of a public key line (the comment and any options dropped); throws a FerryError for anything else. */
export function publicKeyWithoutComment(line: string, source = 'public key'): string {
  const key = parsePublicKeyLine(line);
  if (key instanceof PublicKeyLineError) {
    throw new FerryError(`${source}: ${key.message}`, {
      exitCode: ExitCode.DataError,
      hint: 'expected a line like `ssh-ed25519 AAAAC3Nza… comment`, as in a .pub file',
    });
  }
  return `${key.type} ${key.base64}`;
}

function keyFields(text: string): Omit<PublicKeyLine, 'options'> | PublicKeyLineError {
  const match = /^(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(text);
  if (!match) return new PublicKeyLineError(text, 'expected `type base64 [comment]`');
  const [, type, base64, comment = ''] = match;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(base64) || base64.length % 4 !== 0) return new PublicKeyLineError(text, `the key field of a ${type} key is not base64`);
  const fields = blobFields(Buffer.from(base64, 'base64'), type.endsWith(CERT_SUFFIX));
  if (fields === undefined) return new PublicKeyLineError(text, `the key field is not a whole SSH key blob`);
  if (fields[0] !== type) return new PublicKeyLineError(text, `the line says ${type} but the key is ${abbreviate(fields[0])}`);
  return { type, base64, comment: comment.trim() };
}

const CERT_SUFFIX = '-cert-v01@openssh.com';

/**
 * The blob's fields as strings (RFC 4253 §6.6: the type name, then the key's own fields, each a
 * uint32 length and its bytes), or undefined unless they fill it exactly — so a cut key is
 * refused. Certificates carry non-string fields after the nonce: only their name is read.
 */
function blobFields(blob: Buffer, certificate: boolean): string[] | undefined {
  const fields: string[] = [];
  for (let at = 0; at < blob.length; ) {
    if (at + 4 > blob.length) return undefined;
    const length = blob.readUInt32BE(at);
    if (at + 4 + length > blob.length) return undefined;
    fields.push(blob.toString('latin1', at + 4, at + 4 + length));
    at += 4 + length;
    if (certificate) return fields;
  }
  return fields.length >= 2 && fields[0] !== '' ? fields : undefined;
}

/** The leading options field: everything up to the first blank outside double quotes. */
function optionsField(text: string): string | undefined {
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\' && quoted) i++;
    else if (c === '"') quoted = !quoted;
    else if (!quoted && /\s/.test(c)) return i === 0 ? undefined : text.slice(0, i);
  }
  return quoted ? undefined : text;
}

function abbreviate(line: string): string {
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}
