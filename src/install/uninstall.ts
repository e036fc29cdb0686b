/**
 * `ferry uninstall`: stops the service, then undoes what the install record lists — created files
 * removed, modified files (e.g. /etc/nix/machines) put back byte for byte, created directories
 * removed when empty. A file changed since install is not clobbered: a machines file someone
 * edited afterwards only loses ferry's line; any other changed file is left and reported.
 * The state disk and the images stay unless `--purge`.
 */
import { existsSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import { guardFs, readIfExists, removeFile } from './files.js';
import { checkInvoker, hostContext, saveRecord, type HostOptions } from './install.js';
import { withoutFerryLine, MACHINES_MARKER } from './nix-wiring.js';
import { SystemWrites } from './privileged.js';
import { readRecord, sha256 } from './record.js';
import { unloadCommands, type ServiceCommand } from './service.js';

export interface UninstallOptions extends HostOptions {
  /** Also the state disk, images, downloads and logs: everything of ferry's. */
  purge?: boolean;
  dryRun?: boolean;
}

export interface UninstallResult {
  removed: string[];
  restored: string[];
  kept: string[];
  commands: ServiceCommand[];
}

export async function uninstall(options: UninstallOptions = {}): Promise<UninstallResult> {
  const ctx = hostContext(options);
  checkInvoker(ctx, 'uninstall');
  const { out, layout } = ctx;
  const { paths } = layout;
  const dryRun = options.dryRun ?? false;
  const would = dryRun ? 'would ' : '';
  const result: UninstallResult = { removed: [], restored: [], kept: [], commands: [] };
  const record = readRecord(paths.installRecord);
  // Restores and removals of root's files (the Nix wiring under /etc) go through sudo as a user.
  const system = new SystemWrites({ runner: ctx.runner, root: ctx.root, escalate: ctx.asUser, dryRun, report: out, recordOnly: ctx.recordOnly });
  if (!record) out(`no install record at ${paths.installRecord}: nothing that install wrote to undo`);

  // The service first, so nothing restarts the daemon while its files go.
  const kind = record?.service?.kind ?? layout.serviceKind;
  const unload = unloadCommands(kind, record?.system ?? ctx.system, ctx.uid);
  const run = async (commands: ServiceCommand[]) => {
    for (const command of commands) {
      result.commands.push(command);
      const shown = [command.file, ...command.args].join(' ');
      if (dryRun) {
        out(`would run ${shown}`);
        continue;
      }
      const ran = await ctx.runner.run(command.file, command.args, { timeoutMs: 120_000 });
      out(`${ctx.recordOnly ? 'record (not run, --root)' : 'ran'}: ${shown}${ran.exitCode === 0 ? '' : ' (it was not loaded)'}`);
    }
  };
  if (record?.service || !record) await run(unload.before);

  for (const file of [...(record?.files ?? [])].reverse()) {
    const current = readIfExists(file.path);
    if (current === undefined) {
      if (file.action === 'modified' && file.previous !== undefined) {
        // Gone since install: put the old content back, it is what the user had.
        system.say(file.path, `${would}restore ${file.path} (it was deleted after install)`);
        await system.writeFile(file.path, Buffer.from(file.previous, 'base64'), file.previousMode ?? 0o644);
        result.restored.push(file.path);
      }
      continue;
    }
    const unchanged = sha256(current) === file.sha256;
    if (file.action === 'created') {
      if (unchanged || isKeyOrGenerated(file.path, paths.keysDir)) {
        system.say(file.path, `${would}remove ${file.path}`);
        await system.removeFile(file.path);
        result.removed.push(file.path);
      } else {
        out(`keep ${file.path}: changed since ferry install wrote it`);
        result.kept.push(file.path);
      }
      continue;
    }
    // Modified by install.
    if (unchanged) {
      system.say(file.path, `${would}restore ${file.path} (byte for byte as before install)`);
      await system.writeFile(file.path, Buffer.from(file.previous ?? '', 'base64'), file.previousMode ?? 0o644);
      result.restored.push(file.path);
    } else if (current.toString('utf8').includes(MACHINES_MARKER)) {
      system.say(file.path, `${would}remove ferry's line from ${file.path} (other changes made since install are kept)`);
      await system.writeFile(file.path, Buffer.from(withoutFerryLine(current.toString('utf8'))), lstatSync(file.path).mode & 0o7777);
      result.restored.push(file.path);
    } else {
      out(`keep ${file.path}: changed since install, and ferry's part is no longer there`);
      result.kept.push(file.path);
    }
  }

  await run(unload.after);

  if (options.purge) {
    for (const dir of [paths.stateDir, paths.cacheDir, paths.logDir]) {
      if (!existsSync(dir)) continue;
      if (!dryRun) guardFs(dir, () => rmSync(dir, { recursive: true, force: true }));
      out(`${would}remove ${dir} (--purge: state disk, images, logs)`);
      result.removed.push(dir);
    }
  } else if (record) {
    if (!dryRun) removeFile(paths.installRecord);
    out(`${would}remove ${paths.installRecord}`);
  }

  // Directories install created, deepest first, only when nothing else lives there now.
  for (const dir of [...(record?.dirs ?? [])].sort((a, b) => b.length - a.length)) {
    if (!existsSync(dir)) continue;
    if (dryRun || readdirSync(dir).length > 0) continue;
    system.say(dir, `remove ${dir}/`);
    await system.removeDir(dir);
  }

  // What stays (state disk, images) still sits in directories install created: a slim record
  // keeps them known, so a later `ferry uninstall --purge` leaves nothing behind either.
  const remaining = (record?.dirs ?? []).filter((dir) => existsSync(dir));
  if (!options.purge && !dryRun && record && existsSync(paths.stateDir) && remaining.length > 0) {
    saveRecord(paths.installRecord, { ...record, files: [], service: undefined, dirs: remaining });
    out(`keep ${paths.stateDir} (the state disk with the guest's /nix) and the images in ${paths.imagesDir}: \`ferry uninstall --purge\` removes them`);
  }
  out(dryRun ? 'dry run: nothing was changed' : 'ferry is uninstalled');
  return result;
}

/** Keys go even if their bytes differ from the record (a key regenerated by the daemon is still ferry's). */
function isKeyOrGenerated(file: string, keysDir: string): boolean {
  return file.startsWith(`${keysDir}/`);
}
