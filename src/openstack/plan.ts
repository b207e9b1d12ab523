/**
 * `restore --plan`: what a restore of a point would create, and where, without creating
 * anything. The `restore` command (src/cli/commands/repository.ts, another module) calls:
 *
 *   const meta = await readMetadata(`${pointDir}/metadata`);
 *   const plan = await planRestore(meta, cloud, { name, project, flavor, network, availabilityZone, volumeType });
 *
 * and prints `plan` (or executes its steps with the primitives in restore.ts). The plan only
 * reads the target cloud: flavors, networks, volume types, images and keypairs are looked
 * up so that every mapping is checked before anything is made.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, errorMessage } from '../errors.js';
import { parseVolume, type Volume } from './cinder.js';
import type { Cloud } from './cloud.js';
import { isNotFound } from './errors.js';
import { parseImage, type Image } from './glance.js';
import { Reader } from './json.js';
import { parseFlavor, parseKeypair, parseServer, type Flavor, type Keypair, type Server } from './nova.js';
import { parsePort, type Port } from './neutron.js';
import type { BlockDevice, ServerSpec } from './nova.js';
import type { DiskRecord } from './vm.js';

/** A point's metadata/ directory, typed with the same parsers as the live API. */
export interface VmMetadata {
  server: Server;
  flavor: Flavor | undefined;
  image: Image | undefined;
  volumes: Volume[];
  ports: Port[];
  keypair: Keypair | undefined;
  disks: DiskRecord[] | undefined;
}

async function readJson(dir: string, name: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(join(dir, name), 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DataCorruptError(`cannot read ${join(dir, name)}: ${errorMessage(err)}`);
  }
}

export async function readMetadata(dir: string): Promise<VmMetadata> {
  const doc = async (name: string) => {
    const v = await readJson(dir, name);
    return v === undefined ? undefined : Reader.of(v, name);
  };
  const server = await doc('server.json');
  if (!server) throw new DataCorruptError(`${dir} has no server.json: not a vprotect metadata directory`);
  try {
    const flavor = await doc('flavor.json');
    const image = await doc('image.json');
    const volumes = await doc('volumes.json');
    const ports = await doc('ports.json');
    const keypair = await doc('keypair.json');
    const disks = await doc('disks.json');
    return {
      server: parseServer(server.get('server')),
      flavor: flavor ? parseFlavor(flavor.get('flavor')) : undefined,
      image: image ? parseImage(image) : undefined,
      volumes: volumes ? volumes.list('volumes').map(parseVolume) : [],
      ports: ports ? ports.list('ports').map(parsePort) : [],
      keypair: keypair ? parseKeypair(keypair.get('keypair')) : undefined,
      disks: disks ? (disks.get('disks').value as DiskRecord[]) : undefined,
    };
  } catch (err) {
    throw new DataCorruptError(`metadata in ${dir} is damaged: ${errorMessage(err)}`, { cause: err });
  }
}

export interface RestoreMapping {
  /** Name of the new server; default: the original's. */
  name?: string | undefined;
  /** Project name or id; default: the original's (needs a user with a role there). */
  project?: string | undefined;
  /** Flavor name or id; default: the original flavor's name. */
  flavor?: string | undefined;
  /** Network name or id for every port, or "none"; default: the original networks. */
  network?: string | undefined;
  availabilityZone?: string | undefined;
  /** Volume type for every volume; default: each volume's own. */
  volumeType?: string | undefined;
  /** Recreate the keypair for its owner when missing (default true). */
  keypair?: boolean | undefined;
}

export type RestoreStep =
  | { action: 'create-volume'; disk: string; sizeGb: number; volumeType: string | undefined; availabilityZone: string | undefined; bootIndex: number | undefined; name: string }
  | { action: 'upload-image'; disk: string; name: string; diskFormat: string; properties: Record<string, string> }
  | { action: 'create-keypair'; name: string; userId: string; publicKey: string }
  | {
      action: 'create-server';
      name: string;
      project: { id: string; name: string | undefined };
      flavor: { id: string; name: string };
      boot: 'volume' | 'image';
      imageId: string | undefined;
      networks: 'none' | { networkId: string; networkName: string; fixedIp: string | undefined }[];
      availabilityZone: string | undefined;
      keyName: string | undefined;
      securityGroups: string[];
    };

/** What the caller knows beyond the metadata: the point's disks (restore --to-cloud passes them). */
export interface PlanContext {
  /** Bytes of each disk the point holds, by the plan's disk key ("root", "volume-<id>"). */
  diskBytes?: Record<string, number> | undefined;
}

const GiB = 1024 ** 3;

/**
 * Image properties that must not travel to the uploaded root image: Glance reserves os_glance_*;
 * the owner_specified hashes and img_signature_* describe the original image's bytes, not ours
 * (a signature check would refuse the boot); the block-device properties of a volume-backed
 * server's snapshot would make Nova boot from the original's snapshot instead of this image.
 */
const FOREIGN_IMAGE_PROPERTY = /^(os_glance|owner_specified\.|img_signature|block_device_mapping$|bdm_v2$|root_device_name$|mappings$|base_image_ref$|image_location$|image_state$|image_type$|instance_uuid$|user_id$|boot_roles$|owner_id$)/;

export function uploadableImageProperties(props: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(props).filter(([k]) => !FOREIGN_IMAGE_PROPERTY.test(k)));
}

export interface RestorePlan {
  source: { serverId: string; name: string; projectId: string };
  target: { cloud: string; project: { id: string; name: string | undefined } };
  steps: RestoreStep[];
  /** What will differ from the original, or will need attention. */
  notes: string[];
  /** What makes the restore impossible as asked (an unknown flavor, network, ...). */
  problems: string[];
}

export async function planRestore(meta: VmMetadata, cloud: Cloud, mapping: RestoreMapping = {}, context: PlanContext = {}): Promise<RestorePlan> {
  const nova = await cloud.nova();
  const s = meta.server;
  const notes: string[] = [];
  const problems: string[] = [];
  const steps: RestoreStep[] = [];
  const name = mapping.name ?? s.name;

  // Project: the original one unless mapped; resolved by name through Keystone when admin.
  let project = { id: s.projectId, name: undefined as string | undefined };
  const wanted = mapping.project ?? s.projectId;
  try {
    const found = (await cloud.identity.listProjects()).find((p) => p.id === wanted || p.name === wanted);
    if (found) project = { id: found.id, name: found.name };
    else problems.push(`project ${wanted} does not exist in cloud ${cloud.name}`);
  } catch {
    if (mapping.project && mapping.project !== cloud.session.projectId && mapping.project !== cloud.session.token.project?.name) {
      problems.push(`cannot look up project ${mapping.project} (needs admin)`);
    } else project = { id: cloud.session.projectId ?? s.projectId, name: cloud.session.token.project?.name };
  }

  // Flavor.
  const flavorName = mapping.flavor ?? meta.flavor?.name ?? s.flavor.name ?? s.flavor.id;
  const flavors = await nova.listFlavors();
  const flavor = flavors.find((f) => f.id === flavorName || f.name === flavorName);
  if (!flavor) problems.push(`flavor ${flavorName} does not exist in cloud ${cloud.name} (choose one with --flavor; it has ${flavors.map((f) => f.name).join(', ')})`);
  else if (meta.flavor && (flavor.vcpus !== meta.flavor.vcpus || flavor.ramMb !== meta.flavor.ramMb || flavor.diskGb < meta.flavor.diskGb)) {
    notes.push(`flavor ${flavor.name} differs from the original ${meta.flavor.name} (${meta.flavor.vcpus} vCPU, ${meta.flavor.ramMb} MB, ${meta.flavor.diskGb} GB)`);
  }

  // Disks: volumes are recreated; a local root disk becomes an image to boot from.
  const rootBytes = context.diskBytes?.['root'];
  if (flavor && s.imageId && rootBytes !== undefined && flavor.diskGb > 0 && flavor.diskGb * GiB < rootBytes) {
    problems.push(`flavor ${flavor.name} has a ${flavor.diskGb} GB root disk, smaller than the restored root disk (${(rootBytes / GiB).toFixed(2)} GiB); choose a flavor with a root disk of at least ${Math.ceil(rootBytes / GiB)} GB with --flavor`);
  }
  const types = await (await cloud.cinder()).listVolumeTypes().catch(() => []);
  const disks = meta.disks ?? [];
  const boot: 'volume' | 'image' = s.imageId ? 'image' : 'volume';
  for (const v of meta.volumes) {
    const disk = disks.find((d) => d.volumeId === v.id);
    const type = mapping.volumeType ?? v.volumeType;
    if (type && types.length && !types.some((t) => t.name === type || t.id === type)) problems.push(`volume type ${type} (volume ${v.id}) does not exist in cloud ${cloud.name}; map it with --volume-type`);
    // Whole GiB, and never smaller than the data (a volume extended after its metadata was read).
    const bytes = context.diskBytes?.[`volume-${v.id}`];
    const sizeGb = Math.max(v.sizeGb, bytes === undefined ? 0 : Math.ceil(bytes / GiB));
    // Cinder zones are not Nova zones (a lab's "rbd" compute zone has no Cinder zone of that
    // name): a volume keeps its own zone; --availability-zone places the server.
    steps.push({ action: 'create-volume', disk: `volume-${v.id}`, sizeGb, volumeType: type, availabilityZone: v.availabilityZone, bootIndex: disk?.bootIndex, name: v.name ?? `${name}-${v.id.slice(0, 8)}` });
  }
  if (mapping.availabilityZone && meta.volumes.some((v) => v.availabilityZone && v.availabilityZone !== mapping.availabilityZone)) {
    notes.push(`the server goes to availability zone ${mapping.availabilityZone}; its volumes keep their Cinder zone (${[...new Set(meta.volumes.map((v) => v.availabilityZone ?? 'default'))].join(', ')})`);
  }
  let imageId: string | undefined;
  if (boot === 'image') {
    const props = uploadableImageProperties(meta.image?.properties ?? {});
    steps.push({ action: 'upload-image', disk: 'root', name: `vprotect-restore-${name}`, diskFormat: 'raw', properties: props });
    if (s.imageId) {
      try {
        await cloud.glance.getImage(s.imageId);
        notes.push(`the original image ${s.imageId} still exists, but the restored root disk is uploaded as its own image (the disk changed since boot)`);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    imageId = undefined; // known once the upload-image step has run
  }

  // Networks: by id or name from the original ports, or the mapping.
  let networks: Extract<RestoreStep, { action: 'create-server' }>['networks'] = 'none';
  if (mapping.network !== 'none') {
    const nets = await cloud.neutron.listNetworks().catch(() => undefined);
    if (mapping.network) {
      const n = nets?.find((x) => x.id === mapping.network || x.name === mapping.network);
      if (!n) problems.push(`network ${mapping.network} does not exist in cloud ${cloud.name}`);
      else networks = meta.ports.length ? meta.ports.map(() => ({ networkId: n.id, networkName: n.name, fixedIp: undefined })) : [{ networkId: n.id, networkName: n.name, fixedIp: undefined }];
      if (n && meta.ports.length) notes.push('fixed IPs are not kept when the network is mapped');
    } else if (meta.ports.length) {
      networks = [];
      for (const p of meta.ports) {
        const n = nets?.find((x) => x.id === p.networkId);
        if (!n) problems.push(`network ${p.networkId} of port ${p.id} does not exist in cloud ${cloud.name}; map it with --network`);
        else networks.push({ networkId: n.id, networkName: n.name, fixedIp: p.fixedIps[0]?.ipAddress });
      }
    }
  }

  // The original's fixed IPs are still taken while it exists: ask for new addresses then.
  if (Array.isArray(networks) && networks.some((n) => n.fixedIp)) {
    const original = await nova.getServer(s.id).catch((err: unknown) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
    if (original) {
      networks = networks.map((n) => ({ ...n, fixedIp: undefined }));
      notes.push(`the original server ${s.id} still exists and holds its fixed IPs; the restored server gets new addresses on the same networks`);
    }
  }

  // Keypair. Nova takes key_name from the *requesting* user's keypairs, so the restoring user
  // needs it too; and the owner gets it back when it was deleted (admin, user_id).
  if (s.keyName && mapping.keypair !== false) {
    if (!meta.keypair) notes.push(`keypair ${s.keyName} was not captured; the server is created without it`);
    else {
      const me = cloud.session.token.user.id;
      const owner = meta.keypair.userId ?? s.userId;
      for (const userId of owner === me ? [me] : [owner, me]) {
        try {
          const existing = await nova.getKeypair(s.keyName, userId === me ? undefined : userId);
          if (existing.publicKey.trim() !== meta.keypair.publicKey.trim()) {
            problems.push(`keypair ${s.keyName} of user ${userId} exists with another public key; restore without it (keypair: false)`);
          }
        } catch (err) {
          if (!isNotFound(err)) throw err;
          steps.push({ action: 'create-keypair', name: s.keyName, userId, publicKey: meta.keypair.publicKey });
        }
      }
      if (owner !== me) notes.push(`keypair ${s.keyName} belongs to user ${owner}; the server is created by ${cloud.session.token.user.name}, who gets the same public key under that name`);
    }
  }

  const securityGroups = s.securityGroups.length ? s.securityGroups : [];
  steps.push({
    action: 'create-server',
    name,
    project,
    flavor: flavor ? { id: flavor.id, name: flavor.name } : { id: '?', name: flavorName ?? '?' },
    boot,
    imageId,
    networks,
    availabilityZone: mapping.availabilityZone ?? s.availabilityZone,
    keyName: mapping.keypair === false ? undefined : s.keyName,
    securityGroups: networks === 'none' ? [] : securityGroups,
  });
  if (project.id !== cloud.session.projectId) notes.push(`resources are created in project ${project.name ?? project.id}: vprotect re-scopes its token there (the user needs a role in it)`);
  return { source: { serverId: s.id, name: s.name, projectId: s.projectId }, target: { cloud: cloud.name, project }, steps, notes, problems };
}

/**
 * The ServerSpec for a plan's create-server step, once the earlier steps have run: `volumes`
 * maps each create-volume step's disk key to the new volume id, `imageId` is the uploaded root
 * image (image-booted servers). Volumes keep their boot order; the boot volume is boot index 0;
 * delete_on_termination is the original's.
 */
export function serverSpecFor(plan: RestorePlan, made: { volumes: Record<string, string>; imageId?: string | undefined }, meta: VmMetadata): ServerSpec {
  const server = plan.steps.find((s): s is Extract<RestoreStep, { action: 'create-server' }> => s.action === 'create-server');
  if (!server) throw new Error('the plan has no create-server step');
  const volumes = plan.steps.filter((s): s is Extract<RestoreStep, { action: 'create-volume' }> => s.action === 'create-volume');
  const blockDevices: BlockDevice[] = volumes.map((v) => {
    const id = made.volumes[v.disk];
    if (!id) throw new Error(`no volume was created for disk ${v.disk}`);
    // As the original: a volume Nova deleted with its server is deleted with the restored one.
    const original = meta.server.volumesAttached.find((a) => `volume-${a.id}` === v.disk);
    return { uuid: id, sourceType: 'volume' as const, destinationType: 'volume' as const, bootIndex: server.boot === 'volume' && v.bootIndex === 0 ? 0 : null, deleteOnTermination: original?.deleteOnTermination ?? false };
  });
  if (server.boot === 'image' && !made.imageId) throw new Error('an image-booted server needs the uploaded root image');
  if (server.boot === 'volume' && !blockDevices.some((b) => b.bootIndex === 0) && blockDevices[0]) blockDevices[0].bootIndex = 0;
  // Nova wants a boot sequence that starts at 0 among block_device_mapping_v2: an image-booted
  // server with volumes lists its image as the local boot disk (what `--image` + `--block-device` does).
  if (server.boot === 'image' && blockDevices.length) {
    blockDevices.unshift({ uuid: made.imageId!, sourceType: 'image', destinationType: 'local', bootIndex: 0, deleteOnTermination: true });
  }
  return {
    name: server.name,
    flavorId: server.flavor.id,
    imageId: server.boot === 'image' ? made.imageId : undefined,
    blockDevices: blockDevices.length ? blockDevices : undefined,
    networks: server.networks === 'none' ? 'none' : server.networks.map((n) => ({ uuid: n.networkId, ...(n.fixedIp ? { fixedIp: n.fixedIp } : {}) })),
    availabilityZone: server.availabilityZone,
    keyName: server.keyName,
    userData: meta.server.userData,
    metadata: meta.server.metadata,
    tags: meta.server.tags,
    securityGroups: server.securityGroups.length ? server.securityGroups : undefined,
    description: meta.server.description,
  };
}
