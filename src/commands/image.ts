import type { Command } from 'commander';

export function registerImageCommands(program: Command): void {
  program.command('image').description('build and inspect guest images');
}
