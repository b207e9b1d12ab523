import { Option, type Command } from 'commander';
import type { Bind } from './index.js';

export function backupCommands(program: Command, bind: Bind): void {
  program
    .command('backup')
    .description('back up VMs: a policy\'s VMs from the cloud, or a libvirt domain / RBD image named directly')
    .option('--policy <name>', 'the policy whose strategy, options, destination and retention apply')
    .option('--vm <id|name...>', 'only these VMs of the policy (Nova id or name)')
    .addOption(new Option('--level <level>', 'full, incremental, or auto (incremental when the previous point allows it)').choices(['full', 'incremental', 'auto']).default('auto'))
    .option('--domain <name>', 'a libvirt domain to back up directly (libvirt-ssh), on --hypervisor')
    .option('--hypervisor <name>', 'inventory hypervisor of --domain (default: the only one)')
    .option('--rbd <pool/image>', 'an RBD image to back up directly (ceph-rbd), in --ceph')
    .option('--ceph <cluster>', 'inventory Ceph cluster of --rbd (default: the only one)')
    .option('-d, --destination <name|path>', 'destination (default: the policy\'s, or the inventory\'s only one)')
    .action(bind(async () => (await import('../actions/backup.js')).backup));
}
