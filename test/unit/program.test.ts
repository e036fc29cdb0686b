/**
 * The command line loads only the group a command belongs to (src/program.ts): a command missing
 * from its group's list still works — every group is loaded when the first word is unknown — but
 * pays for loading all of them. Each command `ferry --help` lists is found by its own name alone,
 * and has its own --help.
 */
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/program.js';

describe('command groups', () => {
  it('every command is registered when its name alone is given, and nothing else is loaded', async () => {
    const all = (await buildProgram([])).commands.map((command) => command.name());
    expect(all).toContain('rebuild');
    for (const name of all) {
      const loaded = (await buildProgram(['node', 'ferry', name])).commands.map((command) => command.name());
      expect(loaded, `ferry ${name}`).toContain(name);
      expect(loaded.length, `ferry ${name} loaded every group`).toBeLessThan(all.length);
    }
  });
});
