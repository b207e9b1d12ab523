/**
 * `vprotect sync`: vprotect's view of one cloud (DESIGN.md §6) — instances across projects
 * (admin) or in one project, each with its hypervisor, libvirt domain, boot source, disks and
 * their backends, zone, power state, and the policy and strategy it falls under; the
 * hypervisors with their reachability; the Ceph pools the instances use. Whatever the
 * inventory does not cover becomes a warning that says how to fix it.
 */
import { errorMessage } from '../errors.js';
import type { HypervisorConfig, Inventory, StrategyName } from '../inventory/types.js';
import type { Logger } from '../log.js';
import type { Volume, VolumeConnection } from './cinder.js';
import type { Cloud } from './cloud.js';
import { httpStatusOf } from './errors.js';
import type { Hypervisor, Server } from './nova.js';
import type { DomainDisk, HypervisorProbe, Reachability } from './probe.js';
import { matchingPolicies } from './select.js';
import { describeDisks, type DiskContext, type VmRecord } from './vm.js';

export interface SyncWarning {
  /** Stable identifier for --json consumers. */
  code:
    | 'not-admin'
    | 'service-unavailable'
    | 'hypervisor-not-in-inventory'
    | 'hypervisor-not-in-nova'
    | 'hypervisor-unreachable'
    | 'disk-backend-unknown'
    | 'ceph-cluster-missing'
    | 'no-policy'
    | 'several-policies'
    | 'strategy-mismatch'
    | 'no-proxy';
  message: string;
  fix: string;
  /** Instance, hypervisor or pool the warning is about. */
  subject?: string | undefined;
}

export interface HypervisorStatus {
  name: string;
  /** From Nova (admin only). */
  nova: { state: string | undefined; status: string | undefined; type: string | undefined; hostIp: string | undefined; serviceHost: string | undefined } | undefined;
  inInventory: boolean;
  address: string | undefined;
  reachability: Reachability | undefined;
  instances: number;
}

export interface CephPoolUse {
  pool: string;
  cephCluster: string | undefined;
  /** "volumes" for Cinder volumes, "ephemeral" for Nova disks (images_type=rbd). */
  usedFor: ('volumes' | 'ephemeral')[];
  hypervisors: string[];
  disks: number;
}

export interface SyncReport {
  cloud: string;
  user: string;
  project: string;
  admin: boolean;
  scope: 'all-projects' | 'project';
  microversions: { compute: string; volume: string | undefined };
  instances: VmRecord[];
  hypervisors: HypervisorStatus[];
  cephPools: CephPoolUse[];
  warnings: SyncWarning[];
}

export interface SyncOptions {
  /** Only this project (name or id); default: all projects for an admin, else the token's. */
  project?: string | undefined;
  probe: HypervisorProbe;
  log: Logger;
  /** How many hypervisor look-ups run at once. */
  concurrency?: number;
}

type InventoryView = Pick<Inventory, 'hypervisors' | 'cephClusters' | 'policies' | 'proxies'>;

export async function syncCloud(cloud: Cloud, inventory: InventoryView, opts: SyncOptions): Promise<SyncReport> {
  const warnings: SyncWarning[] = [];
  const warn = (w: SyncWarning) => warnings.push(w);
  const session = cloud.session;
  const token = session.token;
  const admin = session.isAdmin;
  const nova = await cloud.nova();

  if (!admin) {
    warn({
      code: 'not-admin',
      message: `user ${token.user.name} has no admin role: only project ${token.project?.name} is visible, without hypervisors, hosts or libvirt domain names`,
      fix: 'give the backup user the admin role (or a policy that allows os-extended-server-attributes and os-hypervisors) to back up across projects',
    });
  }

  // Projects: names for ids, and the --project filter.
  const projectNames = new Map<string, string>();
  if (token.project) projectNames.set(token.project.id, token.project.name);
  if (admin) {
    try {
      for (const p of await cloud.identity.listProjects()) projectNames.set(p.id, p.name);
    } catch (err) {
      opts.log.debug(`cannot list projects: ${errorMessage(err)}`);
    }
  }
  let projectId: string | undefined;
  if (opts.project) {
    projectId = [...projectNames].find(([id, name]) => id === opts.project || name === opts.project)?.[0] ?? opts.project;
  }

  const servers = await nova.listServers(admin ? (projectId ? { projectId } : { allProjects: true }) : {});
  const visible = projectId ? servers.filter((s) => s.projectId === projectId) : servers;

  const { volumes, connections, volumeMicroversion } = await volumeView(cloud, admin, warn);
  const novaHypervisors = admin ? await nova.listHypervisors().catch((err: unknown) => (warnService(warn, 'compute os-hypervisors', err), [] as Hypervisor[])) : [];

  // Hypervisors: Nova's, the inventory's, and their reachability.
  const byName = new Map(inventory.hypervisors.map((h) => [h.name, h]));
  const reach = new Map<string, Reachability>();
  await mapLimit(inventory.hypervisors, opts.concurrency ?? 8, async (h) => reach.set(h.name, await opts.probe.check(h)));

  // libvirt's view of each domain on a reachable inventory hypervisor.
  const domains = new Map<string, DomainDisk[] | undefined>();
  await mapLimit(visible, opts.concurrency ?? 8, async (s) => {
    const hv = s.hypervisorHostname ? byName.get(s.hypervisorHostname) : undefined;
    if (!hv || !s.instanceName || !reach.get(hv.name)?.reachable) return;
    try {
      domains.set(s.id, await opts.probe.domainDisks(hv, s.instanceName));
    } catch (err) {
      opts.log.warn(`cannot read the disks of ${s.name} (${s.instanceName}) on ${hv.name}: ${errorMessage(err)}`);
    }
  });

  const cloudName = cloud.name;
  const instances = visible.map((s) => record(cloudName, s, projectNames, byName, { volumes, connections, domainDisks: domains.get(s.id), cephClusters: inventory.cephClusters }, inventory, warn));
  checkHypervisors(instances, novaHypervisors, inventory.hypervisors, reach, admin, warn);

  const hypervisorNames = new Set([...novaHypervisors.map((h) => h.hostname), ...inventory.hypervisors.map((h) => h.name)]);
  const hypervisors: HypervisorStatus[] = [...hypervisorNames].sort().map((name) => {
    const n = novaHypervisors.find((h) => h.hostname === name);
    const inv = byName.get(name);
    return {
      name,
      nova: n ? { state: n.state, status: n.status, type: n.type, hostIp: n.hostIp, serviceHost: n.serviceHost } : undefined,
      inInventory: inv !== undefined,
      address: inv ? `${inv.address}:${inv.port ?? 22}` : undefined,
      reachability: reach.get(name),
      instances: instances.filter((i) => i.hypervisorHostname === name).length,
    };
  });

  return {
    cloud: cloudName,
    user: `${token.user.domain.name}\\${token.user.name}`,
    project: token.project ? `${token.project.name}@${token.project.domain.name}` : '',
    admin,
    scope: admin && !projectId ? 'all-projects' : 'project',
    microversions: { compute: nova.microversion, volume: volumeMicroversion },
    instances,
    hypervisors,
    cephPools: cephPools(instances, warn),
    warnings,
  };
}

async function volumeView(cloud: Cloud, admin: boolean, warn: (w: SyncWarning) => void) {
  const volumes = new Map<string, Volume>();
  const connections = new Map<string, VolumeConnection>();
  let volumeMicroversion: string | undefined;
  try {
    const cinder = await cloud.cinder();
    volumeMicroversion = cinder.microversion;
    for (const v of await cinder.listVolumes({ allProjects: admin })) volumes.set(v.id, v);
    try {
      for (const a of await cinder.listAttachments(admin)) if (a.connection && a.status === 'attached') connections.set(a.volumeId, a.connection);
    } catch (err) {
      // Older Cinder (< 3.27) or a policy that hides attachments: backends of volumes stay unknown.
      warnService(warn, 'volume attachments', err);
    }
  } catch (err) {
    warnService(warn, 'volume', err);
  }
  return { volumes, connections, volumeMicroversion };
}

function warnService(warn: (w: SyncWarning) => void, what: string, err: unknown): void {
  const status = httpStatusOf(err);
  warn({
    code: 'service-unavailable',
    message: `cannot read ${what}: ${errorMessage(err)}`,
    fix: status === 403 ? 'the user needs the admin role for this' : 'check that the service is in the catalog and up (or set endpointOverrides)',
  });
}

function record(
  cloud: string,
  s: Server,
  projectNames: Map<string, string>,
  hypervisors: Map<string, HypervisorConfig>,
  disksCtx: Omit<DiskContext, 'cloud'>,
  inventory: InventoryView,
  warn: (w: SyncWarning) => void,
): VmRecord {
  const disks = describeDisks(s, { cloud, ...disksCtx });
  const bootVolume = disks.find((d) => d.bootIndex === 0 && d.volumeId)?.volumeId;
  const vm: VmRecord = {
    cloud,
    id: s.id,
    name: s.name,
    project: { id: s.projectId, name: projectNames.get(s.projectId) },
    userId: s.userId,
    status: s.status,
    powerState: s.powerState,
    availabilityZone: s.availabilityZone,
    host: s.host,
    hypervisorHostname: s.hypervisorHostname,
    hypervisor: s.hypervisorHostname && hypervisors.has(s.hypervisorHostname) ? s.hypervisorHostname : undefined,
    libvirtDomain: s.instanceName,
    flavor: { id: s.flavor.id, name: s.flavor.name, vcpus: s.flavor.vcpus, ramMb: s.flavor.ramMb, diskGb: s.flavor.diskGb },
    boot: s.imageId ? { kind: 'image', imageId: s.imageId } : { kind: 'volume', volumeId: bootVolume },
    keyName: s.keyName,
    tags: s.tags,
    metadata: s.metadata,
    disks,
    policy: undefined,
    strategy: undefined,
  };
  const policies = matchingPolicies({ ...vm, projectId: s.projectId, projectName: vm.project.name }, inventory.policies, cloud);
  const label = `${s.name} (${s.id})`;
  if (!policies.length) {
    warn({ code: 'no-policy', subject: s.id, message: `instance ${label} is not selected by any policy: it will not be backed up`, fix: `add it to a policy's select (e.g. include: [${s.id}]) or exclude it explicitly` });
  } else {
    vm.policy = policies[0]!.name;
    vm.strategy = policies[0]!.strategy;
    if (policies.length > 1) {
      warn({ code: 'several-policies', subject: s.id, message: `instance ${label} matches policies ${policies.map((p) => p.name).join(', ')}; ${vm.policy} wins`, fix: `exclude it from the others, or narrow their select` });
    }
    checkStrategy(vm, vm.strategy, inventory, warn);
  }
  for (const d of disks) {
    if (d.backup && d.backend.kind === 'unknown' && vm.hypervisor === undefined) continue; // reported as hypervisor-not-in-inventory
    if (d.backup && d.backend.kind === 'unknown') {
      warn({ code: 'disk-backend-unknown', subject: s.id, message: `disk ${d.key} of ${label}: ${d.backend.reason}`, fix: `make hypervisor ${vm.hypervisor} reachable over SSH with virsh access` });
    }
  }
  return vm;
}

function checkStrategy(vm: VmRecord, strategy: StrategyName, inventory: InventoryView, warn: (w: SyncWarning) => void): void {
  const label = `${vm.name} (${vm.id})`;
  const backed = vm.disks.filter((d) => d.backup);
  if (strategy === 'libvirt-ssh' && !vm.hypervisor) {
    warn({
      code: 'strategy-mismatch',
      subject: vm.id,
      message: `instance ${label} uses libvirt-ssh (policy ${vm.policy}) but runs on ${vm.hypervisorHostname ?? 'an unknown hypervisor'}, which the inventory does not list`,
      fix: `add a hypervisors entry with name: ${vm.hypervisorHostname ?? '<hypervisor_hostname>'}`,
    });
  }
  if (strategy === 'ceph-rbd') {
    const notRbd = backed.filter((d) => d.backend.kind !== 'rbd' && d.backend.kind !== 'unknown');
    if (notRbd.length) {
      warn({
        code: 'strategy-mismatch',
        subject: vm.id,
        message: `instance ${label} uses ceph-rbd (policy ${vm.policy}) but disk(s) ${notRbd.map((d) => d.key).join(', ')} are not RBD images`,
        fix: 'use libvirt-ssh or cinder-attach for this instance',
      });
    }
  }
  if (strategy === 'cinder-attach' && !inventory.proxies.some((p) => p.cloud === undefined || p.cloud === vm.cloud)) {
    warn({ code: 'no-proxy', subject: vm.id, message: `instance ${label} uses cinder-attach but the inventory has no proxy VM for cloud ${vm.cloud}`, fix: `add proxies: [{cloud: ${vm.cloud}, serverId: <the VM vprotect runs on>}]` });
  }
}

function checkHypervisors(instances: VmRecord[], nova: Hypervisor[], inventory: HypervisorConfig[], reach: Map<string, Reachability>, admin: boolean, warn: (w: SyncWarning) => void): void {
  const used = new Map<string, VmRecord[]>();
  for (const vm of instances) if (vm.hypervisorHostname) used.set(vm.hypervisorHostname, [...(used.get(vm.hypervisorHostname) ?? []), vm]);
  for (const [name, vms] of used) {
    if (inventory.some((h) => h.name === name)) continue;
    const ip = nova.find((h) => h.hostname === name)?.hostIp;
    warn({
      code: 'hypervisor-not-in-inventory',
      subject: name,
      message: `hypervisor ${name} runs ${vms.length} instance(s) (${vms.slice(0, 3).map((v) => v.name).join(', ')}${vms.length > 3 ? ', …' : ''}) but is not in the inventory: their local disks cannot be read`,
      fix: `add to hypervisors: - {name: ${name}, address: ${ip ?? '<address>'}, user: root, keyFile: <key>, hostKey: {knownHostsFile: <file>}}`,
    });
  }
  for (const h of inventory) {
    if (admin && nova.length && !nova.some((n) => n.hostname === h.name)) {
      warn({
        code: 'hypervisor-not-in-nova',
        subject: h.name,
        message: `inventory hypervisor ${h.name} is not a Nova hypervisor of this cloud`,
        fix: `its name must equal Nova's hypervisor_hostname; Nova knows: ${nova.map((n) => n.hostname).join(', ')}`,
      });
    }
    const r = reach.get(h.name);
    if (r && !r.reachable) {
      warn({ code: 'hypervisor-unreachable', subject: h.name, message: `hypervisor ${h.name} is not reachable: ${r.detail}`, fix: `check address/port (${h.address}:${h.port ?? 22}), firewall and that sshd runs` });
    }
  }
}

function cephPools(instances: VmRecord[], warn: (w: SyncWarning) => void): CephPoolUse[] {
  const pools = new Map<string, CephPoolUse>();
  for (const vm of instances) {
    for (const d of vm.disks) {
      if (d.backend.kind !== 'rbd') continue;
      const key = `${d.backend.cephCluster ?? '?'}/${d.backend.pool}`;
      const use = pools.get(key) ?? { pool: d.backend.pool, cephCluster: d.backend.cephCluster, usedFor: [], hypervisors: [], disks: 0 };
      const kind = d.role === 'volume' ? 'volumes' : 'ephemeral';
      if (!use.usedFor.includes(kind)) use.usedFor.push(kind);
      if (vm.hypervisorHostname && !use.hypervisors.includes(vm.hypervisorHostname)) use.hypervisors.push(vm.hypervisorHostname);
      use.disks++;
      pools.set(key, use);
    }
  }
  for (const p of pools.values()) {
    if (p.cephCluster) continue;
    warn({
      code: 'ceph-cluster-missing',
      subject: p.pool,
      message: `${p.disks} disk(s) live in Ceph pool ${p.pool}, which no cephClusters entry covers for this cloud`,
      fix: `add cephClusters: {<name>: {user: <cephx user>, pools: [${p.pool}], usedBy: [{cloud: <this cloud>}], conf/keyring ...}}`,
    });
  }
  return [...pools.values()].sort((a, b) => a.pool.localeCompare(b.pool));
}

async function mapLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}
