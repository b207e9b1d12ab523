/**
 * Which disk of a point holds the data of each disk a cloud restore makes. The plan names
 * disks the cloud's way ("root", "volume-<id>"); a point keys them the strategy's way: ceph-rbd
 * points use the same names, libvirt-ssh points use the libvirt target ("sda", "vdb"). The
 * domain XML kept in the point ties a target to its Cinder volume (<serial> is the volume id);
 * the cloud's disk records (disks.json) give the device of the others.
 */
import { UsageError } from '../errors.js';
import type { VmMetadata } from '../openstack/plan.js';
import type { PointManifest } from '../repository/manifest.js';

export interface DiskSource {
  /** The plan's name: "root", "volume-<id>". */
  planDisk: string;
  /** The point's disk key. */
  key: string;
  size: number;
}

export interface DiskMapping {
  sources: Map<string, DiskSource>;
  /** Disks of the point that this restore does not write, with the reason (for the report). */
  notRestored: { key: string; why: string }[];
}

/** libvirt target by volume id, from the <serial> of each <disk> of a domain XML. */
export function targetsBySerial(domainXml: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!domainXml) return out;
  for (const disk of domainXml.match(/<disk\b[\s\S]*?<\/disk>/g) ?? []) {
    const serial = /<serial>\s*([^<\s]+)\s*<\/serial>/.exec(disk)?.[1];
    const target = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(disk)?.[1];
    if (serial && target) out.set(serial, target);
  }
  return out;
}

/**
 * The disks a cloud restore writes, named as the plan names them (planRestore): every captured
 * volume, and the root disk of an image-booted server (uploaded to Glance).
 */
export function planDisks(meta: Pick<VmMetadata, 'server' | 'volumes'>): string[] {
  return [...meta.volumes.map((v) => `volume-${v.id}`), ...(meta.server.imageId ? ['root'] : [])];
}

/** Plan disk → point disk, for every plan disk; a plan disk without data in the point is an error. */
export function mapDisks(wanted: readonly string[], meta: VmMetadata, manifest: Pick<PointManifest, 'pointId' | 'disks'>, domainXml: string | undefined): DiskMapping {
  const byKey = new Map(manifest.disks.map((d) => [d.key, d]));
  const serials = targetsBySerial(domainXml);
  const dev = (d: string | undefined) => d?.replace(/^\/dev\//, '');
  const sources = new Map<string, DiskSource>();
  const missing: string[] = [];
  for (const planDisk of wanted) {
    const record = meta.disks?.find((d) => d.key === planDisk);
    const candidates = [planDisk, record?.volumeId ? serials.get(record.volumeId) : undefined, dev(record?.device)];
    const key = candidates.find((k): k is string => k !== undefined && byKey.has(k));
    if (key === undefined) {
      missing.push(planDisk);
      continue;
    }
    if ([...sources.values()].some((s) => s.key === key)) throw new UsageError(`point ${manifest.pointId}: disk ${key} would be written to two disks of the restore (${planDisk} and another); its metadata does not say which`);
    sources.set(planDisk, { planDisk, key, size: byKey.get(key)!.size });
  }
  if (missing.length) {
    throw new UsageError(`point ${manifest.pointId} holds no data for ${missing.join(', ')} (its disks: ${[...byKey.keys()].join(', ') || 'none'}); the restored server would get ${missing.length === 1 ? 'an empty disk' : 'empty disks'}`, {
      hint: 'restore a point that includes every disk (check the policy\'s excludeDisks), or restore the disks it has one by one with --to-file / --to-rbd',
    });
  }
  const used = new Set([...sources.values()].map((s) => s.key));
  const notRestored = manifest.disks
    .filter((d) => !used.has(d.key))
    .map((d) => {
      const record = meta.disks?.find((r) => r.key === d.key || dev(r.device) === d.key);
      const why =
        record?.role === 'ephemeral'
          ? 'an ephemeral disk: Nova creates it empty from the flavor'
          : record?.role === 'swap'
            ? 'swap: Nova creates it empty'
            : 'the instance\'s metadata does not place it (not a volume or the root disk of the restored server)';
      return { key: d.key, why };
    });
  return { sources, notRestored };
}
