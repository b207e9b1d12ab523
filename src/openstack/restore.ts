/**
 * Restore primitives for the strategies (DESIGN.md §5): each does one cloud operation and
 * waits until it is done, so a caller never sees a half-made resource as finished. Image data
 * is streamed and hashed on the way, and compared with what Glance computed.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DataCorruptError } from '../errors.js';
import type { Snapshot, Volume, VolumeSpec } from './cinder.js';
import type { Cloud } from './cloud.js';
import { isNotFound } from './errors.js';
import type { Image, ImageSpec } from './glance.js';
import type { Keypair, Server, ServerSpec, VolumeAttachment } from './nova.js';
import type { WaitOptions } from './wait.js';

export interface Digests {
  bytes: number;
  md5: string;
  sha256: string;
  sha512: string;
}

/** A pass-through stream that hashes what flows (md5 for Glance's checksum, sha512 for its multihash, sha256 for ours). */
function hashing(): { stream: Transform; digests: () => Digests } {
  const h: Record<'md5' | 'sha256' | 'sha512', Hash> = { md5: createHash('md5'), sha256: createHash('sha256'), sha512: createHash('sha512') };
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      for (const x of Object.values(h)) x.update(chunk);
      cb(null, chunk);
    },
  });
  return { stream, digests: () => ({ bytes, md5: h.md5.digest('hex'), sha256: h.sha256.digest('hex'), sha512: h.sha512.digest('hex') }) };
}

/** Compares our digests with the image's checksum (md5) and multihash; throws DataCorruptError (65). */
export function verifyImageDigests(image: Image, d: Digests, direction: 'upload' | 'download'): void {
  const problems: string[] = [];
  if (image.size !== undefined && image.size !== d.bytes) problems.push(`size ${image.size} in Glance, ${d.bytes} bytes ${direction === 'upload' ? 'sent' : 'received'}`);
  if (image.hashValue && (image.hashAlgo ?? 'sha512') === 'sha512' && image.hashValue !== d.sha512) problems.push('sha512 differs');
  if (image.hashValue && image.hashAlgo === 'sha256' && image.hashValue !== d.sha256) problems.push('sha256 differs');
  if (image.checksum && image.checksum !== d.md5) problems.push('md5 checksum differs');
  if (problems.length) {
    throw new DataCorruptError(`image ${image.id} ${direction} does not match Glance's checksums: ${problems.join(', ')}`, {
      hint: direction === 'download' ? 'the image data changed or was damaged in transit; retry, and check the Glance store' : 'the upload was damaged in transit; the image was deleted, retry',
      data: { imageId: image.id, ...d },
    });
  }
}

/**
 * Told the id of a resource as soon as the cloud has made it, before the wait for its final
 * state: a caller that must undo a failed run (restore --to-cloud) then knows what to remove
 * even when the wait fails or is interrupted.
 */
export interface CreatedHook {
  onCreated?: ((id: string) => void) | undefined;
}

export async function createVolume(cloud: Cloud, spec: VolumeSpec, wait: WaitOptions = {}, hook: CreatedHook = {}): Promise<Volume> {
  const cinder = await cloud.cinder();
  const v = await cinder.createVolume(spec);
  hook.onCreated?.(v.id);
  return cloud.waitForVolume(v.id, 'available', wait);
}

/** Marks a volume bootable: Nova refuses to boot from a volume without the flag. */
export async function setVolumeBootable(cloud: Cloud, id: string, bootable = true): Promise<void> {
  const cinder = await cloud.cinder();
  await cinder.api.send('POST', `/volumes/${encodeURIComponent(id)}/action`, { json: { 'os-set_bootable': { bootable } } });
}

/**
 * Sets a volume's image metadata (what Cinder copies from Glance when a volume is made from an
 * image). Nova reads it for a volume-booted server's hardware: hw_disk_bus, hw_scsi_model, ...
 */
export async function setVolumeImageMetadata(cloud: Cloud, id: string, metadata: Record<string, string>): Promise<void> {
  if (!Object.keys(metadata).length) return;
  const cinder = await cloud.cinder();
  await cinder.api.send('POST', `/volumes/${encodeURIComponent(id)}/action`, { json: { 'os-set_image_metadata': { metadata } } });
}

export async function deleteVolume(cloud: Cloud, id: string, wait: WaitOptions = {}): Promise<void> {
  const cinder = await cloud.cinder();
  try {
    await cinder.deleteVolume(id);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  await cloud.waitForVolumeDeleted(id, wait);
}

export async function snapshotVolume(cloud: Cloud, volumeId: string, opts: { name?: string; inUse?: boolean; metadata?: Record<string, string> } = {}, wait: WaitOptions = {}): Promise<Snapshot> {
  const cinder = await cloud.cinder();
  const s = await cinder.createSnapshot(volumeId, opts);
  return cloud.waitForSnapshot(s.id, 'available', wait);
}

export async function deleteSnapshot(cloud: Cloud, id: string, wait: WaitOptions = {}): Promise<void> {
  const cinder = await cloud.cinder();
  try {
    await cinder.deleteSnapshot(id);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  await cloud.waitForSnapshotDeleted(id, wait);
}

/** Attaches a volume to a server (the proxy VM) through Nova and waits until Cinder says in-use. */
export async function attachVolume(cloud: Cloud, serverId: string, volumeId: string, opts: { tag?: string } = {}, wait: WaitOptions = {}): Promise<VolumeAttachment> {
  const nova = await cloud.nova();
  const att = await nova.attachVolume(serverId, volumeId, opts);
  await cloud.waitForVolume(volumeId, 'in-use', wait);
  return att;
}

export async function detachVolume(cloud: Cloud, serverId: string, volumeId: string, wait: WaitOptions = {}): Promise<void> {
  const nova = await cloud.nova();
  await nova.detachVolume(serverId, volumeId);
  await cloud.waitForVolume(volumeId, 'available', wait);
}

/**
 * Creates an image and streams `data` into it, hashing on the way; waits for "active" and
 * checks Glance's checksums against ours. A failed or mismatching upload deletes the image.
 */
export async function uploadImage(cloud: Cloud, spec: ImageSpec, data: Readable, opts: { size?: number } & CreatedHook = {}, wait: WaitOptions = {}): Promise<{ image: Image; digests: Digests }> {
  const created = await cloud.glance.createImage(spec);
  opts.onCreated?.(created.id);
  try {
    const h = hashing();
    data.on('error', (err) => h.stream.destroy(err));
    data.pipe(h.stream);
    await cloud.glance.upload(created.id, h.stream, opts.size !== undefined ? { size: opts.size } : {});
    const digests = h.digests();
    const image = await cloud.waitForImage(created.id, 'active', wait);
    verifyImageDigests(image, digests, 'upload');
    return { image, digests };
  } catch (err) {
    await cloud.glance.deleteImage(created.id).catch(() => undefined);
    throw err;
  }
}

/** Deletes an image; one that is already gone counts as deleted. */
export async function deleteImage(cloud: Cloud, id: string): Promise<void> {
  try {
    await cloud.glance.deleteImage(id);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Streams an image's data into `dest`, verifying size, md5 and sha512 against Glance's. */
export async function downloadImage(cloud: Cloud, imageId: string, dest: Writable): Promise<{ image: Image; digests: Digests }> {
  const image = await cloud.glance.getImage(imageId);
  const res = await cloud.glance.download(imageId);
  const h = hashing();
  try {
    await pipeline(res.stream, h.stream, dest);
  } catch (err) {
    throw cloud.session.transport.streamError({ service: 'image', method: 'GET', url: cloud.glance.api.url(`/images/${imageId}/file`) }, err);
  }
  const digests = h.digests();
  verifyImageDigests(image, digests, 'download');
  return { image, digests };
}

/** Copies a volume into a new Glance image (Cinder os-volume_upload_image) and waits for it. */
export async function volumeToImage(cloud: Cloud, volumeId: string, imageName: string, opts: { diskFormat?: string; force?: boolean } = {}, wait: WaitOptions = {}): Promise<Image> {
  const cinder = await cloud.cinder();
  const imageId = await cinder.uploadToImage(volumeId, { imageName, ...opts });
  const image = await cloud.waitForImage(imageId, 'active', wait);
  // The volume is "uploading" until Cinder has finished; wait so the caller can reuse it.
  await cloud.waitForVolume(volumeId, ['available', 'in-use'], wait);
  return image;
}

export interface KeypairResult {
  keypair: Keypair;
  /** true when it was missing and vprotect recreated it for its owner. */
  created: boolean;
}

/**
 * Makes sure the owner has the keypair the server was launched with: recreated from the
 * captured public key when missing (for another user: admin, user_id, 2.10+). A keypair of
 * that name with a different key is left alone and reported: overwriting it would lock its
 * owner out of their other servers.
 */
export async function ensureKeypair(cloud: Cloud, kp: { name: string; publicKey: string; userId?: string | undefined; type?: string | undefined }): Promise<KeypairResult> {
  const nova = await cloud.nova();
  const forOther = kp.userId !== undefined && kp.userId !== cloud.session.token.user.id ? kp.userId : undefined;
  try {
    const existing = await nova.getKeypair(kp.name, forOther);
    if (existing.publicKey.trim() !== kp.publicKey.trim()) {
      throw new DataCorruptError(`keypair ${kp.name}${forOther ? ` of user ${forOther}` : ''} exists with a different public key`, {
        hint: 'restore with another keypair name (or none); vprotect does not replace keys that may be in use',
      });
    }
    return { keypair: existing, created: false };
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const created = await nova.createKeypair({ name: kp.name, publicKey: kp.publicKey, ...(kp.type ? { type: kp.type } : {}), ...(forOther ? { userId: forOther } : {}) });
  return { keypair: created, created: true };
}

/** Deletes a keypair (another user's with `userId`, admin); one that is already gone counts as deleted. */
export async function deleteKeypair(cloud: Cloud, name: string, userId?: string): Promise<void> {
  const nova = await cloud.nova();
  const forOther = userId !== undefined && userId !== cloud.session.token.user.id ? userId : undefined;
  try {
    await nova.deleteKeypair(name, forOther);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Creates a server and waits for ACTIVE (ERROR ends the wait with Nova's fault message). */
export async function createServer(cloud: Cloud, spec: ServerSpec, wait: WaitOptions = {}, hook: CreatedHook = {}): Promise<Server> {
  const nova = await cloud.nova();
  const id = await nova.createServer(spec);
  hook.onCreated?.(id);
  return cloud.waitForServer(id, 'ACTIVE', { timeoutMs: 600_000, ...wait });
}

export async function deleteServer(cloud: Cloud, id: string, wait: WaitOptions = {}): Promise<void> {
  const nova = await cloud.nova();
  try {
    await nova.deleteServer(id);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  await cloud.waitForServerDeleted(id, wait);
}
