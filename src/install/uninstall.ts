/**
 * `ferry uninstall`: stops the service, then undoes what the install record lists — created files
 * removed, modified files (e.g. /etc/nix/machines) put back byte for byte, created directories
 * removed when empty. A file changed since install is not clobbered: a machines file someone
 * edited afterwards only loses ferry's line (and goes when nothing else is left in one install
 * created); any other changed file is left and reported. A change the record lists but an
 * interrupted install never made (the file absent, or still as before) is nothing to undo.
 * The state disk and the images stay unless `--purge`; the temporaries of a stopped build go.
 */
import { existsSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import { removeDeadTemporaries } from '../atomic-file.js';
import { guardFs, readIfExists, removeFile } from './files.js';
import { checkInvoker, hostContext, type HostOptions } from './install.js';
import { hasFerryLine, nixConfTarget, withoutFerryLine } from './nix-wiring.js';
import { SystemWrites } from './privileged.js';
import { readRecord, saveRecord, sha256, writtenByInstall } from './record.js';
import { unloadCommands, type ServiceCommand } from './service.js';
import { restartHostNixDaemon } from './substitutes.js';

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

  // nix.conf (or Determinate's nix.custom.conf) put back: the host's nix-daemon restarts after.
  const nixConfFiles = [layout.nixConf, nixConfTarget(layout.nixConf, ctx.root).file];
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
    const unchanged = writtenByInstall(file, sha256(current));
    // Someone's lines besides ferry's in a machines file: only ferry's go.
    const ferryLineOnly = async (created: boolean) => {
      const rest = withoutFerryLine(current.toString('utf8'));
      if (created && rest.trim() === '') {
        system.say(file.path, `${would}remove ${file.path} (nothing but ferry's line was in it)`);
        await system.removeFile(file.path);
        result.removed.push(file.path);
        return;
      }
      system.say(file.path, `${would}remove ferry's line from ${file.path} (other changes made since install are kept)`);
      await system.writeFile(file.path, Buffer.from(rest), lstatSync(file.path).mode & 0o7777);
      result.restored.push(file.path);
    };
    if (file.action === 'created') {
      if (unchanged || isKeyOrGenerated(file.path, paths.keysDir)) {
        system.say(file.path, `${would}remove ${file.path}`);
        await system.removeFile(file.path);
        result.removed.push(file.path);
      } else if (hasFerryLine(current.toString('utf8'))) await ferryLineOnly(true);
      else {
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
    } else if (file.previous !== undefined && current.equals(Buffer.from(file.previous, 'base64'))) {
      out(`nothing to restore in ${file.path}: it is as it was before install (an install stopped before changing it)`);
    } else if (hasFerryLine(current.toString('utf8'))) await ferryLineOnly(false);
    else {
      out(`keep ${file.path}: changed since install, and ferry's part is no longer there`);
      result.kept.push(file.path);
    }
  }

  await run(unload.after);
  if ([...result.removed, ...result.restored].some((file) => nixConfFiles.includes(file))) {
    await restartHostNixDaemon({ platform: ctx.platform, root: ctx.root, out, dryRun }, system, 'it drops builders-use-substitutes');
  }

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

  // A build killed half way leaves its temporaries (a system image's is hundreds of MiB), named
  // by its pid; they stand in the way of removing the directories install made for the build.
  if (!options.purge && !dryRun) {
    for (const dir of [paths.imagesDir, paths.downloadsDir]) {
      for (const left of removeDeadTemporaries(dir)) {
        out(`remove ${left} (left by an image build that was stopped)`);
        result.removed.push(left);
      }
    }
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
