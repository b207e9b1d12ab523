import type { Command } from 'commander';
import type { Bind } from './index.js';

export function openstackCommands(program: Command, bind: Bind): void {
  program
    .command('sync')
    .description("show vprotect's view of the cloud: instances (hypervisor, libvirt domain, boot source, disks and backends, policy and strategy), hypervisors and their reachability, Ceph pools, and what the inventory does not cover")
    .option('--cloud <name>', 'only this cloud of the inventory')
    .option('--project <name>', 'only this project (name or id); default: every project the user can see (all, for an admin)')
    .option('--os-cloud <name>', 'take the cloud from this clouds.yaml entry (like openstack --os-cloud; also OS_CLOUD)')
    .option('--no-ssh', 'only check that hypervisors answer on their SSH port; do not log in to read domain disks')
    .action(bind(async () => (await import('../actions/sync.js')).sync));
}
