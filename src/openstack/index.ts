/**
 * The OpenStack layer's public API (DESIGN.md §6). Typical use:
 *
 *   const settings = settingsFromInventory(name, inventory.clouds[name], { env, cwd });
 *   const cloud = await Cloud.connect(settings, { log, signal });   // AuthError 77 / UnavailableError 69
 *   const nova = await cloud.nova();                                 // typed clients; glance/neutron/identity are properties
 *   const report = await syncCloud(cloud, inventory, { probe, log });
 *   const meta = await captureMetadata(cloud, serverId, { disks });  await writeMetadata(dir, meta);
 *   await createVolume(cloud, {...}); await attachVolume(cloud, proxyId, volumeId); ...
 *   const plan = await planRestore(await readMetadata(dir), cloud, mapping);
 */
export { Session, type Token } from './auth.js';
export { Cloud } from './cloud.js';
export { settingsFromEnvironment, settingsFromInventory, type ConnectionSettings } from './settings.js';
export { OpenStackApiError, OpenStackForbiddenError, BadResponseError, OperationFailedError, isNotFound, isConflict, httpStatusOf } from './errors.js';
export type { Server, Flavor, Hypervisor, Keypair, VolumeAttachment, ServerSpec, BlockDevice, PowerState } from './nova.js';
export type { Volume, VolumeType, Snapshot, Attachment, VolumeConnection, VolumeSpec } from './cinder.js';
export type { Image, ImageSpec } from './glance.js';
export type { Port, SecurityGroup, Network } from './neutron.js';
export type { VmRecord, DiskRecord, DiskBackend, BootSource } from './vm.js';
export { syncCloud, type SyncReport, type SyncWarning, type HypervisorStatus, type CephPoolUse } from './sync.js';
export { tcpProbe, commandProbe, parseDomainDisks, type HypervisorProbe, type DomainDisk, type RemoteExec } from './probe.js';
export { matchingPolicies, policyMatches } from './select.js';
export { captureMetadata, writeMetadata, stripSecrets, type CapturedMetadata } from './capture.js';
export {
  createVolume,
  deleteVolume,
  snapshotVolume,
  deleteSnapshot,
  attachVolume,
  detachVolume,
  uploadImage,
  downloadImage,
  volumeToImage,
  ensureKeypair,
  createServer,
  deleteServer,
  type Digests,
} from './restore.js';
export { planRestore, readMetadata, serverSpecFor, type RestorePlan, type RestoreStep, type RestoreMapping, type VmMetadata } from './plan.js';
