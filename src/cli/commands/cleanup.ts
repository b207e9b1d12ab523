/**
 * `vprotect cleanup`: what killed runs left on the sources (RBD snapshots, checkpoints,
 * overlays) — listed, then removed unless --list or the global --dry-run says otherwise.
 */
import type { Command } from 'commander';
import type { Bind } from './index.js';

export function cleanupCommands(program: Command, bind: Bind): void {
  program
    .command('cleanup')
    .description('find what killed runs left on the sources (vprotect snapshots, …) and remove it; never what the next incremental needs')
    .option('--list', 'only list the leftovers (like --dry-run)')
    .option('--strategy <name>', 'only ask this strategy (ceph-rbd, libvirt-ssh, cinder-attach)')
    .action(bind(async () => (await import('../actions/cleanup.js')).cleanup));
}
