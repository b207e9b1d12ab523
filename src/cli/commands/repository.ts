/**
 * Commands on the backup repository: restore (to a file or stdout; more targets plug in as
 * RestoreTargets), list, show, verify, prune, merge, export, import, unlock.
 */
import { Option, type Command } from 'commander';
import type { Bind } from './index.js';

const destination = () => new Option('-d, --destination <name|path>', 'an inventory destination, or the path of a repository (default: the inventory\'s only destination)');
const int = (v: string) => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`"${v}" is not a whole number`);
  return n;
};

export function repositoryCommands(program: Command, bind: Bind): void {
  program
    .command('restore')
    .description('restore a disk of a restore point (checked while it is read: a damaged chain stops with exit 65)')
    .requiredOption('--point <id>', 'the restore point')
    .option('--disk <key>', 'the disk (vda, …); may be left out when the point has one disk')
    .option('--to-file <path>', 'write a sparse file')
    .addOption(new Option('--format <format>', 'format of --to-file').choices(['raw', 'qcow2']).default('raw'))
    .option('--to-stdout', 'write the raw disk to stdout')
    .option('--to-rbd <pool/image>', 'write into a new RBD image (ceph-rbd; --overwrite to replace an existing one)')
    .option('--overwrite', 'with --to-rbd: replace the content of an existing image')
    .option('--ceph <cluster>', 'with --to-rbd: the inventory\'s Ceph cluster (default: its only one)')
    .option('--to-cloud [cloud]', 'recreate the instance in OpenStack (default cloud: the point\'s, or the only one): volumes written through Ceph RBD, an image-booted root disk uploaded to Glance, keypairs, the server (waited until ACTIVE); --name, --project, --flavor, --network, --availability-zone and --volume-type map it as for --plan; a failed run removes what it made')
    .option('--delete-image', 'with --to-cloud: delete the uploaded root image once the server is ACTIVE (default: keep it; rebuild, resize and evacuation need it)')
    .option('--plan', 'print what restoring the instance into OpenStack would create, and where, without creating anything')
    .option('--cloud <name>', 'with --plan: the inventory cloud to restore into (default: the point\'s, or the only one)')
    .option('--name <name>', 'with --plan: name of the new server (default: the original\'s)')
    .option('--project <name|id>', 'with --plan: project to restore into (default: the original\'s)')
    .option('--flavor <name|id>', 'with --plan: flavor (default: the original\'s)')
    .option('--network <name|id|none>', 'with --plan: network for every port (default: the original networks)')
    .option('--availability-zone <zone>', 'with --plan: availability zone')
    .option('--volume-type <type>', 'with --plan: volume type for every volume (default: each volume\'s own)')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/restore.js')).restore));

  program
    .command('restore-vm')
    .description('restore a whole libvirt domain from a libvirt-ssh point: disks written to a hypervisor over SSH, the saved XML defined under a new name (new UUID, paths rewritten)')
    .requiredOption('--point <id>', 'the restore point')
    .requiredOption('--to-hypervisor <name>', 'inventory hypervisor to restore to')
    .requiredOption('--define-as <name>', 'name of the new domain')
    .requiredOption('--dir <path>', 'directory on the hypervisor for the disk files')
    .addOption(new Option('--format <format>', 'format of the disk files').choices(['qcow2', 'raw']).default('qcow2'))
    .option('--disk <key...>', 'only these disks (default: all)')
    .option('--start', 'start the domain once defined')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/restore-vm.js')).restoreVm));

  program
    .command('list')
    .description('chains and points in the repository: level, sizes, status, age')
    .option('--vm <id|name>', 'only this VM')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/catalog.js')).list));

  program
    .command('show')
    .description('one restore point: manifest, disks, sizes, the chain it belongs to')
    .argument('<point>', 'point id')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/catalog.js')).show));

  program
    .command('verify')
    .description('check points: structure, manifests, SHA256SUMS, block maps, chain continuity (exit 65 naming what is damaged and every point that depends on it)')
    .argument('[point]', 'point id (with its chain)')
    .option('--all', 'every point in the repository')
    .option('--vm <id|name>', 'every point of this VM')
    .option('--read-data [percent]', 'also read the data: all of it, or a random PERCENT of the blocks of full images')
    .option('--rebuild-maps', 'compute the block map of each point through its chain; compare with the stored one, store it where there is none')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/verify.js')).verify));

  program
    .command('prune')
    .description('remove points that the retention rules do not keep (never one that a kept point depends on); says why for each point')
    .option('--policy <name>', 'use the retention of this inventory policy')
    .option('--vm <id|name>', 'only this VM')
    .option('--keep-last <n>', 'keep the newest n points', int)
    .option('--keep-hourly <n>', 'keep the newest point of each of the last n hours with points', int)
    .option('--keep-daily <n>', 'same per day (UTC)', int)
    .option('--keep-weekly <n>', 'same per ISO week', int)
    .option('--keep-monthly <n>', 'same per month', int)
    .option('--keep-yearly <n>', 'same per year', int)
    .addOption(destination())
    .action(bind(async () => (await import('../actions/prune.js')).prune));

  program
    .command('merge')
    .description('fold the oldest incrementals of a chain into its full point ("forever incremental"); crash-safe, re-run to finish')
    .argument('<chain>', 'chain id')
    .option('--keep <n>', 'incrementals to leave after the full point (default 0)', int)
    .addOption(destination())
    .action(bind(async () => (await import('../actions/merge.js')).merge));

  program
    .command('export')
    .description('write a point as a tar stream: its disks as sparse raw images, its metadata and manifest')
    .argument('<point>', 'point id')
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/archive.js')).exportPoint));

  program
    .command('import')
    .description('take an exported point back into a repository (as a new full point)')
    .argument('[file]', 'the tar file (default: stdin)')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/archive.js')).importPoint));

  program
    .command('unlock')
    .description('remove the lock of a VM left by a process that is gone')
    .argument('<vm>', 'VM id')
    .option('--force', 'also when the holder still runs on this host')
    .addOption(destination())
    .action(bind(async () => (await import('../actions/unlock.js')).unlock));
}
