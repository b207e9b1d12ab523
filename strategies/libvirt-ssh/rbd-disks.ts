/**
 * The RBD network disks of a domain, handed to the ceph-rbd strategy's session (DESIGN.md §5,
 * issue 7): RBD snapshots, `rbd export-diff` reads, RBD anchors and snapshot rotation are that
 * code's, not duplicated here. What this module decides is WHERE rbd runs and WITH WHICH
 * cluster access:
 *   - rbd.runOn hypervisor (default): over the run's SSH connection, with the ceph.conf/keyring
 *     the hypervisor has (rbd's defaults, or rbd.conf/rbd.keyring), the cephx user and monitors
 *     from the domain XML — or an inventory cephClusters entry when rbd.cluster names one;
 *   - rbd.runOn backup-node: here, with the inventory's cephClusters entry.
 * Hooks and quiesce are the libvirt-ssh session's (one consistency point for file and RBD
 * disks): the ceph-rbd session gets a policy without them and only makes the snapshots.
 */
import { ConfigError } from '../../src/errors.js';
import type { CephClusterConfig, Inventory, PolicyConfig } from '../../src/inventory/types.js';
import type { BackupSession, BackupTarget, StrategyContext, TargetDisk } from '../../src/strategy/contract.js';
import { chooseCluster, openCephRbdSession, sshExec } from '../ceph-rbd/index.js';
import type { DomainDisk } from './domain-xml.js';
import type { Hypervisor } from './hypervisor.js';
import type { RbdOptions } from './plan.js';

/**
 * The cluster name recorded in RBD anchors when the access comes from the domain XML. Constant,
 * so that a VM migrated to another hypervisor of the same cluster stays incremental; the anchor's
 * fsid, image id and snapshot id tell clusters and images apart.
 */
export const HYPERVISOR_CLUSTER = 'hypervisor';

/** `-m` syntax for one <host>: IPv6 addresses in brackets. */
function monitorAddress(h: { name: string; port?: string }): string {
  const host = h.name.includes(':') && !h.name.startsWith('[') ? `[${h.name}]` : h.name;
  return h.port ? `${host}:${h.port}` : host;
}

/** The cluster access for the domain's RBD disks: its name (for anchors) and config. */
export function rbdCluster(disks: DomainDisk[], inventory: Inventory, opts: RbdOptions, domain: string): { name: string; config: CephClusterConfig } {
  if (opts.cluster !== undefined || opts.runOn === 'backup-node') {
    return chooseCluster(inventory, opts.cluster, {
      prefix: `${domain}: `,
      option: 'strategyOptions.rbd.cluster',
      need: 'its RBD disks are read with rbd on the backup node (strategyOptions.rbd.runOn)',
      hint: 'add the cluster (monitors, user, conf, keyring) to cephClusters, or let rbd run on the hypervisor (rbd.runOn: hypervisor)',
    });
  }
  // On the hypervisor, as qemu reaches the images: the XML's cephx user and monitors.
  const users = new Set(disks.map((d) => d.rbd!.user ?? 'admin'));
  const mons = new Set(disks.map((d) => d.rbd!.hosts.map(monitorAddress).join(',')));
  if (users.size > 1 || mons.size > 1) {
    throw new ConfigError(`${domain}: its RBD disks use different cephx users or monitors (${[...users].join(', ')}; ${[...mons].map((m) => m || 'ceph.conf').join(' / ')})`, [], {
      hint: 'name the inventory cephClusters entry to use with strategyOptions.rbd.cluster, or exclude disks (excludeDisks)',
    });
  }
  const monitors = [...mons][0] ? [...mons][0]!.split(',') : [];
  return {
    name: HYPERVISOR_CLUSTER,
    config: {
      user: [...users][0]!,
      ...(monitors.length ? { monitors } : {}),
      ...(opts.conf ? { conf: { path: opts.conf } } : {}),
      ...(opts.keyring ? { keyring: { path: opts.keyring } } : {}),
    },
  };
}

/** The repository key, pool and image of each RBD disk, as the ceph-rbd session takes them. */
export function rbdTargetDisks(disks: DomainDisk[], cluster: string): Extract<TargetDisk, { kind: 'rbd' }>[] {
  return disks.map((d) => ({ key: d.target, kind: 'rbd' as const, pool: d.rbd!.pool, image: d.rbd!.image, cephCluster: cluster }));
}

/** The policy as the ceph-rbd session must see it: no hooks, no quiesce (this strategy runs them around all disks). */
function snapshotsOnly(policy: PolicyConfig | undefined): PolicyConfig | undefined {
  if (!policy) return undefined;
  const { hooks: _hooks, quiesce: _quiesce, ...rest } = policy;
  return { ...rest, quiesce: 'off' };
}

/** Opens the ceph-rbd session for the domain's RBD disks; rbd runs where the options say. */
export async function openRbdDisks(p: { target: BackupTarget; ctx: StrategyContext; hv: Hypervisor; disks: DomainDisk[]; options: RbdOptions; domain: string }): Promise<BackupSession> {
  const { name, config } = rbdCluster(p.disks, p.ctx.inventory, p.options, p.domain);
  const inventory: Inventory = { ...p.ctx.inventory, cephClusters: { ...(p.ctx.inventory.cephClusters ?? {}), [name]: config } };
  const target: BackupTarget = { ...p.target, disks: rbdTargetDisks(p.disks, name) };
  const ctx: StrategyContext = { ...p.ctx, inventory, policy: snapshotsOnly(p.ctx.policy), options: { cluster: name, runOn: p.options.runOn } };
  return openCephRbdSession(target, ctx, p.options.runOn === 'hypervisor' ? { exec: sshExec(p.hv.conn) } : {});
}
