/**
 * The one parser of OpenSSH public key lines, on keys OpenSSH's own ssh-keygen made: plain
 * lines, comments with spaces, authorized_keys options (quoted spaces included), CRLF, and the
 * garbage it must refuse.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../src/errors.js';
import { generateKeyPair } from '../../src/keys/ssh-keys.js';
import { parsePublicKeyLine, PublicKeyLineError, publicKeyWithoutComment } from '../../src/keys/public-key-line.js';

const work = mkdtempSync(join(tmpdir(), 'ferry-key-line-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A public key line from ssh-keygen itself. */
function keygen(type: string, comment: string): string {
  const file = join(work, `${type}-${Math.random().toString(36).slice(2)}`);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', comment, '-f', file]);
  return readFileSync(`${file}.pub`, 'utf8');
}

describe('parsePublicKeyLine', () => {
  it.each(['ed25519', 'rsa', 'ecdsa'])('reads what ssh-keygen -t %s writes', (type) => {
    const line = keygen(type, 'me@host');
    const [keyType, base64] = line.trim().split(' ');
    expect(parsePublicKeyLine(line)).toEqual({ type: keyType, base64, comment: 'me@host', options: '' });
  });

  it('reads a line without a comment, and the pairs ferry generates', () => {
    const line = keygen('ed25519', '');
    const [type, base64] = line.trim().split(' ');
    expect(parsePublicKeyLine(`${type} ${base64}`)).toEqual({ type, base64, comment: '', options: '' });
    const ours = parsePublicKeyLine(generateKeyPair('ferry daemon host key').public);
    expect(ours).toMatchObject({ type: 'ssh-ed25519', comment: 'ferry daemon host key' });
  });

  it('reads an OpenSSH certificate line (its blob is not all strings: only the type is checked)', () => {
    const ca = join(work, 'ca');
    const user = join(work, 'user');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', ca]);
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'user', '-f', user]);
    execFileSync('ssh-keygen', ['-q', '-s', ca, '-I', 'ferry-test', `${user}.pub`]);
    expect(parsePublicKeyLine(readFileSync(`${user}-cert.pub`, 'utf8'))).toMatchObject({ type: 'ssh-ed25519-cert-v01@openssh.com', comment: 'user' });
  });

  it('keeps a comment with spaces whole, and ignores CRLF and surrounding blanks', () => {
    const [type, base64] = keygen('ed25519', 'x').trim().split(' ');
    expect(parsePublicKeyLine(`  ${type}\t${base64}   ferry daemon  host key \r\n`)).toEqual({ type, base64, comment: 'ferry daemon  host key', options: '' });
  });

  it('returns authorized_keys options, quoted spaces and all, without interpreting them', () => {
    const [type, base64] = keygen('ed25519', 'x').trim().split(' ');
    expect(parsePublicKeyLine(`restrict,command="/usr/libexec/ferry control" ${type} ${base64} root@guest`)).toEqual({
      type,
      base64,
      comment: 'root@guest',
      options: 'restrict,command="/usr/libexec/ferry control"',
    });
    expect(parsePublicKeyLine(`from="10.0.0.1",no-pty ${type} ${base64}`)).toMatchObject({ options: 'from="10.0.0.1",no-pty', comment: '' });
  });

  it('refuses garbage: empty, one field, not base64, a cut key, swapped types, a private key, two lines', () => {
    const [type, base64] = keygen('ed25519', 'x').trim().split(' ');
    const rsa = keygen('rsa', 'x').trim().split(' ')[1];
    const refused = [
      '',
      '   ',
      type,
      `${type} not-base64!`,
      `${type} ${base64.slice(0, 20)}`,
      `ssh-rsa ${base64}`,
      `${type} ${rsa}`,
      `${base64} ${type}`,
      '-----BEGIN OPENSSH PRIVATE KEY-----',
      `${type} ${base64} a\n${type} ${base64} b`,
      `command="unterminated ${type} ${base64}`,
    ];
    for (const line of refused) {
      const result = parsePublicKeyLine(line);
      expect(result, JSON.stringify(line)).toBeInstanceOf(PublicKeyLineError);
    }
    expect((parsePublicKeyLine(`ssh-rsa ${base64}`) as PublicKeyLineError).reason).toBe('the line says ssh-rsa but the key is ssh-ed25519');
  });
});

describe('publicKeyWithoutComment', () => {
  it('is `type base64`, for known_hosts and comparisons', () => {
    const line = keygen('ed25519', 'ferry daemon host key');
    expect(publicKeyWithoutComment(line)).toBe(line.trim().split(' ').slice(0, 2).join(' '));
  });

  it('throws a FerryError naming the source for anything else', () => {
    expect(() => publicKeyWithoutComment('ssh-ed25519 AAAA…(cut)', '/state/keys/daemon_host_key.pub')).toThrow(FerryError);
    expect(() => publicKeyWithoutComment('garbage', '/state/keys/daemon_host_key.pub')).toThrow(/^\/state\/keys\/daemon_host_key\.pub: not an OpenSSH public key line/);
  });
});
