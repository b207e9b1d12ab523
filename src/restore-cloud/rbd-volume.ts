/**
 * Writing a point's disk into a new Cinder volume whose backend is Ceph RBD: the volume's data
 * is the image `volume-<id>` (Cinder's default volume_name_template) in a pool of one of the
 * inventory's cephClusters; vprotect finds which by asking rbd, then writes the chain into it
 * with the ceph-rbd strategy's restore. One cluster handle serves both steps, and the write is
 * the data alone: the image is new and blank (zero records would only cost time), and it keeps
 * the volume's size. A volume that no cluster holds is on another backend (LVM, NFS, iSCSI
 * arrays): those can only be written by attaching them to a machine, which is the
 * cinder-attach strategy's job.
 */
import { errorMessage, UsageError } from '../errors.js';
import type { CephClusterConfig, Inventory } from '../inventory/types.js';
import type { EventSink, Logger } from '../log.js';
import type { Volume } from '../openstack/cinder.js';
import type { DiskRecord } from '../openstack/vm.js';
import type { PointInfo, Repository } from '../repository/repository.js';

type CephRbd = typeof import('../../strategies/ceph-rbd/index.js');
type Rbd = import('../../strategies/ceph-rbd/index.js').Rbd;
type RbdImageInfo = import('../../strategies/ceph-rbd/rbd-json.js').RbdImageInfo;

/**
 * Where a volume's image is, with the open handle of its cluster (the one locateVolumeImage
 * found it with) and its `rbd info`. writeVolumeImage closes the handle; a caller that does not
 * write calls close().
 */
export interface RbdLocation {
  clusterName: string;
  cluster: CephClusterConfig;
  pool: string;
  image: string;
  rbd: Rbd;
  info: RbdImageInfo;
  close(): Promise<void>;
}

/** Loaded on first use: a restore without volumes does not need the ceph-rbd strategy. */
const cephRbd = (): Promise<CephRbd> => import('../../strategies/ceph-rbd/index.js');

/** The clusters that may hold the cloud's volumes: those the inventory says it uses, else all. */
function candidateClusters(inventory: Pick<Inventory, 'cephClusters'>, cloud: string): [string, CephClusterConfig][] {
  const all = Object.entries(inventory.cephClusters ?? {});
  const used = all.filter(([, c]) => c.usedBy?.some((u) => u.cloud === cloud));
  return used.length ? used : all;
}

/**
 * Where the RBD image of a new Cinder volume is, or undefined when no cluster of the inventory
 * has it. The original disk's pool is tried first (a restore into the same cloud lands there).
 */
export async function locateVolumeImage(
  inventory: Pick<Inventory, 'cephClusters'>,
  cloud: string,
  volumeId: string,
  original: DiskRecord | undefined,
  opts: { signal?: AbortSignal | undefined; log?: Logger | undefined } = {},
): Promise<{ location: RbdLocation | undefined; searched: string[] }> {
  const { signal, log } = opts;
  const { Rbd, localExec } = await cephRbd();
  const image = `volume-${volumeId}`;
  const searched: string[] = [];
  const originalPool = original?.backend.kind === 'rbd' ? original.backend.pool : undefined;
  for (const [clusterName, cluster] of candidateClusters(inventory, cloud)) {
    const pools = [...new Set([originalPool, ...(cluster.pools ?? []), 'volumes'].filter((p): p is string => p !== undefined))];
    // The handle also writes the volume (writeVolumeImage): its commands go to the debug log.
    const rbd = await Rbd.open(localExec(), clusterName, cluster, log ? { log } : {});
    let found: RbdLocation | undefined;
    try {
      for (const pool of pools) {
        searched.push(`${clusterName}:${pool}`);
        try {
          const info = await rbd.infoIfExists(pool, image, signal);
          if (info) {
            found = { clusterName, cluster, pool, image, rbd, info, close: () => rbd.dispose() };
            return { location: found, searched };
          }
        } catch (err) {
          // A pool this user cannot read (or that does not exist) is not where the volume is.
          searched[searched.length - 1] += ` (${errorMessage(err).split('\n')[0]})`;
        }
      }
    } finally {
      // The handle goes with the location it found; any other is closed here.
      if (!found) await rbd.dispose();
    }
  }
  return { location: undefined, searched };
}

/** The error for a volume that is not an RBD image the inventory can reach. */
export function notOnRbd(volume: Volume, cloud: string, searched: string[]): UsageError {
  const backend = volume.backendHost ? ` (Cinder backend ${volume.backendHost})` : '';
  return new UsageError(
    `the new volume ${volume.id} of type ${volume.volumeType ?? 'default'}${backend} is not an RBD image in any Ceph cluster of the inventory (looked for volume-${volume.id} in ${searched.join(', ') || 'no cluster: the inventory has no cephClusters'}); vprotect can only write volumes of RBD backends today`,
    {
      hint: `map the volumes to a volume type on Ceph RBD with --volume-type, or add that Ceph cluster to the inventory's cephClusters (usedBy: [{cloud: ${cloud}}], with its pools); other backends need the cinder-attach strategy (write through a proxy VM), which is not built yet`,
      data: { volumeId: volume.id, volumeType: volume.volumeType, backendHost: volume.backendHost, searched },
    },
  );
}

/**
 * Writes disk `key` of `point` into the new, blank image at `location` with the location's
 * cluster handle, then closes it. The image keeps the volume's size (Cinder sizes volumes in
 * whole GiB; a smaller disk leaves a tail of zeros).
 */
export async function writeVolumeImage(req: {
  repo: Repository;
  point: PointInfo;
  key: string;
  location: RbdLocation;
  volumeBytes: number;
  signal?: AbortSignal | undefined;
  events?: EventSink | undefined;
}): Promise<{ dataBytes: number; size: number }> {
  const { location: loc } = req;
  try {
    const { restoreToRbd } = await cephRbd();
    const diskBytes = req.point.manifest.disks.find((d) => d.key === req.key)?.size;
    if (diskBytes !== undefined && diskBytes > req.volumeBytes) {
      throw new UsageError(`disk ${req.key} of point ${req.point.pointId} (${diskBytes} bytes) does not fit the new volume of ${req.volumeBytes} bytes`, { hint: 'restore into a larger volume' });
    }
    const r = await restoreToRbd({
      rbd: loc.rbd,
      repo: req.repo,
      point: req.point,
      disk: req.key,
      pool: loc.pool,
      image: loc.image,
      // Cinder has just created the volume blank: only the disk's data needs writing.
      overwrite: true,
      emptyImage: true,
      info: loc.info,
      ...(req.signal ? { signal: req.signal } : {}),
      ...(req.events ? { events: req.events } : {}),
    });
    return { dataBytes: r.dataBytes, size: r.size };
  } finally {
    await loc.close();
  }
}
