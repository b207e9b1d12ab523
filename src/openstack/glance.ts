/**
 * Glance v2 images: typed records (custom properties separated from the standard fields),
 * create, upload and download as streams, delete.
 */
import type { Readable } from 'node:stream';
import type { Session } from './auth.js';
import type { DownloadResponse } from './http.js';
import type { RawDocument, Reader } from './json.js';
import { ServiceClient } from './service.js';

export interface Image {
  id: string;
  name: string | undefined;
  status: string;
  diskFormat: string | undefined;
  containerFormat: string | undefined;
  size: number | undefined;
  virtualSize: number | undefined;
  /** md5, Glance's legacy checksum. */
  checksum: string | undefined;
  /** Multihash (Rocky+): algorithm (sha512 by default) and hex value. */
  hashAlgo: string | undefined;
  hashValue: string | undefined;
  minDiskGb: number;
  minRamMb: number;
  visibility: string | undefined;
  owner: string | undefined;
  protected: boolean;
  tags: string[];
  /** Custom properties (hw_disk_bus, os_distro, ...): Glance flattens them into the top level. */
  properties: Record<string, string>;
  raw: RawDocument;
}

/** Fields of the image schema itself; everything else at the top level is a property. */
const STANDARD = new Set([
  'id', 'name', 'status', 'disk_format', 'container_format', 'size', 'virtual_size', 'checksum', 'os_hash_algo',
  'os_hash_value', 'min_disk', 'min_ram', 'visibility', 'owner', 'protected', 'tags', 'created_at', 'updated_at',
  'file', 'self', 'schema', 'direct_url', 'locations', 'os_hidden', 'stores',
]);

export function parseImage(r: Reader): Image {
  const properties: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.object())) {
    if (!STANDARD.has(k) && v !== null) properties[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  return {
    id: r.str('id'),
    name: r.optStr('name'),
    status: r.str('status'),
    diskFormat: r.optStr('disk_format'),
    containerFormat: r.optStr('container_format'),
    size: r.optNum('size'),
    virtualSize: r.optNum('virtual_size'),
    checksum: r.optStr('checksum'),
    hashAlgo: r.optStr('os_hash_algo'),
    hashValue: r.optStr('os_hash_value'),
    minDiskGb: r.optNum('min_disk') ?? 0,
    minRamMb: r.optNum('min_ram') ?? 0,
    visibility: r.optStr('visibility'),
    owner: r.optStr('owner'),
    protected: r.bool('protected', false),
    tags: r.strList('tags'),
    properties,
    raw: r.raw(),
  };
}

export interface ImageSpec {
  name: string;
  diskFormat: string;
  containerFormat?: string | undefined;
  visibility?: 'private' | 'shared' | 'community' | 'public' | undefined;
  minDiskGb?: number | undefined;
  minRamMb?: number | undefined;
  tags?: string[] | undefined;
  properties?: Record<string, string> | undefined;
}

export class GlanceClient {
  readonly api: ServiceClient;

  constructor(session: Session) {
    this.api = new ServiceClient(session, 'image');
  }

  getImage(id: string): Promise<Image> {
    return this.api.get(`/images/${encodeURIComponent(id)}`, parseImage);
  }

  listImages(filter: { name?: string; owner?: string; status?: string } = {}): Promise<Image[]> {
    return this.api.all('/images', { itemsKey: 'images', parse: parseImage, pageSize: 100, query: filter });
  }

  createImage(spec: ImageSpec): Promise<Image> {
    const body: Record<string, unknown> = {
      ...spec.properties,
      name: spec.name,
      disk_format: spec.diskFormat,
      container_format: spec.containerFormat ?? 'bare',
    };
    if (spec.visibility) body['visibility'] = spec.visibility;
    if (spec.minDiskGb) body['min_disk'] = spec.minDiskGb;
    if (spec.minRamMb) body['min_ram'] = spec.minRamMb;
    if (spec.tags?.length) body['tags'] = spec.tags;
    return this.api.json('POST', '/images', { json: body }, parseImage);
  }

  /** Uploads the image data; a stream is sent once (never retried: it cannot be rewound). */
  async upload(id: string, data: Readable | Buffer, opts: { size?: number; timeoutMs?: number } = {}): Promise<void> {
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
    if (opts.size !== undefined) headers['content-length'] = String(opts.size);
    await this.api.send('PUT', `/images/${encodeURIComponent(id)}/file`, { body: data, headers, timeoutMs: opts.timeoutMs ?? 3_600_000, idempotent: Buffer.isBuffer(data) });
  }

  /** The image data as a stream; see restore.ts downloadImage for the verified copy. */
  download(id: string, opts: { idleTimeoutMs?: number } = {}): Promise<DownloadResponse> {
    return this.api.download(`/images/${encodeURIComponent(id)}/file`, { timeoutMs: opts.idleTimeoutMs ?? 300_000 });
  }

  async deleteImage(id: string): Promise<void> {
    await this.api.send('DELETE', `/images/${encodeURIComponent(id)}`);
  }
}
