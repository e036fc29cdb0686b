/**
 * Who may log in to the daemon's SSH front: the public keys `ferry install` wrote, given as
 * OpenSSH public key lines, and the one decision the front makes with them. Kept apart from the
 * server so the decision can be tested without a socket.
 */
import { timingSafeEqual } from 'node:crypto';
import ssh2 from 'ssh2';
import type { ParsedKey } from 'ssh2';
import { ExitCode, FerryError } from '../errors.js';
import { parsePublicKeyLine } from '../keys/public-key-line.js';

export interface AllowedKey {
  /** Key type as OpenSSH writes it, e.g. `ssh-ed25519`. */
  readonly type: string;
  /** The key blob (what the base64 field decodes to); what a client presents at login. */
  readonly data: Buffer;
  readonly comment: string;
  /** Parsed once, to verify login signatures. */
  readonly parsed: ParsedKey;
}

/**
 * Parse OpenSSH public key lines (`type base64 [comment]`, as in a .pub file or authorized_keys
 * without options). Blank lines and `#` comments are skipped. `source` names where the lines came
 * from, for the error message.
 */
export function parseAllowedKeys(lines: readonly string[], source = 'allowed keys'): AllowedKey[] {
  const keys: AllowedKey[] = [];
  lines
    .flatMap((chunk) => chunk.split(/\r?\n/))
    .forEach((raw, index) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      const parsed = ssh2.utils.parseKey(line);
      const key = Array.isArray(parsed) ? parsed[0] : parsed;
      if (key instanceof Error || key === undefined || key.isPrivateKey()) {
        const why = key instanceof Error ? key.message : 'not a public key';
        throw new FerryError(`${source}: entry ${index + 1} is not an OpenSSH public key line (${why}): ${abbreviate(line)}`, {
          exitCode: ExitCode.Config,
          hint: 'expected a line like `ssh-ed25519 AAAAC3Nza… comment`, as in a .pub file',
        });
      }
      const fields = parsePublicKeyLine(line);
      keys.push({ type: key.type, data: key.getPublicSSH(), comment: fields instanceof Error ? '' : fields.comment, parsed: key });
    });
  return keys;
}

/** What a client presented in one `publickey` attempt (the fields of ssh2's PublicKeyAuthContext). */
export interface PublicKeyAttempt {
  readonly key: { readonly algo: string; readonly data: Buffer };
  /** Absent when the client only asks whether the key would be accepted (no proof yet). */
  readonly signature?: Buffer;
  readonly blob?: Buffer;
  /**
   * ssh2 reports an RSA key's `rsa-sha2-256`/`-512` attempts as algo `ssh-rsa` with hashAlgo
   * sha256/sha512; a plain `ssh-rsa` attempt (SHA-1) has none.
   */
  readonly hashAlgo?: string;
}

export type AuthDecision =
  /** The key is allowed and, if the client signed, the signature is good: call ctx.accept(). */
  | { readonly accept: true; readonly key: AllowedKey }
  /** Anything else: call ctx.reject(['publickey']). */
  | { readonly accept: false; readonly reason: string };

/**
 * Decide one authentication attempt. Only `publickey` can succeed; the key must be one of
 * `allowed` (same type and same key data) and, when the client sent a signature, that signature
 * must verify over the session blob with the allowed key — never with the key the client sent.
 */
export function decideAuth(allowed: readonly AllowedKey[], method: string, attempt?: PublicKeyAttempt): AuthDecision {
  if (method !== 'publickey' || attempt === undefined) return { accept: false, reason: `method ${method} is not offered` };
  if (attempt.key.algo === 'ssh-rsa' && attempt.hashAlgo === undefined) {
    return { accept: false, reason: 'ssh-rsa signatures (SHA-1) are refused, as OpenSSH 8.8 refuses them: the client must sign with rsa-sha2-256 or rsa-sha2-512' };
  }
  const match = allowed.find((key) => sameBytes(key.data, attempt.key.data) && attempt.key.algo === key.type);
  if (match === undefined) return { accept: false, reason: `unknown ${attempt.key.algo} key` };
  if (attempt.signature === undefined) return { accept: true, key: match };
  if (attempt.blob === undefined) return { accept: false, reason: 'signature without signed data' };
  if (match.parsed.verify(attempt.blob, attempt.signature, attempt.hashAlgo) !== true) {
    return { accept: false, reason: `bad signature for ${match.type} key ${match.comment}`.trim() };
  }
  return { accept: true, key: match };
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function abbreviate(line: string): string {
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}
