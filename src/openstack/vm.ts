/**
 * vprotect's record of an instance (DESIGN.md §2 "VmRecord"): where it runs, how it boots,
 * and for every disk where its data is — the input of the planner and the strategies. Built
 * from typed API results only; the disk layout comes from Nova and Cinder, refined by what
 * libvirt reports on the hypervisor when a probe can ask it.
 */
import type { CephClusterConfig, StrategyName } from '../inventory/types.js';
import type { Volume, VolumeConnection } from './cinder.js';
import type { PowerState, Server } from './nova.js';
import type { DomainDisk } from './probe.js';

export type DiskBackend =
  /** A Ceph RBD image: Cinder `volumes/volume-<id>`, or Nova's `vms/<uuid>_disk` with images_type=rbd. */
  | { kind: 'rbd'; pool: string; image: string; cephCluster: string | undefined; monitors: string[] }
  /** A file on the hypervisor (Nova's qcow2 `instances/<uuid>/disk`, raw with images_type=raw). */
  | { kind: 'file'; path: string; format: string | undefined }
  /** A Cinder volume on another transport (iSCSI, NFS, FC): cinder-attach only. */
  | { kind: 'cinder'; driver: string }
  | { kind: 'unknown'; reason: string };

export interface DiskRecord {
  /** Stable and file-name safe: "root", "ephemeral0", "swap", "volume-<id>" (the repository's disk key). */
  key: string;
  role: 'root' | 'ephemeral' | 'swap' | 'volume';
  /** Guest device as Nova or libvirt names it (/dev/vdb, sda). */
  device: string | undefined;
  /** 0 for the boot disk. */
  bootIndex: number | undefined;
  sizeGb: number | undefined;
  volumeId: string | undefined;
  volumeType: string | undefined;
  deleteOnTermination: boolean | undefined;
  /** Swap is recreated empty on restore, never backed up. */
  backup: boolean;
  backend: DiskBackend;
  /** "libvirt" when the hypervisor confirmed it, "cinder" from the attachment, "inferred" otherwise. */
  evidence: 'libvirt' | 'cinder' | 'inferred';
}

export type BootSource = { kind: 'image'; imageId: string } | { kind: 'volume'; volumeId: string | undefined };

export interface VmRecord {
  cloud: string;
  id: string;
  name: string;
  project: { id: string; name: string | undefined };
  userId: string;
  status: string;
  powerState: PowerState;
  availabilityZone: string | undefined;
  host: string | undefined;
  hypervisorHostname: string | undefined;
  /** The inventory hypervisor it runs on (same name as hypervisor_hostname), if there is one. */
  hypervisor: string | undefined;
  libvirtDomain: string | undefined;
  flavor: { id: string | undefined; name: string | undefined; vcpus: number | undefined; ramMb: number | undefined; diskGb: number | undefined };
  boot: BootSource;
  keyName: string | undefined;
  tags: string[];
  metadata: Record<string, string>;
  disks: DiskRecord[];
  policy: string | undefined;
  strategy: StrategyName | undefined;
}

export interface DiskContext {
  cloud: string;
  volumes: ReadonlyMap<string, Volume>;
  /** Cinder attachment connections by volume id (RBD pool/image). */
  connections: ReadonlyMap<string, VolumeConnection>;
  /** libvirt's view of the domain, when a probe could ask. */
  domainDisks: readonly DomainDisk[] | undefined;
  cephClusters: Readonly<Record<string, CephClusterConfig>>;
}

const devName = (d: string | undefined) => d?.replace(/^\/dev\//, '');

/** The inventory Ceph cluster that holds `pool` for this cloud and zone, if the inventory says. */
export function cephClusterFor(clusters: Readonly<Record<string, CephClusterConfig>>, cloud: string, az: string | undefined, pool: string, monitors: readonly string[] = []): string | undefined {
  const candidates = Object.entries(clusters).filter(([, c]) => !c.pools || c.pools.includes(pool));
  const usedHere = candidates.filter(([, c]) => c.usedBy?.some((u) => u.cloud === cloud && (!u.availabilityZone || !az || u.availabilityZone === az)));
  const byMonitor = candidates.filter(([, c]) => monitors.length && c.monitors?.some((m) => monitors.includes(m)));
  return (usedHere[0] ?? byMonitor[0])?.[0];
}

function rbdBackend(ctx: DiskContext, az: string | undefined, pool: string, image: string, monitors: string[]): DiskBackend {
  return { kind: 'rbd', pool, image, monitors, cephCluster: cephClusterFor(ctx.cephClusters, ctx.cloud, az, pool, monitors) };
}

function fromDomain(ctx: DiskContext, az: string | undefined, d: DomainDisk): DiskBackend {
  if (d.protocol === 'rbd' && d.source) {
    const [pool, ...rest] = d.source.split('/');
    return rbdBackend(ctx, az, pool!, rest.join('/'), []);
  }
  if (d.source && (d.type === 'file' || d.type === 'block')) return { kind: 'file', path: d.source, format: d.format };
  return { kind: 'unknown', reason: `libvirt reports a ${d.type} disk${d.protocol ? ` over ${d.protocol}` : ''}` };
}

/** The disks of a server, with their backends. */
export function describeDisks(server: Server, ctx: DiskContext): DiskRecord[] {
  const disks: DiskRecord[] = [];
  const az = server.availabilityZone;
  const domain = ctx.domainDisks?.filter((d) => d.device === 'disk');
  const rootDev = devName(server.rootDeviceName);

  for (const att of server.volumesAttached) {
    const vol = ctx.volumes.get(att.id);
    const onServer = vol?.attachments.find((a) => a.serverId === server.id);
    const device = onServer?.device;
    const conn = ctx.connections.get(att.id);
    const libvirt = domain?.find((d) => d.serial === att.id);
    let backend: DiskBackend;
    let evidence: DiskRecord['evidence'] = 'cinder';
    if (conn && 'pool' in conn) backend = rbdBackend(ctx, az, conn.pool, conn.image, conn.monitors);
    else if (libvirt) {
      backend = fromDomain(ctx, az, libvirt);
      evidence = 'libvirt';
    } else if (conn) backend = { kind: 'cinder', driver: conn.driver };
    else {
      backend = { kind: 'unknown', reason: vol ? `no Cinder attachment details for volume ${att.id} (needs volume API 3.27+ and admin)` : `volume ${att.id} is not visible to this user` };
      evidence = 'inferred';
    }
    disks.push({
      key: `volume-${att.id}`,
      role: 'volume',
      device,
      bootIndex: devName(device) !== undefined && devName(device) === rootDev ? 0 : undefined,
      sizeGb: vol?.sizeGb,
      volumeId: att.id,
      volumeType: vol?.volumeType,
      deleteOnTermination: att.deleteOnTermination,
      backup: true,
      backend,
      evidence,
    });
  }

  // A volume-booted server whose root device name Nova did not report: the bootable volume boots.
  if (!server.imageId && !disks.some((d) => d.bootIndex === 0)) {
    const boot = disks.find((d) => d.volumeId && ctx.volumes.get(d.volumeId)?.bootable) ?? disks[0];
    if (boot) boot.bootIndex = 0;
  }

  // Nova's local disks: root (image-booted), ephemeral, swap. Their place is only known to libvirt.
  const local = (key: string, role: DiskRecord['role'], pattern: RegExp, sizeGb: number | undefined, bootIndex: number | undefined, backup: boolean) => {
    const d = domain?.find((x) => x.source !== undefined && pattern.test(x.source));
    disks.push({
      key,
      role,
      device: d?.target ?? (role === 'root' ? rootDev : undefined),
      bootIndex,
      sizeGb,
      volumeId: undefined,
      volumeType: undefined,
      deleteOnTermination: true,
      backup,
      backend: d
        ? fromDomain(ctx, az, d)
        : { kind: 'unknown', reason: ctx.domainDisks ? `libvirt domain has no ${key} disk` : 'Nova local storage is not visible through the API; vprotect asks libvirt on the hypervisor (needs SSH)' },
      evidence: d ? 'libvirt' : 'inferred',
    });
  };
  const id = server.id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  if (server.imageId) local('root', 'root', new RegExp(`${id}(/disk|_disk)$`), server.flavor.diskGb, 0, true);
  if (server.flavor.ephemeralGb) local('ephemeral0', 'ephemeral', new RegExp(`${id}(/disk\\.(local|eph0)|_disk\\.(local|eph0))$`), server.flavor.ephemeralGb, undefined, true);
  if (server.flavor.swapMb) local('swap', 'swap', new RegExp(`${id}(/disk\\.swap|_disk\\.swap)$`), undefined, undefined, false);
  return disks;
}
