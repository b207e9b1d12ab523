/**
 * Writing one point (docs/FORMAT.md §9): metadata and disks as they come, then SHA256SUMS, then
 * the manifest, each durable before the next; the point exists only once its manifest does.
 */
import { createHash } from 'node:crypto';
import { rm, rmdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { throwIfAborted, UsageError } from '../errors.js';
import { VERSION } from '../version.js';
import { writeDiffDisk, writeFullDisk, type DiskStats, type StepHook, type WrittenDisk } from './disk-writers.js';
import { fsyncDir, writeFileDurable } from './durable.js';
import type { Extent } from './extents.js';
import { SAFE_NAME_RE } from './ids.js';
import { diskFiles, layout, MANIFEST, SUMS } from './layout.js';
import type { VmLock } from './lock.js';
import { repositoryPreamble, writeToolDiffDisk, type ToolDiff } from './tool-diff.js';
import { sealManifest, toJson, type DiskEntry, type PointLevel, type PointManifest } from './manifest.js';
import type { PointInfo, Repository } from './repository.js';
import { formatSums, type SumEntry } from './sums.js';

export interface BeginPointOptions {
  vmId: string;
  vmName?: string;
  /** Kept in vm.json for listing. */
  project?: string;
  cloud?: string;
  level: PointLevel;
  /**
   * The point's id when the caller chose it (the engine does, before the snapshot, so the
   * source snapshot can carry it); must be a valid point id not used yet. Default: a new one.
   */
  pointId?: string;
  /** Required for an incremental: the point it is relative to (normally lastCompletePoint). */
  parentPointId?: string;
  /** cloud, region, project, server id/name, host (informative, stored in the manifest). */
  source?: Record<string, unknown>;
  strategy?: { name: string; optionsDigest?: string };
  consistency?: PointManifest['consistency'];
  /** A lock the caller already holds; otherwise beginPoint takes one and commit/abort release it. */
  lock?: VmLock;
  /** Recorded in the lock's owner file. */
  command?: string;
  signal?: AbortSignal;
  now?: Date;
  /** Tests: called after each durable step ("metadata:x", "data:vda", "index:vda", "blockmap:vda", "sums", "manifest"). */
  onStep?: StepHook;
}

export interface DiskSpec {
  key: string;
  /** Logical size of the disk at this point. */
  size: number;
  /** What the source disk was (qcow2, raw, rbd): informative. */
  sourceFormat?: string;
  /** Strategy state for the next incremental; can also be set later with setSourceAnchor. */
  sourceAnchor?: Record<string, unknown>;
}

interface WriterInit extends BeginPointOptions {
  pointId: string;
  chainId: string;
  dir: string;
  parent: PointInfo | undefined;
  lock: VmLock;
  ownsLock: boolean;
}

export class PointWriter {
  readonly pointId: string;
  readonly chainId: string;
  readonly parentId: string | null;
  readonly level: PointLevel;
  readonly dir: string;
  private readonly startedAt = new Date().toISOString();
  private readonly metadata = new Map<string, string>();
  private readonly disks = new Map<string, { spec: DiskSpec; written?: WrittenDisk }>();
  private state: 'open' | 'committed' | 'aborted' = 'open';

  constructor(
    private readonly repo: Repository,
    private readonly init: WriterInit,
  ) {
    this.pointId = init.pointId;
    this.chainId = init.chainId;
    this.parentId = init.parent?.pointId ?? null;
    this.level = init.level;
    this.dir = init.dir;
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new UsageError(`point ${this.pointId} is already ${this.state}`);
  }

  /** Stores metadata/<name>: a Buffer or string as is, anything else as JSON. */
  async addMetadata(name: string, content: unknown): Promise<void> {
    this.assertOpen();
    if (!SAFE_NAME_RE.test(name)) throw new UsageError(`"${name}" cannot be a metadata file name`);
    const data = Buffer.isBuffer(content) ? content : Buffer.from(typeof content === 'string' ? content : toJson(content));
    await writeFileDurable(join(this.dir, diskFiles.metadata(name)), data);
    this.metadata.set(name, createHash('sha256').update(data).digest('hex'));
    await this.init.onStep?.(`metadata:${name}`);
  }

  /** Writes one disk from its extents (ascending; gaps read as zeros for a full). */
  async writeDisk(spec: DiskSpec, extents: AsyncIterable<Extent> | Iterable<Extent>): Promise<DiskStats> {
    const { entry, common } = this.addDisk(spec);
    entry.written =
      this.level === 'full'
        ? await writeFullDisk({ ...common, blockSize: this.repo.blockSize }, extents)
        : await writeDiffDisk({ ...common, fromSnap: this.parentId!, toSnap: this.pointId }, extents);
    return entry.written.stats;
  }

  /** Whether writeDiskFromTool can store this tool's diff: an incremental point, and a preamble that fits ours (tool-diff.ts). */
  takesToolDiff(spec: DiskSpec, tool: ToolDiff): boolean {
    return this.level === 'incremental' && repositoryPreamble({ fromSnap: this.parentId!, toSnap: this.pointId, size: spec.size }, tool) !== undefined;
  }

  /** Writes one disk of an incremental point as the source's tool writes it (tool-diff.ts). */
  async writeDiskFromTool(spec: DiskSpec, tool: ToolDiff, onRecord?: (end: number) => void): Promise<DiskStats> {
    if (this.level !== 'incremental') throw new UsageError(`disk ${spec.key}: a tool's diff belongs to an incremental point, ${this.pointId} is ${this.level}`);
    const { entry, common } = this.addDisk(spec);
    entry.written = await writeToolDiffDisk({ ...common, fromSnap: this.parentId!, toSnap: this.pointId, ...(onRecord ? { onRecord } : {}) }, tool);
    return entry.written.stats;
  }

  private addDisk(spec: DiskSpec) {
    this.assertOpen();
    if (!SAFE_NAME_RE.test(spec.key)) throw new UsageError(`"${spec.key}" cannot be a disk key`);
    if (!Number.isSafeInteger(spec.size) || spec.size < 0) throw new UsageError(`disk ${spec.key}: bad size ${spec.size}`);
    if (this.disks.has(spec.key)) throw new UsageError(`disk ${spec.key} is written twice in point ${this.pointId}`);
    const entry: { spec: DiskSpec; written?: WrittenDisk } = { spec };
    this.disks.set(spec.key, entry);
    const common = { pointDir: this.dir, key: spec.key, size: spec.size, ...(this.init.signal ? { signal: this.init.signal } : {}), ...(this.init.onStep ? { onStep: this.init.onStep } : {}) };
    return { entry, common };
  }

  setSourceAnchor(key: string, anchor: Record<string, unknown>): void {
    const d = this.disks.get(key);
    if (!d) throw new UsageError(`no disk ${key} in point ${this.pointId}`);
    d.spec.sourceAnchor = anchor;
  }

  /** SHA256SUMS, then the manifest, then vm.json; releases the lock if beginPoint took it. */
  async commit(): Promise<PointManifest> {
    this.assertOpen();
    throwIfAborted(this.init.signal);
    const pending = [...this.disks.values()].filter((d) => !d.written).map((d) => d.spec.key);
    if (pending.length) throw new UsageError(`disks ${pending.join(', ')} were not written completely`);
    const sums: SumEntry[] = [...this.metadata].map(([name, sha256]) => ({ path: diskFiles.metadata(name), sha256 }));
    for (const d of this.disks.values()) sums.push(...d.written!.sums);
    const sumsText = formatSums(sums);
    await writeFileDurable(join(this.dir, SUMS), sumsText);
    await this.init.onStep?.('sums');

    const disks: DiskEntry[] = [...this.disks.values()].map(({ spec, written }) => ({
      key: spec.key,
      size: spec.size,
      ...(spec.sourceFormat ? { sourceFormat: spec.sourceFormat } : {}),
      encoding: this.level === 'full' ? 'raw-sparse' : 'rbd-diff-v1',
      file: written!.file,
      index: written!.index,
      blockMap: written!.blockMap,
      blockMapSha256: written!.blockMapSha256,
      ...written!.stats,
      sourceAnchor: spec.sourceAnchor ?? null,
    }));
    const o = this.init;
    const manifest: PointManifest = {
      format: 1,
      kind: 'vprotect-point',
      pointId: this.pointId,
      chainId: this.chainId,
      parentId: this.parentId,
      level: this.level,
      status: 'complete',
      vmId: o.vmId,
      ...(o.vmName ? { vmName: o.vmName } : {}),
      startedAt: this.startedAt,
      finishedAt: new Date().toISOString(),
      tool: { name: 'vprotect', version: VERSION },
      ...(o.source ? { source: o.source } : {}),
      ...(o.strategy ? { strategy: o.strategy } : {}),
      ...(o.consistency ? { consistency: o.consistency } : {}),
      blockSize: this.repo.blockSize,
      metadata: [...this.metadata.keys()].sort(),
      disks,
      sums: { file: SUMS, sha256: createHash('sha256').update(sumsText).digest('hex') },
    };
    await writeFileDurable(join(this.dir, MANIFEST), sealManifest(manifest));
    this.state = 'committed';
    await this.init.onStep?.('manifest');
    await writeFileDurable(layout.vmFile(this.repo.root, o.vmId), toJson({ vmId: o.vmId, vmName: o.vmName, project: o.project, cloud: o.cloud, updatedAt: manifest.finishedAt })).catch((err: unknown) => {
      this.repo.log.warn(`could not update vm.json of ${o.vmId}: ${(err as Error).message}`);
    });
    if (o.ownsLock) await o.lock.release();
    return manifest;
  }

  /** Removes everything of this point (and its chain directory if it was the chain's full). */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    try {
      await rm(this.dir, { recursive: true, force: true });
      if (this.level === 'full') await rmdir(dirname(this.dir)).catch(() => {});
      await fsyncDir(dirname(this.dir)).catch(() => {});
    } finally {
      if (this.init.ownsLock) await this.init.lock.release();
    }
  }
}
