/**
 * The contract between the backup engine (src/engine) and a strategy (strategies/<name>).
 * A strategy never touches the destination and the repository never talks to a hypervisor:
 * the engine moves the extents a strategy reads into the repository's point writer.
 *
 * One backup of one VM is a session:
 *   open → plan (which disks, full or incremental and why) → snapshot (consistent point in time)
 *   → read each disk (AsyncIterable<Extent>) → [engine makes the point durable] → commit
 *   (keep the new anchor, drop the old one) — or abort at any step (remove what the run made).
 * close() is always called last, after commit or abort.
 */
import type { BackupLevel, HypervisorConfig, Inventory, PolicyConfig, StrategyName } from '../inventory/types.js';
import type { Environment } from '../inventory/secrets.js';
import type { RunContext } from '../log.js';
import type { Extent } from '../repository/extents.js';
import type { ToolDiff } from '../repository/tool-diff.js';

/** What the engine knows of the VM to back up. */
export interface BackupTarget {
  /** Stable id: the Nova server id, or the libvirt domain UUID for a VM outside OpenStack. */
  vmId: string;
  vmName: string;
  cloud?: string;
  project?: string;
  /** The hypervisor the VM runs on (inventory entry matched by Nova's hypervisor_hostname). */
  hypervisor?: HypervisorConfig;
  /** libvirt domain name (Nova's OS-EXT-SRV-ATTR:instance_name). */
  domain?: string;
  /**
   * The disks as the cloud describes them, when known (from Nova BDMs + Cinder, see `vprotect
   * sync`). A strategy may discover them itself instead (libvirt-ssh reads the domain XML).
   */
  disks?: TargetDisk[];
  /** Cloud-side description (typed by src/openstack), when the VM comes from Nova. */
  cloudRecord?: unknown;
}

/** Where a disk's bytes live. `key` is its name in the repository (vda, volume-<id>, ...). */
export type TargetDisk =
  | { key: string; kind: 'rbd'; pool: string; image: string; cephCluster?: string; volumeId?: string; bootIndex?: number }
  | { key: string; kind: 'file'; path: string; format: 'qcow2' | 'raw'; bootIndex?: number }
  | { key: string; kind: 'volume'; volumeId: string; bootIndex?: number };

/** The previous complete point of this VM, as the repository recorded it. */
export interface PreviousPoint {
  pointId: string;
  chainId: string;
  disks: { key: string; size: number; sourceAnchor: unknown }[];
}

export interface DiskPlan {
  /** Key in the repository, e.g. the libvirt target (vda) or `volume-<id>`. */
  key: string;
  /** Logical size in bytes at this snapshot. */
  size: number;
  /** What the source disk is (qcow2, raw, rbd): informative. */
  sourceFormat: string;
  level: 'full' | 'incremental';
  /** Why this level, in words for the report ("checkpoint vprotect-… is on the disk"). */
  reason: string;
}

export type ConsistencyLevel = 'crash' | 'quiesced' | 'app';

// A type alias (not an interface) so that it fits the manifest's open `consistency` record.
export type ConsistencyReport = {
  level: ConsistencyLevel;
  /** Why not higher, when quiesce was asked but not reached. */
  note?: string;
  hooks?: { phase: 'pre' | 'post'; command: string; where: string; exitCode: number | null; ok: boolean; message?: string }[];
};

export interface MetadataFile {
  /** File name under the point's metadata/ (server.json, domain.xml, ...). */
  name: string;
  content: string | Buffer;
}

export interface BackupSession {
  plan(request: { level: BackupLevel; previous: PreviousPoint | undefined }): Promise<DiskPlan[]>;
  /**
   * `point.pointId` is the id the point will have (the engine picks it before the snapshot), so
   * that what stays on the source names its point (RBD snapshot `vprotect-<point-id>`).
   */
  snapshot(point?: { pointId: string }): Promise<ConsistencyReport>;
  /**
   * Extents of one planned disk: ascending, non-overlapping, data or zeros. An extent's data is
   * valid only until the consumer asks for the next extent (strategies read into reused buffers,
   * src/util/buffer-pool.ts): the engine's writers copy it or finish with it before that.
   */
  read(disk: DiskPlan): AsyncIterable<Extent>;
  /**
   * Optional, for an incremental disk whose source tool writes "rbd diff v1" itself (`rbd
   * export-diff`): the tool writes straight into the point's diff file, which the repository
   * follows, checks and indexes (src/repository/tool-diff.ts), instead of the engine moving
   * read()'s extents. Undefined when this disk cannot be read that way (then read() is used).
   */
  toolDiff?(disk: DiskPlan): ToolDiff | undefined;
  /** State the next incremental needs (checkpoint name, snapshot id, ...), stored in the manifest. */
  sourceAnchor(disk: DiskPlan): unknown;
  metadata(): Promise<MetadataFile[]>;
  /** Called once the point is durable: keep the new anchor, remove the old one. */
  commit(): Promise<void>;
  /** Called when the run fails or is interrupted: remove everything this session created. */
  abort(reason: unknown): Promise<void>;
  close(): Promise<void>;
}

export interface StrategyContext extends RunContext {
  inventory: Inventory;
  policy: PolicyConfig | undefined;
  options: Record<string, unknown>;
  env: Environment;
}

/** What the repositories of an inventory say about source anchors (for `vprotect cleanup`). */
export interface KnownAnchors {
  /** The sourceAnchor of every disk of the newest complete point of every VM. */
  anchors: { repository: string; vmId: string; pointId: string; disk: string; anchor: unknown }[];
  /** Repositories that could not be read (their anchors are unknown). */
  unreadable: { repository: string; problem: string }[];
  /** When the oldest backup that is still running (a held lock) began, if any. */
  runningSince?: Date;
}

/** A leftover from a killed run that `vprotect cleanup` can list and remove. */
export interface Leftover {
  where: string;
  what: string;
  /** The command a person could run to remove it by hand. */
  removeWith: string;
  remove(): Promise<void>;
}

export interface Strategy {
  name: StrategyName;
  /**
   * The strategy finds a VM's disks on its own (libvirt-ssh reads the domain XML), so a disk
   * whose storage the cloud's view could not tell does not stop the backup.
   */
  discoversDisks?: boolean;
  open(target: BackupTarget, ctx: StrategyContext): Promise<BackupSession>;
  /**
   * Finds what killed runs left on the sources this inventory reaches. `known` (from the
   * repositories, gathered by the caller: strategies never read the destination) tells which
   * source anchors the next incrementals need and whether a backup is running right now.
   */
  leftovers?(ctx: StrategyContext, known?: KnownAnchors): Promise<Leftover[]>;
}
