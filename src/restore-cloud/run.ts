/**
 * `vprotect restore --point ID --to-cloud [CLOUD]`: recreates a point's instance in OpenStack,
 * executing the plan of `restore --plan` (src/openstack/plan.ts):
 *
 *   1. each volume: a new Cinder volume, then the point's disk written into its RBD image;
 *      the boot volume of a volume-booted server is marked bootable and gets the original's
 *      image metadata (the hw_* properties Nova builds the guest from);
 *   2. the root disk of an image-booted server: streamed into a new raw Glance image;
 *   3. keypairs missing for the owner or the restoring user;
 *   4. the server (serverSpecFor), waited for until ACTIVE.
 *
 * Anything this run made is recorded as soon as the cloud returns its id; when a step fails or
 * the run is interrupted, it is all removed again in reverse order — with a fresh session when
 * the run's own was cut by Ctrl-C — and what could not be removed is named in the error with
 * the command that removes it.
 */
import { errorMessage, ExitCode, InterruptedError, throwIfAborted, UsageError, VprotectError } from '../errors.js';
import type { Inventory } from '../inventory/types.js';
import type { EventSink, Logger } from '../log.js';
import type { Cloud } from '../openstack/cloud.js';
import { planRestore, serverSpecFor, uploadableImageProperties, type RestoreMapping, type RestorePlan, type RestoreStep, type VmMetadata } from '../openstack/plan.js';
import { createServer, createVolume, deleteImage, ensureKeypair, setVolumeBootable, setVolumeImageMetadata } from '../openstack/restore.js';
import { openDiskReader } from '../repository/chain-reader.js';
import type { PointInfo, Repository } from '../repository/repository.js';
import { mapDisks, planDisks, type DiskSource } from './disks.js';
import { uploadDisk } from './image.js';
import { describeMade, Ledger, removalCommand, type Leftover, type Made } from './ledger.js';
import { locateVolumeImage, notOnRbd, writeVolumeImage } from './rbd-volume.js';

const GiB = 1024 ** 3;

/** Steps a test can make fail (a fault injected after the step has completed). */
export type RestoreCloudStep = 'volumes' | 'image' | 'keypairs' | 'server';

export interface RestoreCloudRequest {
  repo: Repository;
  point: PointInfo;
  meta: VmMetadata;
  /** The libvirt domain XML of the point (libvirt-ssh points), to tie disks to volumes. */
  domainXml?: string | undefined;
  /** The target cloud, scoped to the user's project, its session bound to `signal`. */
  cloud: Cloud;
  /** A new session to the same cloud that `signal` does not cut: used to undo a failed run. */
  reconnect: () => Promise<Cloud>;
  inventory: Pick<Inventory, 'cephClusters'>;
  mapping: RestoreMapping;
  /** Delete the uploaded root image once the server is ACTIVE (default: keep it). */
  deleteImage?: boolean | undefined;
  log: Logger;
  events?: EventSink | undefined;
  signal?: AbortSignal | undefined;
  /** Server ACTIVE timeout (default 10 min: TCG guests and big images are slow). */
  serverTimeoutMs?: number | undefined;
  /** Tests: called after each step; a throw there is a failure of the run at that step. */
  afterStep?: ((step: RestoreCloudStep, made: readonly Made[]) => void | Promise<void>) | undefined;
}

export interface RestoredVolume {
  disk: string;
  sourceDisk: string;
  id: string;
  name: string;
  sizeGb: number;
  boot: boolean;
  rbd: string;
  dataBytes: number;
}

export interface RestoreCloudResult {
  point: string;
  vm: string;
  cloud: string;
  project: { id: string; name: string | undefined };
  server: { id: string; name: string; status: string; host: string | undefined; availabilityZone: string | undefined };
  volumes: RestoredVolume[];
  image: { id: string; name: string; sourceDisk: string; sha256: string; dataBytes: number; kept: boolean } | undefined;
  keypairs: { name: string; userId: string }[];
  notRestored: { key: string; why: string }[];
  notes: string[];
  seconds: number;
}

type Step<A extends RestoreStep['action']> = Extract<RestoreStep, { action: A }>;

/** A failed restore: the cause's message and exit status, plus what was undone and what is left. */
export class RestoreCloudError extends VprotectError {
  override readonly code: string;
  override readonly exitCode: ExitCode;
  readonly left: Leftover[];

  constructor(cause: unknown, step: string, removed: Made[], left: Leftover[]) {
    const undone = removed.length ? `; removed what it had made (${removed.map(describeMade).join(', ')})` : '';
    const leftText = left.length ? `; LEFT in the cloud: ${left.map((l) => `${describeMade(l.resource)} (${l.reason})`).join('; ')}` : removed.length ? '; nothing is left' : '; nothing had been made';
    const c = cause instanceof VprotectError ? cause : undefined;
    super(`restore into the cloud failed at ${step}: ${errorMessage(cause)}${undone}${leftText}`, {
      cause,
      // The cause's own hint may speak of targets this run has removed ("--overwrite" of the
      // ceph-rbd restore into a volume that is gone now): then it would mislead.
      hint: left.length ? `remove what is left with: ${left.map((l) => l.command).join(' && ')}` : c?.hint && !/--overwrite/.test(c.hint) ? c.hint : undefined,
      data: { ...c?.data, step, removed, left: left.map((l) => ({ ...l.resource, reason: l.reason, command: l.command })) },
    });
    this.code = c?.code ?? 'internal';
    this.exitCode = c?.exitCode ?? ExitCode.internal;
    this.left = left;
  }
}

export async function restoreToCloud(req: RestoreCloudRequest): Promise<RestoreCloudResult> {
  const started = Date.now();
  const { repo, point, meta, log, signal } = req;
  const wait = { signal, log };

  // The plan, checked against the cloud, with the point's disk sizes (flavor and volume sizes).
  const sizesByPlanDisk = sizesOf(req);
  const plan = await planRestore(meta, req.cloud, req.mapping, { diskBytes: sizesByPlanDisk.bytes });
  if (plan.problems.length) {
    throw new UsageError(`the restore cannot be done as asked: ${plan.problems.join('; ')}`, { hint: 'see `vprotect restore --plan` with the same options', data: { problems: plan.problems } });
  }
  const mapping = sizesByPlanDisk.mapping;
  const target = plan.target.project.id !== req.cloud.session.projectId ? await req.cloud.forProject(plan.target.project.id) : req.cloud;
  const notes = [...plan.notes];
  const ledger = new Ledger();
  let step = 'the start';
  const after = async (s: RestoreCloudStep) => {
    throwIfAborted(signal);
    await req.afterStep?.(s, ledger.made);
  };

  try {
    // 1. Volumes: create, find the RBD image, write the disk into it.
    step = 'creating volumes';
    const volumes: RestoredVolume[] = [];
    for (const v of steps(plan, 'create-volume')) {
      const src = mapping.sources.get(v.disk)!;
      step = `volume for ${v.disk}`;
      const created = await createVolume(
        target,
        {
          sizeGb: v.sizeGb,
          name: v.name,
          volumeType: v.volumeType,
          availabilityZone: v.availabilityZone,
          description: `restored by vprotect from point ${point.pointId} of ${meta.server.name} (${v.disk})`,
          metadata: { vprotect_point: point.pointId, vprotect_source: v.disk, vprotect_server: plan.steps.find((x) => x.action === 'create-server')?.name ?? '' },
        },
        wait,
        { onCreated: (id) => ledger.add({ kind: 'volume', id, name: v.name, disk: v.disk }) },
      );
      const originalDisk = meta.disks?.find((d) => d.key === v.disk);
      const { location, searched } = await locateVolumeImage(req.inventory, req.cloud.name, created.id, originalDisk, { signal, log });
      if (!location) throw notOnRbd(created, req.cloud.name, searched);
      log.info(`writing ${src.key} of point ${point.pointId} into volume ${created.id} (rbd ${location.pool}/${location.image} of cluster ${location.clusterName})`);
      const w = await writeVolumeImage({ repo, point, key: src.key, location, volumeBytes: v.sizeGb * GiB, signal, events: req.events });
      const boot = v.bootIndex === 0;
      if (boot) {
        await setVolumeBootable(target, created.id);
        const originalVolume = meta.volumes.find((x) => `volume-${x.id}` === v.disk);
        await setVolumeImageMetadata(target, created.id, uploadableImageProperties(originalVolume?.imageMetadata ?? {}));
      }
      volumes.push({ disk: v.disk, sourceDisk: src.key, id: created.id, name: v.name, sizeGb: v.sizeGb, boot, rbd: `${location.clusterName}:${location.pool}/${location.image}`, dataBytes: w.dataBytes });
    }
    if (volumes.some((v) => v.boot)) {
      notes.push('the boot volume was marked bootable and given the original volume\'s image metadata (hw_* properties), so Nova builds the same virtual hardware');
    }
    await after('volumes');

    // 2. The root disk of an image-booted server, as a Glance image.
    let image: RestoreCloudResult['image'];
    const upload = steps(plan, 'upload-image')[0];
    if (upload) {
      step = `uploading ${upload.disk} to Glance`;
      const src = mapping.sources.get(upload.disk)!;
      const reader = await openDiskReader(repo, point, src.key);
      try {
        log.info(`uploading ${src.key} of point ${point.pointId} (${(reader.size / GiB).toFixed(2)} GiB) to Glance as image ${upload.name}`);
        const up = await uploadDisk(target, reader, { name: upload.name, diskFormat: upload.diskFormat, properties: { ...upload.properties, vprotect_point: point.pointId } }, {
          signal,
          events: req.events,
          onCreated: (id) => ledger.add({ kind: 'image', id, name: upload.name }),
        });
        image = { id: up.image.id, name: upload.name, sourceDisk: src.key, sha256: up.digests.sha256, dataBytes: up.dataBytes, kept: true };
      } finally {
        await reader.close();
      }
      await after('image');
    }

    // 3. Keypairs (the owner's, and the restoring user's copy Nova takes key_name from).
    step = 'keypairs';
    const keypairs: { name: string; userId: string }[] = [];
    for (const k of steps(plan, 'create-keypair')) {
      const r = await ensureKeypair(target, { name: k.name, publicKey: k.publicKey, userId: k.userId });
      if (r.created) {
        ledger.add({ kind: 'keypair', name: k.name, userId: k.userId });
        keypairs.push({ name: k.name, userId: k.userId });
      }
    }
    await after('keypairs');

    // 4. The server.
    step = 'creating the server';
    const spec = serverSpecFor(plan, { volumes: Object.fromEntries(volumes.map((v) => [v.disk, v.id])), imageId: image?.id }, meta);
    const server = await createServer(target, spec, { ...wait, timeoutMs: req.serverTimeoutMs ?? 600_000 }, { onCreated: (id) => ledger.add({ kind: 'server', id, name: spec.name }) });
    await after('server');

    if (image) {
      if (req.deleteImage) {
        step = 'deleting the uploaded image';
        await deleteImage(target, image.id);
        ledger.forget('image', image.id);
        image.kept = false;
        notes.push(`image ${image.id} was deleted after the boot: the compute host keeps its own copy, but a rebuild, resize, evacuation or unshelve of this server will need an image again`);
      } else {
        notes.push(`image ${image.name} (${image.id}) holds the restored root disk and is kept: the server was booted from it, and a rebuild, resize, evacuation or unshelve needs it; remove it when the server no longer does: ${removalCommand({ kind: 'image', id: image.id, name: image.name }, target === req.cloud ? undefined : plan.target.project.id)}`);
      }
    }
    // (Not "paused": a snapshot pauses the guest for a moment, and the metadata may see that.)
    if (meta.server.powerState === 'shutdown') notes.push('the original was shut off when it was backed up; the restored server runs (stop it with `openstack server stop` if it should not)');
    return {
      point: point.pointId,
      vm: point.vmId,
      cloud: req.cloud.name,
      project: plan.target.project,
      server: { id: server.id, name: server.name, status: server.status, host: server.host, availabilityZone: server.availabilityZone },
      volumes,
      image,
      keypairs,
      notRestored: mapping.notRestored,
      notes,
      seconds: (Date.now() - started) / 1000,
    };
  } catch (err) {
    throw await undo(err, step, ledger, req, target, target === req.cloud ? undefined : plan.target.project.id);
  } finally {
    if (target !== req.cloud) target.close();
  }
}

function steps<A extends RestoreStep['action']>(plan: RestorePlan, action: A): Step<A>[] {
  return plan.steps.filter((s): s is Step<A> => s.action === action);
}

/** The point's disk for each disk the plan will write, and the sizes the plan checks against. */
function sizesOf(req: RestoreCloudRequest): { mapping: ReturnType<typeof mapDisks>; bytes: Record<string, number> } {
  const mapping = mapDisks(planDisks(req.meta), req.meta, req.point.manifest, req.domainXml);
  const bytes: Record<string, number> = {};
  for (const [planDisk, s] of mapping.sources as Map<string, DiskSource>) bytes[planDisk] = s.size;
  return { mapping, bytes };
}

/** Removes what the run made; the error says what was removed and what is left. */
async function undo(failure: unknown, step: string, ledger: Ledger, req: RestoreCloudRequest, target: Cloud, projectId: string | undefined): Promise<RestoreCloudError> {
  // Ctrl-C surfaces as whatever it cut (a broken upload, a failed request): report the signal.
  const err = req.signal?.aborted ? (req.signal.reason instanceof VprotectError ? req.signal.reason : new InterruptedError()) : failure;
  if (!ledger.made.length) return new RestoreCloudError(err, step, [], []);
  req.log.warn(`restore failed at ${step} (${errorMessage(err)}); removing what it made: ${ledger.made.map(describeMade).join(', ')}`);
  let cloud: Cloud | undefined = target;
  const opened: Cloud[] = [];
  let noSession: string | undefined;
  if (req.signal?.aborted) {
    // After Ctrl-C the run's session refuses every call: undo through a new one.
    try {
      const base = await req.reconnect();
      opened.push(base);
      cloud = projectId ? await base.forProject(projectId) : base;
      opened.push(cloud);
    } catch (e) {
      cloud = undefined;
      noSession = `cannot reach the cloud to remove it: ${errorMessage(e)}`;
    }
  }
  try {
    const report = await ledger.rollback(cloud, { projectId, noSession, wait: { log: req.log } });
    for (const l of report.left) req.log.error(`left in the cloud: ${describeMade(l.resource)}: ${l.reason}; remove it with: ${l.command}`);
    return new RestoreCloudError(err, step, report.removed, report.left);
  } finally {
    for (const c of new Set(opened)) c.close();
  }
}
