/**
 * The soak under injected faults (issue 15, item 1): 300 builds through the installed daemon with
 * the host's real nix-build, ssh-ng and ssh mixed, 4 at a time, while the fixed schedule of faults
 * runs — qemu SIGKILLed ×5, the host "sleeping" (daemon and qemu SIGSTOPped 30 s) ×3, qemu alone
 * frozen 30 s ×2, the daemon SIGKILLed and restarted as the service manager would ×3, a config
 * change ×5, a wedged guest (QMP `stop`) ×2 — and prints the table: builds started, succeeded,
 * failed (named, retried), lost; the guest clock builds saw; e2fsck -fn of the state disk; daemon
 * RSS before and after; hypervisor processes at once and left behind. The code is
 * test/support/soak.ts, which test/e2e/soak.test.ts runs with a short schedule.
 *
 *   npm run bench:soak -- [--builds 300] [--concurrency 4] [--freeze 30] [--short] [--keep] [--json]
 *
 * Exit 1 when a goal is missed (a lost build, an unnamed failure, e2fsck not clean, RSS over
 * 1.2×, a second guest, a process left behind, a fault that did not do what it should).
 */
import { parseArgs } from 'node:util';
import { FULL_SCHEDULE, runSoak, SHORT_SCHEDULE, soakGoalsMissed, soakTable } from '../test/support/soak.js';

const { values } = parseArgs({
  options: {
    builds: { type: 'string' },
    concurrency: { type: 'string', default: '4' },
    freeze: { type: 'string', default: '30' },
    short: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write('usage: npm run bench:soak -- [--builds N (300; --short: 40)] [--concurrency 4] [--freeze SECONDS (30)] [--short] [--keep] [--json]\n');
  process.exit(0);
}
const say = (line: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
const report = await runSoak({
  builds: Number(values.builds ?? (values.short ? 40 : 300)),
  concurrency: Number(values.concurrency),
  schedule: values.short ? SHORT_SCHEDULE : FULL_SCHEDULE,
  freezeMs: Number(values.freeze) * 1000,
  buildTimeoutMs: 300_000,
  wedgeBoundMs: 60_000,
  keep: values.keep,
  progress: say,
});
process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${soakTable(report)}\n`);
const missed = soakGoalsMissed(report);
if (missed.length) {
  process.stderr.write(`goals missed:\n${missed.map((m) => `  - ${m}`).join('\n')}\n`);
  process.exitCode = 1;
}
