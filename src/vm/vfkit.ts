/**
 * The vfkit backend (Virtualization.framework on Apple silicon). Syntax from crc-org/vfkit
 * doc/usage.md (options, devices, the RESTful API) and pkg/config/bootloader.go (the cmdline
 * value has its surrounding quotes trimmed). Not run on real hardware here: the argv is checked
 * flag by flag in test/unit/vm-argv.test.ts.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { createExecaRunner, type Runner } from '../process/runner.js';
import { bootCmdline, type RunningVm, type SpecProblem, type VmBackend, type VmHooks, type VmSpec } from './backend.js';
import { BACKEND_FACTS, installHint, type HostPlatform } from './facts.js';
import { ensureUncompressedKernel } from './kernel-image.js';
import { attachVm, launch, problemsError, type HypervisorControl } from './process-vm.js';
import { socketPathProblems } from './qemu.js';
import { runFilesOf } from './run-files.js';
import { validateCommon, validateNoCommas } from './validate.js';

export interface VfkitArgvOptions {
  restSocket: string;
  /** The uncompressed Image to boot (see kernel-image.ts); defaults to spec.kernel. */
  kernel?: string;
}

/** A stable, locally administered unicast MAC per guest, so its DHCP lease survives reboots. */
export function vfkitMac(name: string): string {
  const bytes = createHash('sha256').update(`ferry:${name}`).digest().subarray(0, 6);
  bytes[0] = (bytes[0] & 0xfc) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function buildVfkitArgv(spec: VmSpec, options: VfkitArgvOptions): string[] {
  const argv = [
    '--cpus', String(spec.cpus),
    '--memory', String(spec.memoryBytes / 2 ** 20), // MiB
    // One argv element, no shell: the quotes are vfkit's own, trimmed from the cmdline value.
    '--bootloader', `linux,kernel=${options.kernel ?? spec.kernel},initrd=${spec.initrd},cmdline="${bootCmdline(BACKEND_FACTS.vfkit, spec)}"`,
  ];
  for (const disk of spec.disks) argv.push('--device', `virtio-blk,path=${disk.path}`);
  argv.push('--device', `virtio-net,nat,mac=${vfkitMac(spec.name)}`);
  argv.push('--device', `virtio-serial,logFilePath=${spec.consoleLog}`);
  argv.push('--device', 'virtio-rng');
  if (spec.rosetta) argv.push('--device', 'rosetta,mountTag=rosetta');
  argv.push('--restful-uri', `unix://${options.restSocket}`);
  return argv;
}

/** POST /vm/state {"state": …} over vfkit's unix socket (doc/usage.md, "RESTful API"). */
export function requestVfkitState(socketPath: string, state: 'Stop' | 'HardStop', timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ state });
    const request = http.request(
      { socketPath, path: '/vm/state', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: timeoutMs },
      (response) => {
        response.resume();
        if (response.statusCode === 200) resolve();
        else reject(new Error(`vfkit answered ${response.statusCode} to state ${state}`));
      },
    );
    request.on('timeout', () => request.destroy(new Error(`vfkit did not answer within ${timeoutMs} ms`)));
    request.on('error', reject);
    request.end(body);
  });
}

export interface VfkitBackendOptions {
  runner?: Runner;
  /** Where decompressed kernels are cached (paths.kernelsDir). */
  kernelCacheDir: string;
  host?: HostPlatform;
}

export function createVfkitBackend(options: VfkitBackendOptions): VmBackend {
  const runner = options.runner ?? createExecaRunner();
  const host = options.host ?? { platform: process.platform, arch: os.arch() };
  const facts = BACKEND_FACTS.vfkit;

  async function validate(spec: VmSpec): Promise<SpecProblem[]> {
    const problems = await validateCommon(spec);
    problems.push(...validateNoCommas(spec, 'vfkit'));
    const systems = facts.systemsOn(host);
    if (!systems.includes(spec.system)) {
      problems.push({
        field: 'system',
        message: systems.length ? `vfkit runs ${systems.join(', ')} guests on this host, got ${spec.system}` : `vfkit does not run on this host (${host.platform} ${host.arch})`,
        hint: spec.system === 'x86_64-linux' && facts.rosettaOn(host) ? 'x86_64-linux builds run inside the aarch64 guest through Rosetta (interpreter = "rosetta")' : undefined,
      });
    }
    if (spec.cmdline.includes('"')) {
      problems.push({ field: 'cmdline', message: 'vfkit cannot pass a kernel command line containing \'"\'' });
    }
    if (spec.rosetta && !facts.rosettaOn(host)) {
      problems.push({ field: 'rosetta', message: 'Rosetta for Linux needs an Apple silicon Mac' });
    }
    if (!(await runner.which(facts.binary(spec.system)))) {
      problems.push({ field: 'backend', message: 'vfkit not found on PATH', hint: `install it: ${installHint(facts, host)}` });
    }
    problems.push(...socketPathProblems(runFilesOf(spec).vfkitRestSocket));
    return problems;
  }

  function control(spec: VmSpec): HypervisorControl {
    const restSocket = runFilesOf(spec).vfkitRestSocket;
    return {
      facts,
      spec,
      requestStop: () => requestVfkitState(restSocket, 'Stop'),
      hardStop: () => requestVfkitState(restSocket, 'HardStop'),
      runFilesToRemove: [restSocket],
    };
  }

  async function start(spec: VmSpec, hooks?: VmHooks): Promise<RunningVm> {
    const problems = await validate(spec);
    if (problems.length) throw problemsError('vfkit', spec, problems);
    const kernel = facts.needsUncompressedArm64Kernel && spec.system === 'aarch64-linux' ? await ensureUncompressedKernel(spec.kernel, options.kernelCacheDir) : spec.kernel;
    return launch(
      {
        ...control(spec),
        runner,
        binary: (await runner.which(facts.binary(spec.system)))!,
        args: buildVfkitArgv(spec, { restSocket: runFilesOf(spec).vfkitRestSocket, kernel }),
        writePidfile: true,
      },
      hooks,
    );
  }

  return { facts, validate, start, attach: (recorded, hooks) => attachVm(control(recorded.spec), recorded, hooks) };
}
