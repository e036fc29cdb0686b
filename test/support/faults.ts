/**
 * The faults the soak injects into a running service (bench/soak.ts, test/e2e/soak.test.ts), each
 * done the way it happens to users, from outside — signals to the real processes, QMP to the real
 * qemu, a new ferry.toml — never through a hook in the daemon or the guest.
 */
import { writeFile } from 'node:fs/promises';
import { runFilesOf } from '../../src/vm/run-files.js';
import { GUEST_NAME } from '../../src/vm/instance/spec.js';
import { QmpClient } from '../../src/vm/qmp.js';
import { configText, sleep } from './daemon.js';
import type { ServiceDaemon } from './service-daemon.js';

export const FAULT_KINDS = ['kill-qemu', 'host-sleep', 'freeze-qemu', 'restart-daemon', 'config-change', 'wedge'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultOutcome {
  kind: FaultKind;
  /** ms since the soak started. */
  at: number;
  ms: number;
  /** What was seen, in a few words (e.g. "detected in 48 s, restarted"). */
  note: string;
  /** Whether the fault did what the soak expects of the daemon. */
  ok: boolean;
}

export interface FaultOptions {
  /** How long a host sleep and a qemu freeze last. */
  freezeMs: number;
  /** A wedged guest must be restarted within this. */
  wedgeBoundMs: number;
}

/** The soak's ferry.toml: the test config, with max-jobs alternating so each change is a new image. */
export function soakConfig(port: number, generation: number): string {
  return configText(port, { maxJobs: generation % 2 === 0 ? 4 : 3, idleTimeout: '30m', readyTimeout: '120s' });
}

export class FaultInjector {
  #configGeneration = 0;

  constructor(
    private readonly service: ServiceDaemon,
    private readonly options: FaultOptions,
  ) {}

  async inject(kind: FaultKind): Promise<Omit<FaultOutcome, 'at' | 'ms' | 'kind'>> {
    switch (kind) {
      case 'kill-qemu':
        return this.#killQemu();
      case 'host-sleep':
        return this.#hostSleep();
      case 'freeze-qemu':
        return this.#freezeQemu();
      case 'restart-daemon':
        return this.#restartDaemon();
      case 'config-change':
        return this.#configChange();
      case 'wedge':
        return this.#wedge();
    }
  }

  /** The qemu of the running guest (waits for one: a fault aimed at a guest needs a guest). */
  async #runningQemu(): Promise<number> {
    const deadline = Date.now() + 180_000;
    for (;;) {
      const status = await this.service.status().catch(() => undefined);
      const pids = await this.service.hypervisors();
      if (status?.guest.state === 'running' && pids.length === 1) return pids[0]!;
      // No build is asking for one (they have all run, or are between tries): `ferry start`'s call.
      if (status?.guest.state === 'stopped') await this.service.startGuest().catch(() => {});
      if (Date.now() > deadline) throw new Error(`no running guest to inject a fault into (state ${status?.guest.state}, hypervisors ${pids.join(',') || 'none'})`);
      await sleep(500);
    }
  }

  async #killQemu() {
    const pid = await this.#runningQemu();
    const crashesBefore = (await this.service.status()).guest.crashes;
    process.kill(pid, 'SIGKILL');
    const seen = await this.#waitStatus((s) => s.guest.crashes > crashesBefore, 30_000);
    return { note: seen ? 'crash noted by the daemon' : 'the daemon did not note the crash within 30 s', ok: seen };
  }

  /** Everything stops when a Mac sleeps: the daemon and qemu frozen together, then resumed together. */
  async #hostSleep() {
    const qemu = await this.#runningQemu();
    const daemon = this.service.pid!;
    process.kill(daemon, 'SIGSTOP');
    process.kill(qemu, 'SIGSTOP');
    await sleep(this.options.freezeMs);
    process.kill(qemu, 'SIGCONT');
    process.kill(daemon, 'SIGCONT');
    return { note: `daemon and qemu stopped ${this.options.freezeMs / 1000} s`, ok: true };
  }

  /** The hypervisor alone frozen (throttled) while the host and the daemon run on. */
  async #freezeQemu() {
    const qemu = await this.#runningQemu();
    const before = (await this.service.status()).guest;
    process.kill(qemu, 'SIGSTOP');
    await sleep(this.options.freezeMs);
    process.kill(qemu, 'SIGCONT');
    const resumed = new Date().toISOString();
    // The decision (src/daemon/health-check.ts): a guest that comes back within the threshold is
    // not restarted; its clock is set by the next health check.
    await this.#waitStatus((s) => s.guest.health.state === 'ok' && (s.guest.health.lastAnswerAt ?? '') > resumed, 60_000);
    const after = (await this.service.status()).guest;
    const restarted = after.health.restarts > before.health.restarts || after.boots > before.boots;
    return { note: `qemu stopped ${this.options.freezeMs / 1000} s; ${restarted ? 'the guest was restarted' : `kept running, health ${after.health.state}, clock offset found ${after.health.clockOffsetS ?? '?'} s`}`, ok: !restarted };
  }

  async #restartDaemon() {
    await this.#runningQemu();
    const old = this.service.pid;
    await this.service.crashAndRestart();
    return { note: `daemon ${old} killed, ${this.service.pid} started after RestartSec=${this.service.unit.restartSec}`, ok: true };
  }

  async #configChange() {
    const before = (await this.service.status()).guest.lastSwap?.at;
    this.#configGeneration += 1;
    await writeFile(this.service.configFile, soakConfig(this.service.port, this.#configGeneration));
    const swapped = await this.#waitStatus((s) => s.guest.lastSwap !== undefined && s.guest.lastSwap.at !== before, 240_000);
    const last = (await this.service.status()).guest.lastSwap;
    return { note: swapped ? `swap ${last?.outcome}` : 'no swap within 240 s', ok: swapped && (last?.outcome === 'applied' || last?.outcome === 'applied-next-boot') };
  }

  /** qemu's `stop` over QMP: the hypervisor alive, the guest's CPUs paused, nothing answering. */
  async #wedge() {
    await this.#runningQemu();
    const before = (await this.service.status()).guest.health.restarts;
    const qmp = await QmpClient.connect(runFilesOf({ runDir: this.service.paths.vmDir, name: GUEST_NAME }).qmpSocket);
    const started = Date.now();
    try {
      await qmp.execute('stop');
    } finally {
      qmp.close();
    }
    const detected = await this.#waitStatus((s) => s.guest.health.restarts > before, this.options.wedgeBoundMs + 30_000);
    const ms = Date.now() - started;
    return { note: detected ? `found and restarted after ${Math.round(ms / 1000)} s` : `not restarted within ${Math.round(ms / 1000)} s`, ok: detected && ms <= this.options.wedgeBoundMs };
  }

  async #waitStatus(predicate: (s: Awaited<ReturnType<ServiceDaemon['status']>>) => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const status = await this.service.status().catch(() => undefined);
      if (status && predicate(status)) return true;
      await sleep(500);
    }
    return false;
  }
}
