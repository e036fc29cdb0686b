/**
 * The checks every backend makes before starting anything. Each collects every problem (not
 * just the first) and names the field or file it is about.
 */
import { stat } from 'node:fs/promises';
import type { SpecProblem, VmSpec } from './backend.js';
import { readDiskLock, readLivePidfile, runFilesOf } from './run-files.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

async function isFile(file: string): Promise<boolean> {
  const info = await stat(file).catch(() => undefined);
  return info?.isFile() ?? false;
}

export async function validateCommon(spec: VmSpec): Promise<SpecProblem[]> {
  const problems: SpecProblem[] = [];
  if (!NAME.test(spec.name)) {
    problems.push({ field: 'name', message: `expected letters, digits, '.', '_' or '-' (at most 63), got ${JSON.stringify(spec.name)}` });
  }
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1) {
    problems.push({ field: 'cpus', message: `expected a whole number of CPUs ≥ 1, got ${spec.cpus}` });
  }
  if (!Number.isInteger(spec.memoryBytes) || spec.memoryBytes < 64 * 2 ** 20 || spec.memoryBytes % 2 ** 20 !== 0) {
    problems.push({ field: 'memoryBytes', message: `expected a whole number of MiB, at least 64 MiB, got ${spec.memoryBytes} bytes` });
  }
  for (const field of ['kernel', 'initrd'] as const) {
    if (!(await isFile(spec[field]))) {
      problems.push({ field, message: `${field} file not found: ${spec[field]}` });
    }
  }
  for (const [index, disk] of spec.disks.entries()) {
    if (!(await isFile(disk.path))) {
      problems.push({ field: `disks[${index}]`, message: `disk image not found: ${disk.path}` });
      continue;
    }
    // A read-only disk may be shared; a writer must be alone (two kernels writing one ext4
    // corrupt it), and nobody reads a disk while another guest writes it.
    const holder = await readDiskLock(disk);
    if (holder) {
      problems.push({
        field: `disks[${index}]`,
        message: `disk ${disk.path} is in use by guest '${holder.guest}' (pid ${holder.pid})`,
        hint: `stop that guest first (its run files are in ${holder.runDir})`,
      });
    }
  }
  const running = await readLivePidfile(runFilesOf(spec).pidfile);
  if (running !== undefined) {
    problems.push({
      field: 'name',
      message: `guest '${spec.name}' is already running (pid ${running}, ${runFilesOf(spec).pidfile})`,
    });
  }
  return problems;
}

/**
 * hyperkit and vfkit split device options on ',' and have no escape for it: a comma in a path
 * would silently become another option.
 */
export function validateNoCommas(spec: VmSpec, backend: string): SpecProblem[] {
  const paths: Array<[string, string]> = [
    ['kernel', spec.kernel],
    ['initrd', spec.initrd],
    ['consoleLog', spec.consoleLog],
    ['runDir', spec.runDir],
    ...spec.disks.map((d, i): [string, string] => [`disks[${i}]`, d.path]),
  ];
  return paths
    .filter(([, value]) => value.includes(','))
    .map(([field, value]) => ({ field, message: `${backend} cannot take a path containing ',': ${value}` }));
}
