/**
 * Metadata captured at backup time, for the point's `metadata/` directory: every document as
 * the API returned it (envelope included, so stock tools and `openstack` users recognise it),
 * with secrets stripped, plus vprotect's own summary of the disk layout and boot order.
 *
 *   server.json            {server}: embedded flavor, tags, metadata, user_data (base64, as returned)
 *   flavor.json            {flavor} with extra_specs (added when the microversion does not embed them)
 *   image.json             the Glance image with its properties (image-booted, or the boot volume's source)
 *   volumes.json           {volumes}; volume_types.json {volume_types}
 *   volume_attachments.json {volumeAttachments} (Nova's view: devices, delete_on_termination)
 *   ports.json             {ports} with fixed IPs; security_groups.json {security_groups} with rules
 *   server_groups.json     {server_groups}
 *   keypair.json           {keypair} public key, also of other users (admin, user_id)
 *   disks.json             vprotect: disks with keys, devices, boot order and backends
 *   capture.json           vprotect: when, from where, microversions, what could not be captured
 *
 * user_data may hold secrets: it is kept (a restore needs it) but never logged.
 */
import { mkdir, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../errors.js';
import type { Cloud } from './cloud.js';
import type { Volume, VolumeType } from './cinder.js';
import { httpStatusOf } from './errors.js';
import type { Json, RawDocument } from './json.js';
import type { Keypair, Server } from './nova.js';
import type { DiskRecord } from './vm.js';

/** Keys whose values are secrets wherever they appear (Nova adminPass, keypair private_key, CHAP passwords). */
const SECRET_KEY = /^(adminPass|admin_pass|private_key|password|auth_password|discovery_auth_password|secret|token|X-Subject-Token)$/i;

export function stripSecrets<T>(doc: T): T {
  if (Array.isArray(doc)) return doc.map(stripSecrets) as T;
  if (typeof doc !== 'object' || doc === null) return doc;
  return Object.fromEntries(Object.entries(doc).filter(([k]) => !SECRET_KEY.test(k)).map(([k, v]) => [k, stripSecrets(v)])) as T;
}

export interface CaptureIssue {
  what: string;
  message: string;
}

export interface CapturedMetadata {
  server: Server;
  /** File name (without directory) → JSON document. */
  files: Record<string, Json>;
  /** What could not be captured, and why (deleted image, keypair of a user we cannot see, ...). */
  issues: CaptureIssue[];
}

export interface CaptureOptions {
  /** The disk layout from sync (describeDisks); written to disks.json. */
  disks?: readonly DiskRecord[] | undefined;
  now?: Date | undefined;
}

const list = (items: { raw: RawDocument }[]): Json[] => items.map((i) => i.raw as Json);

export async function captureMetadata(cloud: Cloud, serverId: string, opts: CaptureOptions = {}): Promise<CapturedMetadata> {
  const nova = await cloud.nova();
  const issues: CaptureIssue[] = [];
  const files: Record<string, Json> = {};
  const attempt = async <T>(what: string, fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (err) {
      const status = httpStatusOf(err);
      issues.push({ what, message: status === 404 ? `${what} no longer exists` : status === 403 ? `not allowed to read ${what} (needs admin)` : errorMessage(err) });
      return undefined;
    }
  };

  const server = await nova.getServer(serverId);
  files['server.json'] = { server: server.raw as Json };
  const tags = server.raw['tags'] === undefined ? await attempt('tags', () => nova.listTags(serverId)) : undefined;
  if (tags) files['tags.json'] = { tags };

  // Flavor: the embedded copy (2.47+) is what the server runs with; the flavor itself may be gone.
  const flavor = await attempt(`flavor ${server.flavor.id ?? server.flavor.name}`, async () => {
    const f = server.flavor.id ? await nova.getFlavor(server.flavor.id) : (await nova.listFlavors()).find((x) => x.name === server.flavor.name);
    if (!f) throw new Error(`flavor ${server.flavor.name} no longer exists (the server's embedded copy is in server.json)`);
    return { ...f.raw, extra_specs: await nova.flavorExtraSpecs(f) };
  });
  if (flavor) files['flavor.json'] = { flavor: flavor as Json };

  const attachments = await attempt('volume attachments', () => nova.listVolumeAttachments(serverId));
  if (attachments) files['volume_attachments.json'] = { volumeAttachments: list(attachments) };

  const volumes: Volume[] = [];
  if (server.volumesAttached.length) {
    const cinder = await cloud.cinder();
    for (const v of server.volumesAttached) {
      const vol = await attempt(`volume ${v.id}`, () => cinder.getVolume(v.id));
      if (vol) volumes.push(vol);
    }
    files['volumes.json'] = { volumes: list(volumes) };
    const typeNames = new Set(volumes.map((v) => v.volumeType).filter((t): t is string => t !== undefined));
    if (typeNames.size) {
      const types = (await attempt('volume types', () => cinder.listVolumeTypes())) ?? [];
      const used: VolumeType[] = types.filter((t) => typeNames.has(t.name) || typeNames.has(t.id));
      files['volume_types.json'] = { volume_types: list(used) };
    }
  }

  // Image: of an image-booted server, or the source image of its boot volume.
  const bootVolume = volumes.find((v) => v.bootable && v.imageMetadata['image_id']);
  const imageId = server.imageId ?? bootVolume?.imageMetadata['image_id'];
  if (imageId) {
    const image = await attempt(`image ${imageId}`, () => cloud.glance.getImage(imageId));
    if (image) files['image.json'] = image.raw as Json;
  }

  const ports = await attempt('ports', () => cloud.neutron.listPorts({ deviceId: serverId }));
  if (ports) {
    files['ports.json'] = { ports: list(ports) };
    const groupIds = [...new Set(ports.flatMap((p) => p.securityGroupIds))];
    const groups = [];
    for (const id of groupIds) {
      const g = await attempt(`security group ${id}`, () => cloud.neutron.getSecurityGroup(id));
      if (g) groups.push(g);
    }
    files['security_groups.json'] = { security_groups: list(groups) };
  }

  if (server.serverGroups.length) {
    const groups = [];
    for (const id of server.serverGroups) {
      const g = await attempt(`server group ${id}`, () => nova.getServerGroup(id));
      if (g) groups.push(g);
    }
    files['server_groups.json'] = { server_groups: list(groups) };
  }

  if (server.keyName) {
    const kp = await attempt(`keypair ${server.keyName} of user ${server.userId}`, () => keypairOf(cloud, server));
    if (kp) files['keypair.json'] = { keypair: { ...(kp.raw as Record<string, Json>), user_id: kp.userId ?? server.userId } };
  }

  if (opts.disks) files['disks.json'] = { disks: opts.disks as unknown as Json };
  files['capture.json'] = {
    capturedAt: (opts.now ?? new Date()).toISOString(),
    cloud: cloud.name,
    authUrl: cloud.session.settings.authUrl,
    region: cloud.session.settings.region ?? null,
    user: cloud.session.token.user.name,
    microversions: { compute: nova.microversion },
    issues: issues as unknown as Json,
  };
  const stripped = stripSecrets(files);
  return { server, files: stripped, issues };
}

/**
 * The server's keypair. Nova scopes keypairs to their owner: another user's keypair is only
 * visible to an admin asking with `user_id` (2.10+), which is how vprotect gets the public key
 * of instances that other users launched.
 */
async function keypairOf(cloud: Cloud, server: Server): Promise<Keypair> {
  const nova = await cloud.nova();
  const mine = cloud.session.token.user.id === server.userId;
  // Never fall back to a keypair of the same name owned by us: it is not the server's.
  return nova.getKeypair(server.keyName!, mine ? undefined : server.userId);
}

/** Writes the files into `dir` (each to a temporary name, fsynced, then renamed). */
export async function writeMetadata(dir: string, captured: CapturedMetadata): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const written: string[] = [];
  for (const [name, doc] of Object.entries(captured.files)) {
    const path = join(dir, name);
    const tmp = `${path}.partial`;
    // 0600: server.json carries user_data, which may hold secrets.
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(doc, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    written.push(path);
  }
  return written;
}
