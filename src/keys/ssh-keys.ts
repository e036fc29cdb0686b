/**
 * SSH key pairs ferry owns: made with ssh2's generator (OpenSSH format, no ssh-keygen needed),
 * private halves mode 600 in a mode 700 directory, never overwritten once they exist, so the
 * host keys that Nix and known_hosts pin stay valid across upgrades. Both halves are written
 * atomically and synced (atomic-file.ts): an empty key file after a power loss would be trusted.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import ssh2 from 'ssh2';
import { writeFileAtomicSync } from '../atomic-file.js';

export interface KeyPair {
  privatePath: string;
  publicPath: string;
  /** The OpenSSH public key line, e.g. `ssh-ed25519 AAAA… comment`. */
  publicKey: string;
  privateKey: string;
}

/**
 * A new ed25519 pair in OpenSSH format that ssh2 (and so the daemon) can read back. ssh2 1.17's
 * generator strips a public key's leading zero byte, so about 1 pair in 256 is malformed
 * (mscdex/ssh2#1513): such a pair is thrown away and another one made.
 */
export function generateKeyPair(comment: string): { private: string; public: string } {
  for (let attempt = 0; attempt < 32; attempt++) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519', { comment });
    if (!(ssh2.utils.parseKey(pair.private) instanceof Error) && !(ssh2.utils.parseKey(pair.public) instanceof Error)) return pair;
  }
  throw new Error('internal: ssh2 made no readable ed25519 key pair in 32 attempts');
}

export function ensureKeyPair(privatePath: string, comment: string): KeyPair {
  const publicPath = `${privatePath}.pub`;
  if (!existsSync(privatePath)) {
    mkdirSync(dirname(privatePath), { recursive: true, mode: 0o700 });
    const pair = generateKeyPair(comment);
    writeFileAtomicSync(privatePath, pair.private, 0o600);
    writeFileAtomicSync(publicPath, `${pair.public}\n`, 0o644);
  }
  chmodSync(privatePath, 0o600);
  if (!existsSync(publicPath)) {
    const parsed = ssh2.utils.parseKey(readFileSync(privatePath));
    if (parsed instanceof Error) throw parsed;
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    writeFileAtomicSync(publicPath, `${key.type} ${key.getPublicSSH().toString('base64')} ${comment}\n`, 0o644);
  }
  return {
    privatePath,
    publicPath,
    privateKey: readFileSync(privatePath, 'utf8'),
    publicKey: readFileSync(publicPath, 'utf8').trim(),
  };
}
