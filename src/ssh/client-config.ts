/**
 * The one writer of OpenSSH client config (ssh_config(5)) text ferry generates: the guest's alias
 * (the builder and root's control command, for `ferry ssh` and the daemon's stop) and the
 * builder alias that the host's Nix reaches the daemon through. Each host block pins its host key
 * under an alias in ferry's own known_hosts file, so the port (or address) may change.
 */
export interface SshHostBlock {
  /** The name given to ssh (`Host`). */
  alias: string;
  user: string;
  /** An address: `127.0.0.1`, `::1` (no brackets in ssh_config) or the guest's. */
  hostName: string;
  port: number;
  identityFile: string;
  knownHostsFile: string;
  /** The name the host key is pinned under in knownHostsFile. */
  hostKeyAlias: string;
  /** Further options, written after the common ones, e.g. `ConnectTimeout` or `ServerAliveInterval`. */
  extra?: ReadonlyArray<readonly [string, string]>;
}

/** One `Host` block, each option indented by two spaces. */
export function sshHostBlock(block: SshHostBlock): string[] {
  const options: Array<readonly [string, string]> = [
    ['User', block.user],
    ['HostName', block.hostName],
    ['Port', String(block.port)],
    ['IdentityFile', block.identityFile],
    ['IdentitiesOnly', 'yes'],
    ['UserKnownHostsFile', block.knownHostsFile],
    ['HostKeyAlias', block.hostKeyAlias],
    ['StrictHostKeyChecking', 'yes'],
    ['GlobalKnownHostsFile', '/dev/null'],
    ['BatchMode', 'yes'],
    ...(block.extra ?? []),
    ['LogLevel', 'ERROR'],
  ];
  return [`Host ${block.alias}`, ...options.map(([key, value]) => `  ${key} ${value}`)];
}

/** A whole file: each block after its comment line, separated by blank lines. */
export function sshConfigText(blocks: ReadonlyArray<{ comment: string; block: SshHostBlock }>): string {
  return blocks.map(({ comment, block }) => [`# ${comment}`, ...sshHostBlock(block), ''].join('\n')).join('\n');
}
