/**
 * The vfkit backend (Virtualization.framework: aarch64 guests on Apple silicon, x86_64 guests on
 * Intel Macs). Syntax from crc-org/vfkit doc/usage.md (options, devices, the RESTful API),
 * pkg/config/bootloader.go (the cmdline value has its surrounding quotes trimmed), pkg/config/
 * virtio.go (`readonly` on a disk) and pkg/rest/vf/vm_config.go (a state change is answered
 * 202 Accepted). Not run on a Mac yet: here it runs through the stand-in test/support/
 * vfkit-standin.ts (test/e2e/vfkit.test.ts), written from vfkit's source.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { createExecaRunner, type Runner } from '../process/runner.js';
import { bootCmdline, type RunningVm, type SpecProblem, type VmBackend, type VmHooks, type VmSpec } from './backend.js';
import { BACKEND_FACTS, installHint, thisHost, type HostPlatform } from './facts.js';
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
  // `readonly`: the system disk is shared by guests and cached by its hash; nothing may write it.
  for (const disk of spec.disks) argv.push('--device', `virtio-blk,path=${disk.path}${disk.readOnly ? ',readonly' : ''}`);
  argv.push('--device', `virtio-net,nat,mac=${vfkitMac(spec.name)}`);
  argv.push('--device', `virtio-serial,logFilePath=${spec.consoleLog}`);
  argv.push('--device', 'virtio-rng');
  if (spec.rosetta) argv.push('--device', 'rosetta,mountTag=rosetta');
  argv.push('--restful-uri', `unix://${options.restSocket}`);
  return argv;
}

/**
 * POST /vm/state {"state": …} over vfkit's unix socket (doc/usage.md, "RESTful API"). vfkit
 * answers 202 Accepted (pkg/rest/vf/vm_config.go SetVMState), 500 with {"error": …} when
 * Virtualization.framework refuses (a paused VM cannot be asked to stop).
 */
export function requestVfkitState(socketPath: string, state: 'Stop' | 'HardStop', timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ state });
    const request = http.request(
      { socketPath, path: '/vm/state', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: timeoutMs },
      (response) => {
        let text = '';
        response.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
        response.on('end', () => {
          const code = response.statusCode ?? 0;
          if (code >= 200 && code < 300) resolve();
          else reject(new Error(`vfkit answered ${code} to state ${state}${text.trim() ? `: ${text.trim()}` : ''}`));
        });
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
  const host = options.host ?? thisHost();
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
