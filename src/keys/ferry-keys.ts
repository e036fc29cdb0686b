/**
 * The one owner of ferry's key pairs: every pair ferry uses is created (once) or loaded here, by
 * `ferryKeys`, and handed to whoever needs a half of it — the image build gets the guest's host
 * key and the public keys it authorizes, and never creates a key itself.
 *
 *   daemonHost   the daemon's SSH front (pinned in /etc/nix/machines and the builder alias)
 *   client       what the host's nix-daemon and `ferry ssh` log in to the front with
 *   guestHost    the guest sshd's host key, generated per install (never shared between installs)
 *   guestClient  what the daemon (and `ferry up`'s `ferry ssh`) log in to the guest with
 */
import type { FerryPaths } from '../config/paths.js';
import { ensureKeyPair, type KeyPair } from './ssh-keys.js';

export interface FerryKeys {
  readonly daemonHost: KeyPair;
  readonly client: KeyPair;
  readonly guestHost: KeyPair;
  readonly guestClient: KeyPair;
}

/** The comment each new key carries (what `ssh-keygen -l` shows). */
const COMMENTS: Record<keyof FerryKeys, string> = {
  daemonHost: 'ferry daemon host key',
  client: 'ferry-client',
  guestHost: 'ferry-guest-host-key',
  guestClient: 'ferry-daemon-to-guest',
};

const FILES: Record<keyof FerryKeys, (paths: FerryPaths) => string> = {
  daemonHost: (paths) => paths.daemonHostKey,
  client: (paths) => paths.clientKey,
  guestHost: (paths) => paths.guestHostKey,
  guestClient: (paths) => paths.guestClientKey,
};

/** Every key pair, made where missing (private halves mode 600 in a mode 700 directory). */
export function ferryKeys(paths: FerryPaths): FerryKeys {
  const pair = (name: keyof FerryKeys) => ensureKeyPair(FILES[name](paths), COMMENTS[name]);
  return { daemonHost: pair('daemonHost'), client: pair('client'), guestHost: pair('guestHost'), guestClient: pair('guestClient') };
}

/** The one key pair `name`, made if missing (for a caller that needs only it). */
export function ferryKey(paths: FerryPaths, name: keyof FerryKeys): KeyPair {
  return ensureKeyPair(FILES[name](paths), COMMENTS[name]);
}
