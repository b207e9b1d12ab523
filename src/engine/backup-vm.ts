/**
 * One VM's backup, start to end: lock → previous point → strategy session (plan, snapshot,
 * read) → point writer (data, sums, manifest) → strategy commit. The order is the safety
 * argument of DESIGN.md §4: the strategy drops its old anchor (RBD snapshot, checkpoint) only
 * after the new point is durable; any failure before that aborts both sides, and whatever the
 * strategy cannot remove is reported with the command that removes it.
 */
import { createHash } from 'node:crypto';
import { errorMessage, throwIfAborted, VprotectError } from '../errors.js';
import type { BackupLevel } from '../inventory/types.js';
import type { PointManifest } from '../repository/manifest.js';
import type { DiskStats, StepHook } from '../repository/disk-writers.js';
import { newPointId } from '../repository/ids.js';
import type { PointWriter } from '../repository/point-writer.js';
import type { PointInfo, Repository } from '../repository/repository.js';
import { shouldStartNewChain } from '../repository/retention.js';
import type { BackupSession, BackupTarget, DiskPlan, MetadataFile, PreviousPoint, Strategy, StrategyContext } from '../strategy/contract.js';
import { progressOf, withProgress } from './progress.js';

export interface BackupVmRequest {
  repo: Repository;
  strategy: Strategy;
  target: BackupTarget;
  level: BackupLevel;
  ctx: StrategyContext;
  /** Recorded in the lock's owner file, e.g. "vprotect backup --policy nightly". */
  command: string;
  /** Why the engine forces a new chain (retention's newChainAfter), if it does. */
  forceFullReason?: string;
  /** The VM's cloud metadata (Nova, Glance, Cinder, Neutron), read right after the snapshot. */
  captureMetadata?: () => Promise<MetadataFile[]>;
  /** Tests: the point writer's step hook (crash/kill tests at each durable step). */
  onStep?: StepHook;
}

export interface DiskResult {
  key: string;
  level: 'full' | 'incremental';
  reason: string;
  size: number;
  storedBytes: number;
  dataBytes: number;
  zeroBytes: number;
  changedBytes: number;
}

export interface BackupVmResult {
  vmId: string;
  vmName: string;
  pointId: string;
  chainId: string;
  level: 'full' | 'incremental';
  consistency: PointManifest['consistency'];
  disks: DiskResult[];
  seconds: number;
  /** Problems after the point became durable (e.g. an old snapshot that could not be removed). */
  warnings: string[];
}

export async function backupVm(req: BackupVmRequest): Promise<BackupVmResult> {
  const { repo, strategy, target, ctx } = req;
  const started = Date.now();
  const lock = await repo.lock(target.vmId, req.command);
  let session: BackupSession | undefined;
  let writer: PointWriter | undefined;
  try {
    await repo.cleanup(target.vmId, lock);
    const previousInfo = await repo.lastCompletePoint(target.vmId);
    const previous = previousInfo ? toPrevious(previousInfo) : undefined;
    const forceFullReason = req.forceFullReason ?? (previousInfo && req.level !== 'full' ? await newChainReason(repo, previousInfo, ctx) : undefined);
    const level: BackupLevel = forceFullReason ? 'full' : req.level;

    session = await strategy.open(target, ctx);
    const plans = unifyLevels(await session.plan({ level, previous }), forceFullReason);
    const pointLevel = plans.every((p) => p.level === 'incremental') && previous ? 'incremental' : 'full';
    for (const p of plans) ctx.log.info(`${target.vmName} ${p.key}: ${p.level} (${p.reason})`);

    // The id is chosen before the snapshot so the snapshot on the source can carry it.
    const pointId = newPointId();
    const consistency = await session.snapshot({ pointId });
    writer = await repo.beginPoint({
      pointId,
      vmId: target.vmId,
      vmName: target.vmName,
      ...(target.project ? { project: target.project } : {}),
      ...(target.cloud ? { cloud: target.cloud } : {}),
      level: pointLevel,
      ...(pointLevel === 'incremental' ? { parentPointId: previous!.pointId } : {}),
      source: sourceOf(target),
      strategy: { name: strategy.name, optionsDigest: digest(ctx.options) },
      consistency,
      lock,
      command: req.command,
      signal: ctx.signal,
      ...(req.onStep ? { onStep: req.onStep } : {}),
    });
    const warnings: string[] = [];
    if (req.captureMetadata) {
      // The disks matter more than their description: a cloud that cannot be read now costs a warning, not the backup.
      try {
        for (const file of await req.captureMetadata()) await writer.addMetadata(file.name, file.content);
      } catch (err) {
        throwIfAborted(ctx.signal);
        warnings.push(`cloud metadata could not be captured: ${errorMessage(err)}`);
      }
    }

    const disks: DiskResult[] = [];
    for (const plan of plans) {
      const report = { events: ctx.events, id: `${target.vmId}/${plan.key}`, label: `${target.vmName} ${plan.key}`, total: plan.size };
      const spec = { key: plan.key, size: plan.size, sourceFormat: plan.sourceFormat };
      const tool = session.toolDiff?.(plan);
      let stats: DiskStats;
      if (tool && writer.takesToolDiff(spec, tool)) {
        const progress = progressOf(report);
        stats = await writer.writeDiskFromTool(spec, tool, (end) => progress.at(end));
        progress.end();
      } else stats = await writer.writeDisk(spec, withProgress(session.read(plan), report));
      writer.setSourceAnchor(plan.key, anchorRecord(session.sourceAnchor(plan)));
      disks.push({ key: plan.key, level: plan.level, reason: plan.reason, size: plan.size, ...pickStats(stats) });
    }
    // After the disks: a strategy may still be recording what it describes here (ceph-rbd lists
    // the new snapshots while the first disk is read).
    for (const file of await session.metadata()) await writer.addMetadata(file.name, file.content);
    const manifest = await writer.commit();

    // The point is durable from here on: a failure now must not turn a good backup into a failed one.
    try {
      await session.commit();
    } catch (err) {
      warnings.push(`the backup is complete, but the source was not tidied: ${errorMessage(err)}${hintOf(err)}`);
    }
    return {
      vmId: target.vmId,
      vmName: target.vmName,
      pointId: manifest.pointId,
      chainId: manifest.chainId,
      level: pointLevel,
      consistency: manifest.consistency,
      disks,
      seconds: (Date.now() - started) / 1000,
      warnings,
    };
  } catch (err) {
    if (writer) await writer.abort().catch((e: unknown) => ctx.log.warn(`could not remove the unfinished point: ${errorMessage(e)}`));
    if (session) await session.abort(err).catch((e: unknown) => ctx.log.error(`cleanup after the failed backup of ${target.vmName} failed: ${errorMessage(e)}${hintOf(e)}`));
    throw err;
  } finally {
    if (session) await session.close().catch((e: unknown) => ctx.log.warn(`closing the ${strategy.name} session: ${errorMessage(e)}`));
    await lock.release().catch((e: unknown) => ctx.log.warn(`releasing the lock of ${target.vmId}: ${errorMessage(e)}`));
  }
}

/** A point is full or incremental as a whole: one disk that needs a full makes every disk full. */
export function unifyLevels(plans: DiskPlan[], forceFullReason?: string): DiskPlan[] {
  if (forceFullReason) return plans.map((p) => (p.level === 'full' ? p : { ...p, level: 'full', reason: forceFullReason }));
  const needFull = plans.find((p) => p.level === 'full');
  if (!needFull || plans.every((p) => p.level === 'full')) return plans;
  return plans.map((p) => (p.level === 'full' ? p : { ...p, level: 'full', reason: `disk ${needFull.key} needs a full (${needFull.reason}), so the whole point is full` }));
}

/** The policy's newChainAfter rule, applied to the chain of the last complete point. */
async function newChainReason(repo: Repository, last: PointInfo, ctx: StrategyContext): Promise<string | undefined> {
  const rules = ctx.policy?.retention;
  if (!rules?.newChainAfter) return undefined;
  const chain = await repo.chainOf(last);
  const full = chain[0]!;
  const decision = shouldStartNewChain({ fullTime: full.manifest.startedAt, incrementals: chain.length - 1 }, rules, new Date());
  return decision.newChain ? `new chain: ${decision.reason}` : undefined;
}

function toPrevious(p: PointInfo): PreviousPoint {
  return {
    pointId: p.pointId,
    chainId: p.chainId,
    disks: p.manifest.disks.map((d) => ({ key: d.key, size: d.size, sourceAnchor: d.sourceAnchor ?? null })),
  };
}

function sourceOf(t: BackupTarget): Record<string, unknown> {
  return {
    ...(t.cloud ? { cloud: t.cloud } : {}),
    ...(t.project ? { project: t.project } : {}),
    serverId: t.vmId,
    serverName: t.vmName,
    ...(t.hypervisor ? { host: t.hypervisor.name } : {}),
    ...(t.domain ? { domain: t.domain } : {}),
  };
}

function anchorRecord(anchor: unknown): Record<string, unknown> {
  return anchor && typeof anchor === 'object' && !Array.isArray(anchor) ? (anchor as Record<string, unknown>) : { value: anchor ?? null };
}

function pickStats(s: { storedBytes: number; dataBytes: number; zeroBytes: number; changedBytes: number }) {
  return { storedBytes: s.storedBytes, dataBytes: s.dataBytes, zeroBytes: s.zeroBytes, changedBytes: s.changedBytes };
}

/** A digest of the strategy options, so a point says whether options changed between points. */
function digest(options: Record<string, unknown>): string {
  const canonical = JSON.stringify(options, Object.keys(options).sort());
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

function hintOf(err: unknown): string {
  return err instanceof VprotectError && err.hint ? ` (${err.hint})` : '';
}
