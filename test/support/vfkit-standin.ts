/**
 * A stand-in for vfkit on this Linux machine: the same command line, parsed and refused as vfkit
 * parses and refuses it, the guest run by qemu (tcg) with the devices Virtualization.framework
 * gives it, and vfkit's REST API over the same URI.
 *
 * Written from crc-org/vfkit at b2bc27e50b6103a8f6664ad599fbd3fc0970797f (2026-08-17):
 * - flags: pkg/cmdline/cmdline.go (AddFlags; cobra/pflag: `--flag value`, `--flag=value`,
 *   shorthands, "unknown flag: --x", "flag needs an argument: --x"), cmd/vfkit/root.go (cobra
 *   prints "Error: …", main prints the error again, exit 1);
 * - `--bootloader`: pkg/cmdline/string_slice.go (split on ',' outside double quotes, quotes
 *   trimmed), pkg/config/bootloader.go (linux: kernel, initrd, cmdline; "unknown option for
 *   Linux bootloaders: …"), pkg/vf/bootloader.go (on an arm64 host the kernel must carry the
 *   arm64 Image magic "ARMd" at 0x38: "kernel must be uncompressed, … is a compressed file");
 * - `--device`: pkg/config/virtio.go (deviceFromCmdLine: split on ',', `key=value`; virtio-blk
 *   path/readonly/type/deviceId, the disk opened at parse time: "failed to open file …";
 *   virtio-net nat/mac; virtio-serial logFilePath (truncated: pkg/vf/virtio.go); virtio-rng
 *   takes no option; rosetta mountTag/install/ignore-if-missing), pkg/vf/rosetta_amd64.go
 *   ("rosetta is unsupported on non-arm64 platforms") and rosetta_arm64.go ("rosetta is not
 *   installed": there is no Rosetta here either way);
 * - `--restful-uri`: pkg/rest/rest.go (GET/POST /vm/state), pkg/rest/vf/vm_config.go (the state
 *   JSON; a change answered 202, a refusal 500 {"error"}), pkg/rest/vf/state_change.go (Stop is
 *   RequestStop — here QMP system_powerdown, the ACPI/GPIO power button; HardStop is Stop —
 *   here QMP quit; Pause/Resume — QMP stop/cont);
 * - signals: cmd/vfkit/main.go runVFKit (SIGTERM/SIGINT: RequestStop, 5 s, then Stop); vfkit
 *   exits 0 once the VM has stopped.
 *
 * What stands for the Mac: VFKIT_STANDIN_ARCH (`arm64`, the default, or `amd64`) is the host's
 * GOARCH, so the guest's architecture; VFKIT_STANDIN_TAP names the tap device that stands for
 * vmnet's NAT (the test makes it, with a DHCP server, inside a network namespace). qemu dies
 * with the stand-in (setpriv --pdeathsig), as a VM dies with its vfkit process.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connectQmpWhenReady, type QmpClient } from '../../src/vm/qmp.js';

export class VfkitError extends Error {}

export interface VfkitOptions {
  cpus: number;
  memoryMiB: number;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  bootloader: string[];
  devices: string[];
  restfulUri: string;
  pidfile?: string;
}

type FlagKind = 'uint' | 'string' | 'bool' | 'slice' | 'array';
const FLAGS: Record<string, { short?: string; kind: FlagKind }> = {
  kernel: { short: 'k', kind: 'string' }, 'kernel-cmdline': { short: 'C', kind: 'string' }, initrd: { short: 'i', kind: 'string' },
  bootloader: { short: 'b', kind: 'slice' }, gui: { kind: 'bool' }, cpus: { short: 'c', kind: 'uint' }, memory: { short: 'm', kind: 'uint' },
  timesync: { short: 't', kind: 'string' }, device: { short: 'd', kind: 'array' }, 'log-level': { kind: 'string' },
  'restful-uri': { kind: 'string' }, ignition: { kind: 'string' }, 'cloud-init': { kind: 'slice' }, nested: { short: 'n', kind: 'bool' },
  pidfile: { kind: 'string' }, version: { short: 'v', kind: 'bool' }, help: { short: 'h', kind: 'bool' },
};

/** pkg/cmdline/string_slice.go parseString: ',' splits outside double quotes; quotes kept inside, trimmed around. */
export function parseStringSlice(value: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  const trim = (s: string) => (s.startsWith('"') && s.endsWith('"') ? s.replace(/^"+|"+$/g, '') : s);
  for (const c of value) {
    if (quoted) {
      if (c === '"') quoted = false;
      current += c;
    } else if (c === ',') {
      parts.push(trim(current));
      current = '';
    } else {
      if (c === '"') quoted = true;
      current += c;
    }
  }
  if (quoted) throw new VfkitError('mismatched "');
  if (parts.length || current) parts.push(trim(current));
  return parts;
}

/** cobra/pflag over the flags of pkg/cmdline/cmdline.go. */
export function parseVfkitArgs(argv: readonly string[]): VfkitOptions & { values: Map<string, string[]> } {
  const values = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    let name: string | undefined;
    let inline: string | undefined;
    if (arg.startsWith('--')) {
      [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
      if (!FLAGS[name]) throw new VfkitError(`unknown flag: --${name}`);
    } else if (arg.startsWith('-') && arg.length > 1) {
      const short = arg[1]!;
      name = Object.keys(FLAGS).find((key) => FLAGS[key]!.short === short);
      if (!name) throw new VfkitError(`unknown shorthand flag: '${short}' in ${arg}`);
      inline = arg.length > 2 ? arg.slice(arg[2] === '=' ? 3 : 2) : undefined;
    } else {
      throw new VfkitError(`unknown command "${arg}" for "vfkit"`);
    }
    const flag = FLAGS[name]!;
    let value = inline;
    if (flag.kind === 'bool') value ??= 'true';
    else if (value === undefined) {
      if (i + 1 >= argv.length) throw new VfkitError(`flag needs an argument: --${name}`);
      value = argv[++i]!;
    }
    if (flag.kind === 'uint' && !/^\d+$/.test(value)) {
      throw new VfkitError(`invalid argument "${value}" for "-${flag.short}, --${name}" flag: strconv.ParseUint: parsing "${value}": invalid syntax`);
    }
    values.set(name, [...(values.get(name) ?? []), value]);
  }
  const one = (name: string) => values.get(name)?.at(-1);
  for (const other of ['kernel', 'initrd', 'kernel-cmdline']) {
    if (values.has(other) && values.has('bootloader')) {
      throw new VfkitError(`if any flags in the group [${other} bootloader] are set none of the others can be; [bootloader ${other}] were all set`);
    }
  }
  return {
    values,
    cpus: Number(one('cpus') ?? 1),
    memoryMiB: Number(one('memory') ?? 512),
    kernel: one('kernel'),
    initrd: one('initrd'),
    cmdline: one('kernel-cmdline'),
    bootloader: (values.get('bootloader') ?? []).flatMap(parseStringSlice),
    devices: values.get('device') ?? [],
    restfulUri: one('restful-uri') ?? 'none://',
    pidfile: one('pidfile'),
  };
}

function options(list: readonly string[]): Array<[string, string]> {
  return list.filter((o) => o.length).map((o) => {
    const at = o.indexOf('=');
    return at < 0 ? [o, ''] : [o.slice(0, at), o.slice(at + 1)];
  });
}

export interface LinuxBoot { kernel: string; initrd: string; cmdline: string }

/** pkg/config/bootloader.go BootloaderFromCmdLine, linux only (efi and macos: not in this stand-in). */
export function linuxBootloader(parsed: VfkitOptions): LinuxBoot {
  const boot: Partial<LinuxBoot> = { kernel: parsed.kernel, initrd: parsed.initrd, cmdline: parsed.cmdline };
  if (!parsed.kernel && !parsed.initrd && !parsed.cmdline) {
    const [type, ...rest] = parsed.bootloader;
    if (type === undefined) throw new VfkitError('empty option list in --bootloader command line argument');
    if (type === 'efi' || type === 'macos') throw new VfkitError(`vfkit stand-in: the ${type} bootloader is not implemented`);
    if (type !== 'linux') throw new VfkitError(`unknown bootloader type: ${type}`);
    for (const [key, value] of options(rest)) {
      if (key === 'kernel') boot.kernel = value;
      else if (key === 'initrd') boot.initrd = value;
      else if (key === 'cmdline') boot.cmdline = value.startsWith('"') && value.endsWith('"') ? value.replace(/^"+|"+$/g, '') : value;
      else throw new VfkitError(`unknown option for Linux bootloaders: ${key}`);
    }
  }
  if (!boot.kernel) throw new VfkitError('missing kernel path');
  if (!boot.initrd) throw new VfkitError('missing initrd path');
  if (!boot.cmdline) throw new VfkitError('missing kernel command line');
  return boot as LinuxBoot;
}

function readHead(file: string, bytes: number): Buffer {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (error) {
    throw new VfkitError(`open ${file}: ${errnoText(error)}`);
  }
  const head = Buffer.alloc(bytes);
  try {
    readSync(fd, head, 0, bytes, 0);
  } finally {
    closeSync(fd);
  }
  return head;
}

/** Go's text for the common errnos, as `os.Open` reports them. */
function errnoText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? 'no such file or directory' : code === 'EACCES' ? 'permission denied' : String((error as Error).message);
}

/** pkg/vf/bootloader.go toVzLinuxBootloader: Virtualization.framework boots only an uncompressed arm64 Image. */
export function checkKernel(boot: LinuxBoot, arch: 'arm64' | 'amd64'): void {
  if (arch !== 'arm64') return;
  if (!readHead(boot.kernel, 2048).subarray(0x38, 0x3c).equals(Buffer.from('ARMd', 'latin1'))) {
    throw new VfkitError(`kernel must be uncompressed, ${boot.kernel} is a compressed file`);
  }
}

export type Device =
  | { type: 'virtio-blk'; path: string; readOnly: boolean }
  | { type: 'virtio-net'; mac?: string }
  | { type: 'virtio-serial'; logFile: string }
  | { type: 'virtio-rng' }
  | { type: 'rosetta'; mountTag: string };

const KNOWN_DEVICES = ['rosetta', 'nvme', 'virtio-blk', 'virtio-fs', 'virtio-net', 'virtio-rng', 'virtio-serial', 'virtio-vsock', 'usb-mass-storage', 'virtio-input', 'virtio-gpu', 'virtio-balloon', 'nbd'];

/** pkg/config/virtio.go deviceFromCmdLine and each device's FromOptions. */
export function parseDevice(text: string): Device {
  const [type, ...rest] = text.split(',');
  const opts = options(rest);
  if (!KNOWN_DEVICES.includes(type!)) throw new VfkitError(`unknown device type: ${type}`);
  switch (type) {
    case 'virtio-blk': {
      let file = '';
      let readOnly = false;
      for (const [key, value] of opts) {
        if (key === 'path') file = value;
        else if (key === 'readonly') {
          if (value !== '') throw new VfkitError(`unexpected value for virtio-blk 'readonly' option: ${value}`);
          readOnly = true;
        } else if (key !== 'deviceId' && key !== 'type') throw new VfkitError(`unknown option for virtio-blk devices: ${key}`);
      }
      let head: Buffer;
      try {
        head = readHead(file, 4);
      } catch (error) {
        throw new VfkitError(`failed to open file ${file}: ${(error as Error).message}`);
      }
      if (head.equals(Buffer.from('QFI\xfb', 'latin1'))) throw new VfkitError('vfkit does not support qcow2 image format');
      return { type, path: file, readOnly };
    }
    case 'virtio-net': {
      let nat = false;
      let mac: string | undefined;
      for (const [key, value] of opts) {
        if (key === 'nat') {
          if (value !== '') throw new VfkitError(`unexpected value for virtio-net 'nat' option: ${value}`);
          nat = true;
        } else if (key === 'mac') {
          if (!/^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$/.test(value)) throw new VfkitError(`address ${value}: invalid MAC address`);
          mac = value;
        } else if (['fd', 'unixSocketPath', 'type', 'path', 'vfkitMagic', 'offloading'].includes(key)) {
          throw new VfkitError(`vfkit stand-in: virtio-net '${key}' is not implemented (only nat)`);
        } else throw new VfkitError(`unknown option for virtio-net devices: ${key}`);
      }
      if (!nat) throw new VfkitError("one of 'nat' or 'fd' or 'unixSocketPath' must be set");
      return { type, mac };
    }
    case 'virtio-serial': {
      let logFile = '';
      for (const [key, value] of opts) {
        if (key === 'logFilePath') logFile = value;
        else if (key === 'stdio' || key === 'pty') throw new VfkitError(`vfkit stand-in: virtio-serial '${key}' is not implemented`);
        else throw new VfkitError(`unknown option for virtio-serial devices: ${key}`);
      }
      if (!logFile) throw new VfkitError("one of 'logFilePath', 'stdio' or 'pty' must be set");
      return { type, logFile };
    }
    case 'virtio-rng':
      if (opts.length) throw new VfkitError(`unknown options for virtio-rng devices: [${opts.map(([k, v]) => `{${k} ${v}}`).join(' ')}]`);
      return { type };
    case 'rosetta': {
      let mountTag = '';
      for (const [key, value] of opts) {
        if (key === 'mountTag') mountTag = value;
        else if (key !== 'install' && key !== 'ignore-if-missing') throw new VfkitError(`unknown option for rosetta share: ${key}`);
      }
      return { type, mountTag };
    }
    default:
      throw new VfkitError(`vfkit stand-in: device type ${type} is not implemented`);
  }
}

/** vf.NewVirtualMachine: what Virtualization.framework refuses when the configuration is made. */
export function checkDevices(devices: readonly Device[], arch: 'arm64' | 'amd64'): void {
  for (const device of devices) {
    if (device.type !== 'rosetta') continue;
    if (!device.mountTag) throw new VfkitError("missing mandatory 'mountTage' option for rosetta share");
    throw new VfkitError(arch === 'arm64' ? 'rosetta is not installed' : 'rosetta is unsupported on non-arm64 platforms');
  }
}

/** The qemu command line for the VM vfkit would make: virt/q35, tcg, virtio-pci devices in order. */
export function qemuArgv(parsed: VfkitOptions, boot: LinuxBoot, devices: readonly Device[], arch: 'arm64' | 'amd64', qmp: string, tap?: string): string[] {
  const x86 = arch === 'amd64';
  const argv = ['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-machine', x86 ? 'q35' : 'virt'];
  argv.push('-accel', parsed.cpus > 1 ? 'tcg,thread=multi' : 'tcg', '-cpu', x86 ? 'max' : 'max,pauth-impdef=on');
  argv.push('-smp', String(parsed.cpus), '-m', `${parsed.memoryMiB}M`, '-kernel', boot.kernel, '-initrd', boot.initrd, '-append', boot.cmdline);
  let serials = 0;
  for (const [index, device] of devices.entries()) {
    if (device.type === 'virtio-blk') {
      argv.push('-drive', `file=${device.path},if=none,id=blk${index},format=raw,readonly=${device.readOnly ? 'on' : 'off'},cache=writeback`);
      argv.push('-device', `virtio-blk-pci,drive=blk${index}`);
    } else if (device.type === 'virtio-net') {
      if (!tap) throw new VfkitError('vfkit stand-in: virtio-net,nat needs VFKIT_STANDIN_TAP, the tap device that stands for the NAT');
      const mac = device.mac ?? randomMac();
      argv.push('-netdev', `tap,id=net${index},ifname=${tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=net${index},mac=${mac},romfile=`);
    } else if (device.type === 'virtio-serial') {
      // One virtio-serial controller per console: the first is hvc0 in the guest.
      argv.push('-device', `virtio-serial-pci,id=vser${serials}`, '-chardev', `file,id=con${serials},path=${device.logFile}`);
      argv.push('-device', `virtconsole,chardev=con${serials},bus=vser${serials}.0`);
      serials++;
    } else if (device.type === 'virtio-rng') {
      argv.push('-device', 'virtio-rng-pci');
    }
  }
  argv.push('-qmp', `unix:${qmp},server=on,wait=off`);
  return argv;
}

/** Virtualization.framework's own MAC when none is given: random, locally administered. */
function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0]! & 0xfc) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

type VmState = 'VirtualMachineStateStarting' | 'VirtualMachineStateRunning' | 'VirtualMachineStatePaused' | 'VirtualMachineStateStopping' | 'VirtualMachineStateStopped';

/** pkg/rest: GET/POST /vm/state over a unix socket (`unix:///path`) or TCP (`tcp://host:port`). */
function serveRest(uri: string, vm: { state: () => VmState; change: (to: string) => Promise<void> }): http.Server | undefined {
  if (uri === 'none://') return undefined;
  const url = new URL(uri);
  const server = http.createServer((request, response) => {
    const reply = (code: number, body?: unknown) => {
      response.writeHead(code, body === undefined ? {} : { 'content-type': 'application/json; charset=utf-8' });
      response.end(body === undefined ? undefined : JSON.stringify(body));
    };
    if (request.url !== '/vm/state') return reply(404);
    if (request.method === 'GET') {
      const state = vm.state();
      const running = state === 'VirtualMachineStateRunning';
      return reply(200, { state, canStart: state === 'VirtualMachineStateStopped', canPause: running, canResume: state === 'VirtualMachineStatePaused', canStop: running, canHardStop: running || state === 'VirtualMachineStatePaused' });
    }
    if (request.method !== 'POST') return reply(404);
    let text = '';
    request.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
    request.on('end', () => {
      let body: { state?: unknown };
      try {
        body = JSON.parse(text) as { state?: unknown };
      } catch (error) {
        return reply(400, { error: (error as Error).message });
      }
      vm.change(String(body.state)).then(() => reply(202), (error: Error) => reply(500, { error: error.message }));
    });
  });
  if (url.protocol === 'unix:') server.listen(url.pathname);
  else if (url.protocol === 'tcp:' || url.protocol === 'http:') server.listen(Number(url.port), url.hostname);
  else throw new VfkitError(`invalid scheme ${url.protocol.replace(/:$/, '')}`);
  return server;
}

async function run(argv: readonly string[]): Promise<number> {
  const parsed = parseVfkitArgs(argv);
  if (parsed.values.has('version')) {
    process.stdout.write('vfkit version: 0.6.1 (ferry test stand-in)\n');
    return 0;
  }
  const arch = process.env.VFKIT_STANDIN_ARCH === 'amd64' ? 'amd64' : 'arm64';
  const boot = linuxBootloader(parsed);
  const devices = parsed.devices.map(parseDevice);
  checkKernel(boot, arch);
  checkDevices(devices, arch);
  if (parsed.pidfile) writeFileSync(parsed.pidfile, `${process.pid}\n`);
  const work = mkdtempSync(path.join(tmpdir(), 'vfkit-'));
  const qmpSocket = path.join(work, 'qmp');
  const binary = arch === 'amd64' ? 'qemu-system-x86_64' : 'qemu-system-aarch64';
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', binary, ...qemuArgv(parsed, boot, devices, arch, qmpSocket, process.env.VFKIT_STANDIN_TAP)], { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? 1)));
  let state: VmState = 'VirtualMachineStateStarting';
  let qmp: QmpClient;
  try {
    qmp = await connectQmpWhenReady(qmpSocket, { timeoutMs: 15_000, gaveUp: exited.then(() => undefined) });
  } catch (error) {
    rmSync(work, { recursive: true, force: true });
    throw new VfkitError(`virtualization error: ${(error as Error).message}`);
  }
  state = 'VirtualMachineStateRunning';
  const change = async (to: string): Promise<void> => {
    // pkg/rest/vf/state_change.go's log lines (logrus, on stderr: ferry's hypervisor log).
    const words: Record<string, string> = { Stop: 'stopping machine', HardStop: 'force stopping machine', Pause: 'pausing virtual machine', Resume: 'resuming machine' };
    if (words[to]) process.stderr.write(`level=debug msg="${words[to]}"\n`);
    if (to === 'Stop') {
      if (state !== 'VirtualMachineStateRunning') throw new Error('Invalid virtual machine state transition.');
      await qmp.execute('system_powerdown');
    } else if (to === 'HardStop') {
      if (state === 'VirtualMachineStateStopped') throw new Error('Invalid virtual machine state transition.');
      state = 'VirtualMachineStateStopping';
      void qmp.execute('quit').catch(() => {});
    } else if (to === 'Pause' || to === 'Resume') {
      const paused = to === 'Pause';
      if (state !== (paused ? 'VirtualMachineStateRunning' : 'VirtualMachineStatePaused')) throw new Error('Invalid virtual machine state transition.');
      await qmp.execute(paused ? 'stop' : 'cont');
      state = paused ? 'VirtualMachineStatePaused' : 'VirtualMachineStateRunning';
    } else {
      throw new Error(`invalid new VMState: ${to}`);
    }
  };
  const server = serveRest(parsed.restfulUri, { state: () => state, change });
  const shutdown = () => {
    void change('Stop').catch(() => {});
    setTimeout(() => void change('HardStop').catch(() => {}), 5000).unref();
  };
  process.on('SIGTERM', shutdown).on('SIGINT', shutdown);
  const code = await exited;
  state = 'VirtualMachineStateStopped';
  qmp.close();
  server?.close();
  if (server && parsed.restfulUri.startsWith('unix:')) {
    try {
      unlinkSync(new URL(parsed.restfulUri).pathname);
    } catch {
      // already gone
    }
  }
  rmSync(work, { recursive: true, force: true });
  if (code !== 0) throw new VfkitError(`virtualization error: qemu exited with code ${code}`);
  return 0;
}

if (process.argv[1] && import.meta.filename === path.resolve(process.argv[1])) {
  run(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: Error) => {
      // cobra prints "Error: …" (and the usage), then main prints the error again; exit 1.
      process.stderr.write(`Error: ${error.message}\n${error.message}\n`);
      process.exit(1);
    },
  );
}
