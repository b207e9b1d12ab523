/**
 * The rules about vprotect's RBD snapshots, as pure functions (unit-tested without Ceph):
 * - naming: `vprotect-<point-id>`, so a snapshot on the source names the point it belongs to;
 * - the anchor a point records, and whether the next backup can be an incremental from it;
 * - rotation: after a point is durable, older vprotect snapshots go; other tools' never do.
 */
import { isPointId, pointIdTime } from '../../src/repository/ids.js';
import type { RbdImageInfo, RbdSnapshot } from './rbd-json.js';

export const SNAPSHOT_PREFIX = 'vprotect-';

export function snapshotName(pointId: string): string {
  return `${SNAPSHOT_PREFIX}${pointId}`;
}

/** The point id a snapshot name carries, or undefined when it is not a vprotect snapshot. */
export function pointIdOf(snapName: string): string | undefined {
  if (!snapName.startsWith(SNAPSHOT_PREFIX)) return undefined;
  const id = snapName.slice(SNAPSHOT_PREFIX.length);
  return isPointId(id) ? id : undefined;
}

/** Only snapshots named exactly `vprotect-<point-id>` are ours: a user's "vprotect-test" is not. */
export function isVprotectSnapshot(s: Pick<RbdSnapshot, 'name' | 'namespace'>): boolean {
  return s.namespace === 'user' && pointIdOf(s.name) !== undefined;
}

export function snapshotTime(snapName: string): Date | undefined {
  const id = pointIdOf(snapName);
  return id ? pointIdTime(id) : undefined;
}

/** What a point records per disk (manifest `sourceAnchor`), and what the next run checks. */
export interface RbdAnchor {
  kind: 'rbd-snapshot';
  cluster: string;
  fsid?: string;
  pool: string;
  image: string;
  imageId: string;
  snapName: string;
  snapId: number;
  size: number;
}

export function parseAnchor(v: unknown): RbdAnchor | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const a = v as Record<string, unknown>;
  if (a['kind'] !== 'rbd-snapshot') return undefined;
  const s = (k: string) => typeof a[k] === 'string';
  const n = (k: string) => typeof a[k] === 'number' && Number.isSafeInteger(a[k]);
  if (!s('cluster') || !s('pool') || !s('image') || !s('imageId') || !s('snapName') || !n('snapId') || !n('size')) return undefined;
  return {
    kind: 'rbd-snapshot',
    cluster: a['cluster'] as string,
    ...(s('fsid') ? { fsid: a['fsid'] as string } : {}),
    pool: a['pool'] as string,
    image: a['image'] as string,
    imageId: a['imageId'] as string,
    snapName: a['snapName'] as string,
    snapId: a['snapId'] as number,
    size: a['size'] as number,
  };
}

export type LevelDecision = { level: 'full'; reason: string } | { level: 'incremental'; reason: string; from: RbdSnapshot };

/**
 * Full or incremental for one disk. An incremental needs the previous point's snapshot still on
 * the image, with the same image id (a re-created image of the same name is another disk), the
 * same snapshot id (a snapshot re-created under the same name holds other data) and the same
 * size as both the previous point and the image now (a resized image gets a full).
 */
export function decideLevel(input: {
  requested: 'full' | 'incremental' | 'auto';
  /** The disk in the previous complete point, if there is one. */
  previous: { pointId: string; size: number; sourceAnchor: unknown } | undefined;
  cluster: string;
  fsid: string | undefined;
  pool: string;
  image: string;
  info: RbdImageInfo;
  snapshots: RbdSnapshot[];
}): LevelDecision {
  const { previous, info } = input;
  if (input.requested === 'full') return { level: 'full', reason: 'a full backup was asked for' };
  if (!previous) return { level: 'full', reason: 'no previous point of this disk' };
  const a = parseAnchor(previous.sourceAnchor);
  if (!a) return { level: 'full', reason: `point ${previous.pointId} has no RBD snapshot anchor for this disk (another strategy wrote it)` };
  if (a.cluster !== input.cluster || (a.fsid && input.fsid && a.fsid !== input.fsid)) {
    return { level: 'full', reason: `point ${previous.pointId} was taken from another ceph cluster (${a.cluster}${a.fsid ? `, fsid ${a.fsid}` : ''})` };
  }
  if (a.pool !== input.pool || a.image !== input.image) return { level: 'full', reason: `point ${previous.pointId} was taken from ${a.pool}/${a.image}, the disk is now ${input.pool}/${input.image}` };
  if (a.imageId !== info.id) return { level: 'full', reason: `image ${input.pool}/${input.image} was re-created (id ${info.id}, was ${a.imageId})` };
  const snap = input.snapshots.find((s) => s.name === a.snapName && s.namespace === 'user');
  if (!snap) return { level: 'full', reason: `snapshot ${a.snapName} of point ${previous.pointId} is no longer on the image` };
  if (snap.id !== a.snapId) return { level: 'full', reason: `snapshot ${a.snapName} was re-created (id ${snap.id}, was ${a.snapId})` };
  if (snap.size !== a.size || a.size !== previous.size) return { level: 'full', reason: `snapshot ${a.snapName} does not have the size point ${previous.pointId} recorded` };
  if (info.size !== previous.size) return { level: 'full', reason: `the image was resized from ${previous.size} to ${info.size} bytes` };
  return { level: 'incremental', reason: `snapshot ${a.snapName} (id ${a.snapId}) of point ${previous.pointId} is on image ${info.id}`, from: snap };
}

export interface RotationPlan {
  remove: RbdSnapshot[];
  /** vprotect snapshots left in place, with why (never silently). */
  keep: { snap: RbdSnapshot; why: string }[];
}

/**
 * After the point with snapshot `newest` is durable: every older vprotect snapshot goes (the
 * previous anchor and those of killed runs). Newer ones are left to whichever run is making
 * them (two runs on one image; the next rotation takes them). Other snapshots are not ours.
 */
export function planRotation(snapshots: RbdSnapshot[], newest: { name: string; id: number }): RotationPlan {
  const plan: RotationPlan = { remove: [], keep: [] };
  for (const s of snapshots) {
    if (!isVprotectSnapshot(s) || s.name === newest.name) continue;
    if (s.id < newest.id) plan.remove.push(s);
    else plan.keep.push({ snap: s, why: `newer than ${newest.name} (another run may be using it)` });
  }
  return plan;
}

/** The anchors the repositories know (newest complete point of each VM). */
export interface KnownAnchor {
  imageId: string;
  snapName: string;
}

export interface LeftoverVerdict {
  snap: RbdSnapshot;
  leftover: boolean;
  why: string;
}

/**
 * `vprotect cleanup`: which vprotect snapshots of one image are leftovers of killed runs.
 * - an anchor of the newest point of a VM in a repository is kept (the next incremental needs it);
 * - a snapshot made after a backup that is still running began is kept (it may be that run's);
 * - when no repository of the inventory knows an anchor on the image, the newest vprotect
 *   snapshot is kept: it may be the anchor of a repository this inventory does not name (or
 *   could not read); a killed first backup's snapshot then stays until the next run rotates it;
 * - everything else of ours is a leftover.
 */
export function classifyForCleanup(input: {
  imageId: string;
  snapshots: RbdSnapshot[];
  anchors: KnownAnchor[];
  /** Start of the oldest backup still running, if any. */
  runningSince: Date | undefined;
}): LeftoverVerdict[] {
  const ours = input.snapshots.filter(isVprotectSnapshot).sort((a, b) => a.id - b.id);
  const anchored = new Set(input.anchors.filter((a) => a.imageId === input.imageId).map((a) => a.snapName));
  const newest = ours.at(-1);
  return ours.map((snap) => {
    if (anchored.has(snap.name)) return { snap, leftover: false, why: 'anchor of the newest point (the next incremental starts from it)' };
    const t = snapshotTime(snap.name);
    if (input.runningSince && t && t.getTime() >= input.runningSince.getTime() - 1000) return { snap, leftover: false, why: 'made after a backup that is still running began' };
    if (anchored.size === 0 && snap === newest) return { snap, leftover: false, why: 'newest vprotect snapshot, and no repository of this inventory knows the image (it may be the anchor of another)' };
    return { snap, leftover: true, why: anchored.size ? 'not the anchor of the newest point' : 'older than the newest vprotect snapshot, and no repository of this inventory knows the image' };
  });
}
