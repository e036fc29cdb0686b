/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time per function, and total
 * (inclusive) time per function, the top N of each.
 *
 *   node --cpu-prof --cpu-prof-dir /tmp/prof dist/cli.js image mkfs TREE -o /tmp/x.img
 *   node --import tsx bench/cpuprofile-top.ts /tmp/prof/*.cpuprofile [--top 25]
 */
import { readFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const REPO = resolve(import.meta.dirname, '..');

function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const file = url.startsWith('file://') ? relative(REPO, url.slice('file://'.length)) : url;
  return `${functionName || '(anonymous)'} ${file ? `${file}:${lineNumber + 1}` : ''}`.trim();
}

function summarise(path: string, top: number): string {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);

  // Each sample's time is the delta to the next sample (V8 records the delta before it).
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + delta);
  }
  const totalUs = profile.endTime - profile.startTime;

  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const name = label(byId.get(id)!);
    self.set(name, (self.get(name) ?? 0) + us);
    // Count each function once per stack, even when it recurses.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const ancestor = label(byId.get(at)!);
      if (seen.has(ancestor)) continue;
      seen.add(ancestor);
      inclusive.set(ancestor, (inclusive.get(ancestor) ?? 0) + us);
    }
  }
  const table = (title: string, map: Map<string, number>) =>
    `${title}\n${[...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => `${(us / 1000).toFixed(0).padStart(8)} ms ${((100 * us) / totalUs).toFixed(1).padStart(5)}%  ${name}`)
      .join('\n')}`;
  return `${path}: ${(totalUs / 1000).toFixed(0)} ms profiled\n\n${table('self time', self)}\n\n${table('total time (including callees)', inclusive)}\n`;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
if (positionals.length === 0) {
  process.stderr.write('usage: node --import tsx bench/cpuprofile-top.ts PROFILE.cpuprofile... [--top N]\n');
  process.exit(2);
}
for (const path of positionals) process.stdout.write(`${summarise(path, Number(values.top))}\n`);
