/**
 * A policy's VMs as backup targets: the cloud's instances (from `syncCloud`, the same view as
 * `vprotect sync`) that the policy selects, each with its hypervisor, libvirt domain and disks,
 * and a capture of its Nova/Glance/Cinder/Neutron metadata to keep with every point.
 */
import { UsageError } from '../errors.js';
import type { Inventory, PolicyConfig } from '../inventory/types.js';
import type { Environment } from '../inventory/secrets.js';
import type { Logger } from '../log.js';
import { captureMetadata } from '../openstack/capture.js';
import { Cloud } from '../openstack/cloud.js';
import type { HypervisorProbe } from '../openstack/probe.js';
import { settingsFromInventory } from '../openstack/settings.js';
import { syncCloud } from '../openstack/sync.js';
import type { DiskRecord, VmRecord } from '../openstack/vm.js';
import type { BackupTarget, MetadataFile, TargetDisk } from '../strategy/contract.js';

export interface CloudTarget {
  target: BackupTarget;
  /** Reads the instance's cloud metadata now (called by the engine right after the snapshot). */
  captureMetadata: () => Promise<MetadataFile[]>;
  /** Why this VM cannot be backed up as it is (a disk whose storage nobody could tell). */
  refusal?: UsageError;
}

export interface PolicyTargets {
  targets: CloudTarget[];
  /** Warnings of the sync that concern the selected VMs (unknown disk backends, ...). */
  warnings: string[];
  close(): void;
}

export async function policyTargets(
  inventory: Inventory,
  policy: PolicyConfig,
  opts: {
    vms: string[] | undefined;
    env: Environment;
    cwd: string;
    log: Logger;
    signal: AbortSignal;
    probe: HypervisorProbe;
    /** The policy's strategy finds a VM's disks itself (Strategy.discoversDisks). */
    discoversDisks: boolean;
  },
): Promise<PolicyTargets> {
  const cloudName = policy.cloud ?? onlyCloud(inventory);
  const cfg = inventory.clouds[cloudName];
  if (!cfg) throw new UsageError(`policy ${policy.name}: no cloud "${cloudName}" in ${inventory.file}`);
  const cloud = await Cloud.connect(settingsFromInventory(cloudName, cfg, { env: opts.env, cwd: opts.cwd }), { log: opts.log, signal: opts.signal });
  try {
    const report = await syncCloud(cloud, inventory, { probe: opts.probe, log: opts.log });
    let selected = report.instances.filter((vm) => vm.policy === policy.name);
    if (opts.vms?.length) {
      const wanted = new Set(opts.vms);
      const missing = opts.vms.filter((v) => !report.instances.some((vm) => vm.id === v || vm.name === v));
      if (missing.length) throw new UsageError(`no instance ${missing.map((m) => `"${m}"`).join(', ')} in cloud ${cloudName}`, { hint: 'see `vprotect sync`' });
      const outside = report.instances.filter((vm) => (wanted.has(vm.id) || wanted.has(vm.name)) && vm.policy !== policy.name);
      if (outside.length) {
        throw new UsageError(`${outside.map((vm) => vm.name).join(', ')} ${outside.length === 1 ? 'is' : 'are'} not selected by policy ${policy.name}`, { hint: 'check the policy\'s select rules with `vprotect sync`' });
      }
      selected = selected.filter((vm) => wanted.has(vm.id) || wanted.has(vm.name));
    }
    const selectedNames = new Set(selected.map((vm) => vm.name));
    const warnings = report.warnings.filter((w) => w.subject === undefined || selectedNames.has(w.subject)).map((w) => `${w.message} (fix: ${w.fix})`);
    return {
      targets: selected.map((vm) => ({
        target: toTarget(vm, inventory),
        ...(opts.discoversDisks ? {} : refusalFor(vm)),
        captureMetadata: async () => {
          const captured = await captureMetadata(cloud, vm.id, { disks: vm.disks });
          const files: MetadataFile[] = Object.entries(captured.files).map(([name, doc]) => ({ name, content: `${JSON.stringify(doc, null, 2)}\n` }));
          for (const issue of captured.issues) opts.log.warn(`${vm.name}: metadata: ${issue.what}: ${issue.message}`);
          return files;
        },
      })),
      warnings,
      close: () => cloud.close(),
    };
  } catch (err) {
    cloud.close();
    throw err;
  }
}

export function toTarget(vm: VmRecord, inventory: Pick<Inventory, 'hypervisors'>): BackupTarget {
  const hypervisor = inventory.hypervisors.find((h) => h.name === (vm.hypervisor ?? vm.hypervisorHostname));
  const disks = vm.disks.filter((d) => d.backup).map(toTargetDisk).filter((d): d is TargetDisk => d !== undefined);
  return {
    vmId: vm.id,
    vmName: vm.name,
    cloud: vm.cloud,
    ...(vm.project.name ?? vm.project.id ? { project: vm.project.name ?? vm.project.id } : {}),
    ...(hypervisor ? { hypervisor } : {}),
    ...(vm.libvirtDomain ? { domain: vm.libvirtDomain } : {}),
    disks,
    cloudRecord: vm,
  };
}

function toTargetDisk(d: DiskRecord): TargetDisk | undefined {
  const bootIndex = d.bootIndex === undefined ? {} : { bootIndex: d.bootIndex };
  switch (d.backend.kind) {
    case 'rbd':
      return { key: d.key, kind: 'rbd', pool: d.backend.pool, image: d.backend.image, ...(d.backend.cephCluster ? { cephCluster: d.backend.cephCluster } : {}), ...(d.volumeId ? { volumeId: d.volumeId } : {}), ...bootIndex };
    case 'file':
      return { key: d.key, kind: 'file', path: d.backend.path, format: d.backend.format === 'raw' ? 'raw' : 'qcow2', ...bootIndex };
    case 'cinder':
      return d.volumeId ? { key: d.key, kind: 'volume', volumeId: d.volumeId, ...bootIndex } : undefined;
    case 'unknown':
      return undefined;
  }
}

/**
 * A disk whose backend sync could not tell cannot be read by a strategy that relies on the
 * cloud's disk list; leaving it out would report a VM as backed up without one of its disks.
 * (A strategy that discovers disks itself, like libvirt-ssh from the domain XML, is not asked.)
 */
function refusalFor(vm: VmRecord): { refusal?: UsageError } {
  const unknown = vm.disks.filter((d) => d.backup && d.backend.kind === 'unknown');
  if (!unknown.length) return {};
  const why = unknown.map((d) => `${d.key}: ${d.backend.kind === 'unknown' ? d.backend.reason : ''}`).join('; ');
  return { refusal: new UsageError(`${vm.name}: cannot tell where ${unknown.length === 1 ? 'a disk is' : 'some disks are'} stored (${why})`, { hint: 'run `vprotect sync` (with SSH to the hypervisor) and fix what it reports' }) };
}

function onlyCloud(inv: Inventory): string {
  const names = Object.keys(inv.clouds);
  if (names.length !== 1) throw new UsageError(`the inventory has ${names.length} clouds; say which one the policy uses with cloud: NAME`);
  return names[0]!;
}
