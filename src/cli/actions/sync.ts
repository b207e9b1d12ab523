/**
 * `vprotect sync`: connects to each cloud of the inventory (or the one named by --os-cloud,
 * OS_CLOUD or OS_* variables when there is no inventory) and prints src/openstack/sync.ts's
 * report. Exit 0 with warnings; 77 when a cloud refuses the credentials, 69 when it is down.
 */
import { existsSync } from 'node:fs';
import type { ChalkInstance } from 'chalk';
import { UsageError } from '../../errors.js';
import type { Inventory } from '../../inventory/types.js';
import { Cloud } from '../../openstack/cloud.js';
import { commandProbe, tcpProbe, type HypervisorProbe } from '../../openstack/probe.js';
import { settingsFromEnvironment, settingsFromInventory, type ConnectionSettings } from '../../openstack/settings.js';
import { syncCloud, type SyncReport } from '../../openstack/sync.js';
import type { DiskRecord } from '../../openstack/vm.js';
import { SshPool } from '../../transport/ssh.js';
import type { Action } from '../main.js';

const EMPTY: Pick<Inventory, 'hypervisors' | 'cephClusters' | 'policies' | 'proxies'> = { hypervisors: [], cephClusters: {}, policies: [], proxies: [] };

export const sync: Action = async (ctx, _args, opts) => {
  const osCloud = (opts['osCloud'] as string | undefined) ?? undefined;
  const only = opts['cloud'] as string | undefined;
  const resolve = { env: ctx.env, cwd: process.cwd(), osCloud };

  // Without an inventory file, a cloud from --os-cloud / OS_CLOUD / OS_* still gives a view.
  const standalone = !existsSync(ctx.inventoryPath) && (osCloud !== undefined || ctx.env['OS_CLOUD'] !== undefined || ctx.env['OS_AUTH_URL'] !== undefined);
  const inventory = standalone ? undefined : await ctx.loadInventory();
  let targets: { settings: ConnectionSettings }[];
  if (!inventory) {
    ctx.log.warn(`no inventory (${ctx.inventoryPath}): hypervisors, Ceph clusters and policies are unknown`);
    targets = [{ settings: settingsFromEnvironment(resolve) }];
  } else {
    const names = Object.keys(inventory.clouds).filter((n) => !only || n === only);
    if (only && !names.length) throw new UsageError(`no cloud "${only}" in the inventory (it has: ${Object.keys(inventory.clouds).join(', ') || 'none'})`);
    targets = names.length ? names.map((n) => ({ settings: settingsFromInventory(n, inventory.clouds[n]!, resolve) })) : [{ settings: settingsFromEnvironment(resolve) }];
  }

  const pool = opts['ssh'] === false ? undefined : new SshPool({ env: ctx.env, log: ctx.log, signal: ctx.signal, connectTimeoutMs: 10_000 });
  const probe: HypervisorProbe = pool ? commandProbe((hv, argv) => pool.withHost(hv, (c) => c.exec(argv, { timeoutMs: 30_000, signal: ctx.signal }), ctx.signal)) : tcpProbe;
  const reports: SyncReport[] = [];
  try {
    for (const t of targets) {
      const cloud = await Cloud.connect(t.settings, { log: ctx.log, signal: ctx.signal });
      try {
        reports.push(await syncCloud(cloud, inventory ?? EMPTY, { project: opts['project'] as string | undefined, probe, log: ctx.log }));
      } finally {
        cloud.close();
      }
    }
  } finally {
    await pool?.close();
  }
  ctx.out.result({ clouds: reports }, (data, c) => data.clouds.map((r) => render(r, c)).join('\n'));
};

function backendText(d: DiskRecord): string {
  const b = d.backend;
  switch (b.kind) {
    case 'rbd':
      return `rbd ${b.pool}/${b.image}${b.cephCluster ? ` (ceph ${b.cephCluster})` : ''}`;
    case 'file':
      return `${b.format ?? 'file'} ${b.path}`;
    case 'cinder':
      return `cinder ${b.driver}`;
    default:
      return `unknown: ${b.reason}`;
  }
}

function render(r: SyncReport, c: ChalkInstance): string {
  const lines: string[] = [];
  lines.push(c.bold(`cloud ${r.cloud}`) + ` — ${r.user} on ${r.project}${r.admin ? ' (admin: all projects)' : ''}; compute ${r.microversions.compute}, volume ${r.microversions.volume ?? '-'}`);
  lines.push('');
  lines.push(c.bold(`instances (${r.instances.length})`));
  for (const vm of r.instances) {
    const where = vm.hypervisorHostname ? `${vm.hypervisorHostname}${vm.hypervisor ? '' : c.yellow(' (not in inventory)')} / ${vm.libvirtDomain ?? '?'}` : 'hypervisor unknown';
    const boot = vm.boot.kind === 'image' ? `image ${vm.boot.imageId}` : `volume ${vm.boot.volumeId ?? '?'}`;
    const policy = vm.policy ? `${vm.policy} → ${vm.strategy}` : c.yellow('no policy');
    lines.push(`  ${c.bold(vm.name)} ${c.gray(vm.id)}  ${vm.project.name ?? vm.project.id}  ${vm.status}/${vm.powerState}  az ${vm.availabilityZone ?? '-'}  ${where}`);
    lines.push(`    boot: ${boot}; flavor ${vm.flavor.name ?? vm.flavor.id ?? '?'}; ${policy}`);
    for (const d of vm.disks) {
      const size = d.sizeGb !== undefined ? ` ${d.sizeGb} GiB` : '';
      const boot0 = d.bootIndex === 0 ? ' [boot]' : '';
      lines.push(`    - ${d.key}${d.device ? ` (${d.device})` : ''}${size}${boot0}: ${backendText(d)}${d.backup ? '' : c.gray(' (not backed up)')}`);
    }
  }
  lines.push('');
  lines.push(c.bold(`hypervisors (${r.hypervisors.length})`));
  for (const h of r.hypervisors) {
    const nova = h.nova ? `${h.nova.type ?? '?'} ${h.nova.state ?? '?'}/${h.nova.status ?? '?'}` : 'not in Nova';
    const reach = h.reachability ? (h.reachability.reachable ? c.green(`reachable (${h.reachability.method})`) : c.red(`unreachable: ${h.reachability.detail}`)) : c.gray('not in inventory');
    lines.push(`  ${h.name}  ${nova}  ${h.address ?? ''}  ${reach}  ${h.instances} instance(s)`);
  }
  if (r.cephPools.length) {
    lines.push('');
    lines.push(c.bold('Ceph pools in use'));
    for (const p of r.cephPools) lines.push(`  ${p.pool} (${p.cephCluster ? `cluster ${p.cephCluster}` : c.yellow('no cephClusters entry')}): ${p.usedFor.join(', ')}; ${p.disks} disk(s) on ${p.hypervisors.join(', ') || '-'}`);
  }
  if (r.warnings.length) {
    lines.push('');
    lines.push(c.yellow(c.bold(`warnings (${r.warnings.length})`)));
    for (const w of r.warnings) lines.push(`  ${c.yellow('!')} ${w.message}\n    fix: ${w.fix}`);
  }
  return lines.join('\n');
}
