/**
 * Cinder v3 with an explicit microversion (the server's maximum up to 3.70, Zed's). Volumes,
 * volume types, snapshots, attachments (3.27+, with the RBD connection details that tell which
 * Ceph image backs a volume) and upload-to-image.
 */
import type { Session } from './auth.js';
import type { RawDocument, Reader } from './json.js';
import { atLeast, chooseMicroversion, discoverMicroversions, ServiceClient } from './service.js';

export const CINDER_WANTED_MICROVERSION = '3.70';

export interface VolumeAttachmentRef {
  attachmentId: string | undefined;
  serverId: string | undefined;
  device: string | undefined;
  hostName: string | undefined;
}

export interface Volume {
  id: string;
  name: string | undefined;
  status: string;
  sizeGb: number;
  volumeType: string | undefined;
  volumeTypeId: string | undefined;
  availabilityZone: string | undefined;
  bootable: boolean;
  multiattach: boolean;
  encrypted: boolean;
  projectId: string | undefined;
  /** os-vol-host-attr:host, e.g. "lab@ceph#ceph" (host@backend#pool), admin only. */
  backendHost: string | undefined;
  attachments: VolumeAttachmentRef[];
  snapshotId: string | undefined;
  sourceVolumeId: string | undefined;
  /** Glance properties copied onto a volume created from an image. */
  imageMetadata: Record<string, string>;
  metadata: Record<string, string>;
  description: string | undefined;
  raw: RawDocument;
}

export interface VolumeType {
  id: string;
  name: string;
  extraSpecs: Record<string, string>;
  isPublic: boolean;
  raw: RawDocument;
}

export interface Snapshot {
  id: string;
  name: string | undefined;
  status: string;
  sizeGb: number;
  volumeId: string;
  raw: RawDocument;
}

/** What a volume's connection says about where its data is. */
export type VolumeConnection =
  | { driver: 'rbd'; pool: string; image: string; monitors: string[]; clusterName: string | undefined; authUser: string | undefined }
  | { driver: string };

export interface Attachment {
  id: string;
  status: string;
  volumeId: string;
  serverId: string | undefined;
  connection: VolumeConnection | undefined;
}

export interface VolumeSpec {
  sizeGb: number;
  name?: string | undefined;
  description?: string | undefined;
  volumeType?: string | undefined;
  availabilityZone?: string | undefined;
  snapshotId?: string | undefined;
  sourceVolumeId?: string | undefined;
  imageId?: string | undefined;
  metadata?: Record<string, string> | undefined;
  multiattach?: boolean | undefined;
}

export function parseVolume(r: Reader): Volume {
  return {
    id: r.str('id'),
    name: r.optStr('name'),
    status: r.str('status'),
    sizeGb: r.num('size'),
    volumeType: r.optStr('volume_type'),
    volumeTypeId: r.optStr('volume_type_id'),
    availabilityZone: r.optStr('availability_zone'),
    bootable: r.bool('bootable', false),
    multiattach: r.bool('multiattach', false),
    encrypted: r.bool('encrypted', false),
    projectId: r.optStr('os-vol-tenant-attr:tenant_id'),
    backendHost: r.optStr('os-vol-host-attr:host'),
    attachments: r.optList('attachments').map((a) => ({
      attachmentId: a.optStr('attachment_id'),
      serverId: a.optStr('server_id'),
      device: a.optStr('device'),
      hostName: a.optStr('host_name'),
    })),
    snapshotId: r.optStr('snapshot_id'),
    sourceVolumeId: r.optStr('source_volid'),
    imageMetadata: r.strMap('volume_image_metadata'),
    metadata: r.strMap('metadata'),
    description: r.optStr('description'),
    raw: r.raw(),
  };
}

export function parseVolumeType(r: Reader): VolumeType {
  return {
    id: r.str('id'),
    name: r.str('name'),
    extraSpecs: r.strMap('extra_specs'),
    isPublic: r.bool('os-volume-type-access:is_public', r.bool('is_public', true)),
    raw: r.raw(),
  };
}

export function parseSnapshot(r: Reader): Snapshot {
  return { id: r.str('id'), name: r.optStr('name'), status: r.str('status'), sizeGb: r.num('size'), volumeId: r.str('volume_id'), raw: r.raw() };
}

/**
 * The connection details of an attachment, reduced to where the data lives. The full
 * connection_info can carry secrets (iSCSI CHAP passwords), so it is never kept as is.
 */
export function parseConnection(r: Reader): VolumeConnection | undefined {
  const driver = r.optStr('driver_volume_type');
  if (!driver) return undefined;
  if (driver !== 'rbd') return { driver };
  const data = r.has('data') ? r.get('data') : r; // Nova's BDM form nests under data
  const name = data.str('name');
  const slash = name.indexOf('/');
  const hosts = data.strList('hosts');
  const ports = data.strList('ports');
  return {
    driver: 'rbd',
    pool: slash > 0 ? name.slice(0, slash) : '',
    image: slash > 0 ? name.slice(slash + 1) : name,
    monitors: hosts.map((h, i) => (ports[i] ? `${h}:${ports[i]}` : h)),
    clusterName: data.optStr('cluster_name'),
    authUser: data.optStr('auth_username'),
  };
}

export function parseAttachment(r: Reader): Attachment {
  return {
    id: r.str('id'),
    status: r.str('status'),
    volumeId: r.str('volume_id'),
    serverId: r.optStr('instance'),
    connection: r.has('connection_info') ? parseConnection(r.get('connection_info')) : undefined,
  };
}

export class CinderClient {
  readonly api: ServiceClient;

  private constructor(api: ServiceClient) {
    this.api = api;
  }

  static async connect(session: Session, wanted = CINDER_WANTED_MICROVERSION): Promise<CinderClient> {
    const api = new ServiceClient(session, 'volume', { microversionName: 'volume' });
    const root = `${api.baseUrl.replace(/\/v3(\/[^/]+)?$/, '')}/v3/`;
    const range = await discoverMicroversions(api, root).catch(() => undefined);
    api.microversion = chooseMicroversion(wanted, range?.max, range?.min);
    return new CinderClient(api);
  }

  get microversion(): string {
    return this.api.microversion ?? '3.0';
  }

  listVolumes(filter: { allProjects?: boolean; projectId?: string; name?: string } = {}): Promise<Volume[]> {
    return this.api.all('/volumes/detail', {
      itemsKey: 'volumes',
      parse: parseVolume,
      pageSize: 500,
      query: { all_tenants: filter.allProjects || filter.projectId ? 1 : undefined, project_id: filter.projectId, name: filter.name },
    });
  }

  getVolume(id: string): Promise<Volume> {
    return this.api.get(`/volumes/${encodeURIComponent(id)}`, (d) => parseVolume(d.get('volume')));
  }

  createVolume(spec: VolumeSpec): Promise<Volume> {
    const volume: Record<string, unknown> = { size: spec.sizeGb };
    const set = (k: string, v: unknown) => v !== undefined && (volume[k] = v);
    set('name', spec.name);
    set('description', spec.description);
    set('volume_type', spec.volumeType);
    set('availability_zone', spec.availabilityZone);
    set('snapshot_id', spec.snapshotId);
    set('source_volid', spec.sourceVolumeId);
    set('imageRef', spec.imageId);
    set('metadata', spec.metadata);
    set('multiattach', spec.multiattach);
    return this.api.json('POST', '/volumes', { json: { volume } }, (d) => parseVolume(d.get('volume')));
  }

  async deleteVolume(id: string): Promise<void> {
    await this.api.send('DELETE', `/volumes/${encodeURIComponent(id)}`);
  }

  listVolumeTypes(): Promise<VolumeType[]> {
    return this.api.all('/types', { itemsKey: 'volume_types', parse: parseVolumeType, query: { is_public: 'None' } });
  }

  getVolumeType(id: string): Promise<VolumeType> {
    return this.api.get(`/types/${encodeURIComponent(id)}`, (d) => parseVolumeType(d.get('volume_type')));
  }

  /** A snapshot; of an in-use volume too (`force` before 3.66, implicit from 3.66 on). */
  createSnapshot(volumeId: string, opts: { name?: string; description?: string; metadata?: Record<string, string>; inUse?: boolean } = {}): Promise<Snapshot> {
    const snapshot: Record<string, unknown> = { volume_id: volumeId, name: opts.name, description: opts.description, metadata: opts.metadata };
    if (opts.inUse && !atLeast(this.api.microversion, '3.66')) snapshot['force'] = true;
    return this.api.json('POST', '/snapshots', { json: { snapshot } }, (d) => parseSnapshot(d.get('snapshot')));
  }

  getSnapshot(id: string): Promise<Snapshot> {
    return this.api.get(`/snapshots/${encodeURIComponent(id)}`, (d) => parseSnapshot(d.get('snapshot')));
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.api.send('DELETE', `/snapshots/${encodeURIComponent(id)}`);
  }

  /** All attachments with their connection details (3.27+); admin sees every project's. */
  listAttachments(allProjects = false): Promise<Attachment[]> {
    return this.api.all('/attachments/detail', { itemsKey: 'attachments', parse: parseAttachment, query: { all_tenants: allProjects ? 1 : undefined } });
  }

  getAttachment(id: string): Promise<Attachment> {
    return this.api.get(`/attachments/${encodeURIComponent(id)}`, (d) => parseAttachment(d.get('attachment')));
  }

  /** os-volume_upload_image: copies a volume into a new Glance image; returns its id. */
  uploadToImage(volumeId: string, opts: { imageName: string; diskFormat?: string; containerFormat?: string; force?: boolean }): Promise<string> {
    const action = { 'os-volume_upload_image': { image_name: opts.imageName, disk_format: opts.diskFormat ?? 'raw', container_format: opts.containerFormat ?? 'bare', force: opts.force ?? false } };
    return this.api.json('POST', `/volumes/${encodeURIComponent(volumeId)}/action`, { json: action }, (d) => d.get('os-volume_upload_image').str('image_id'));
  }
}
