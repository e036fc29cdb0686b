/**
 * `builders-use-substitutes = true` for the host's Nix, so the guest fetches a build's inputs
 * from the binary caches itself instead of receiving each one from the host through the daemon
 * (a 200 MB input is 200 MB through the SSH front, then again for every guest state disk).
 *
 * The line goes where the host's Nix keeps the user's settings: /etc/nix/nix.conf, or Determinate
 * Nix's nix.custom.conf (nix-darwin's managed nix.conf gets the snippet instead, in install.ts).
 * It is recorded before it is written (files.ts) and undone by uninstall byte for byte, or only
 * ferry's line where the file changed since. The host's nix-daemon reads the file only when it
 * starts, so each change is followed by its restart, said in the plan first.
 */
import { lstatSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { ProcessError } from '../process/runner.js';
import { readIfExists, type FileWriter, type Report } from './files.js';
import { nixConfTarget, nixDaemonRestart, withBuildersUseSubstitutes } from './nix-wiring.js';
import type { SystemWrites } from './privileged.js';

export interface SubstitutesContext {
  platform: NodeJS.Platform;
  root: string;
  out: Report;
  dryRun: boolean;
}

/** Writes ferry's line (when it is not already in effect) and restarts the host's nix-daemon. */
export async function wireBuildersUseSubstitutes(ctx: SubstitutesContext, nixConf: string, writer: FileWriter, system: SystemWrites): Promise<void> {
  const { file, determinate } = nixConfTarget(nixConf, ctx.root);
  const current = readIfExists(file)?.toString('utf8');
  const { text, replaced } = withBuildersUseSubstitutes(current ?? '');
  if (current !== undefined && text === current) {
    if (!ctx.dryRun) ctx.out(`unchanged ${file} (builders-use-substitutes = true)`);
    return;
  }
  if (replaced) ctx.out(`note: ${file} has \`${replaced}\`: ferry changes that line to builders-use-substitutes = true, so the builder fetches inputs from binary caches itself`);
  const where = determinate ? "Determinate Nix's file for your settings (it rewrites nix.conf itself)" : 'the host Nix';
  // The file keeps the mode it has (nix.conf is 0644 as installers write it).
  const mode = current === undefined ? 0o644 : (readMode(file) ?? 0o644);
  const outcome = await writer.write(file, text, mode, `builders-use-substitutes = true, in ${where}`);
  if (outcome !== 'unchanged') await restartHostNixDaemon(ctx, system, 'it reads builders-use-substitutes');
}

/** Restarts the host's nix-daemon after its settings changed, when it has one; says why first. */
export async function restartHostNixDaemon(ctx: SubstitutesContext, system: SystemWrites, why: string): Promise<void> {
  const command = nixDaemonRestart(ctx.platform, ctx.root);
  if (!command) {
    ctx.out(`no nix-daemon service found to restart: a single-user Nix reads the change with its next command (a nix-daemon started by hand: restart it so ${why})`);
    return;
  }
  const shown = [command.file, ...command.args].join(' ');
  ctx.out(`${ctx.dryRun ? 'would restart' : 'restart'} the host's nix-daemon (${shown}) so ${why}: it reads nix.conf only when it starts, and builds running in it now are interrupted`);
  try {
    await system.runAsRoot([command.file, ...command.args]);
  } catch (error) {
    // The file is written and recorded: a daemon that did not restart takes the line at its next start.
    if (!(error instanceof ProcessError) && !(error instanceof FerryError)) throw error;
    ctx.out(`warning: could not restart the host's nix-daemon (${error.message}); run \`sudo ${shown}\` yourself`);
  }
}

function readMode(file: string): number | undefined {
  try {
    return lstatSync(file).mode & 0o7777;
  } catch {
    return undefined;
  }
}
