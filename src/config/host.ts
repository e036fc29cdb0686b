/**
 * The facts about the host that defaults and validation depend on. Passed in explicitly so that
 * the config functions stay pure and tests can ask "what would this mean on an Apple-silicon Mac?"
 */
import os from 'node:os';

export interface HostInfo {
  /** `process.platform`: 'darwin', 'linux', … */
  readonly platform: NodeJS.Platform;
  /** `process.arch`: 'arm64', 'x64', … */
  readonly arch: string;
  readonly cpus: number;
  readonly memoryBytes: number;
  readonly homeDir: string;
}

export function currentHost(): HostInfo {
  return {
    platform: process.platform,
    arch: process.arch,
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    homeDir: os.homedir(),
  };
}
