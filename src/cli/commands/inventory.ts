import type { Command } from 'commander';
import type { Bind } from './index.js';

export function inventoryCommands(program: Command, bind: Bind): void {
  const inventory = program.command('inventory').description('check and show the inventory');
  inventory
    .command('validate')
    .description('validate the inventory: every problem with file:line:column and its path (exit 78 if any)')
    .option('--offline', 'skip checks that need this machine (key files readable, secret variables set)')
    .action(bind(async () => (await import('../actions/inventory.js')).validate));
  inventory
    .command('show')
    .description('print the inventory as vprotect understands it, secrets redacted')
    .action(bind(async () => (await import('../actions/inventory.js')).show));
}
