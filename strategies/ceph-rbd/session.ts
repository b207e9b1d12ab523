/**
 * One backup of one VM whose disks are RBD images (contract: src/strategy/contract.ts):
 *   plan     — per disk: image id, size, snapshots → full or incremental, with the reason;
 *   snapshot — pre hooks, `rbd snap create pool/image@vprotect-<point-id>` for all disks at
 *              once, post hooks; the report says which consistency that gives;
 *   read     — `rbd export-diff [--from-snap <previous>]` parsed on the fly;
 *   commit   — once the point is durable: older vprotect snapshots go (rotation);
 *   abort    — the snapshots this run made go; nothing else is touched.
 */
import { errorMessage, UnavailableError, UsageError, VprotectError } from '../../src/errors.js';
import type { BackupLevel } from '../../src/inventory/types.js';
import type { Extent } from '../../src/repository/extents.js';
import { newPointId } from '../../src/repository/ids.js';
import type { BackupSession, BackupTarget, ConsistencyReport, DiskPlan, MetadataFile, PreviousPoint, StrategyContext, TargetDisk } from '../../src/strategy/contract.js';
import type { CommandExec } from './exec.js';
import { readExportDiff } from './export-diff.js';
import { runHooks, HookFailedError, type HookResult } from './hooks.js';
import type { Rbd } from './rbd.js';
import type { RbdImageInfo, RbdSnapshot } from './rbd-json.js';
import { removeSnapshot } from './rotation.js';
import { decideLevel, planRotation, snapshotName, type LevelDecision, type RbdAnchor } from './snapshots.js';

export type RbdTargetDisk = Extract<TargetDisk, { kind: 'rbd' }>;

/**
 * Fault injection for tests: `step` is called at each step of the session (names below) and
 * may throw there. When `crashed()` is true, abort and close leave the source as it is, which is
 * what a killed process does (nothing runs after SIGKILL).
 * Steps: plan · snapshot:before · snapshot:created:<key> · snapshot:after · read:<key> ·
 * commit:before · commit:removed:<key>:<snap> .
 */
export interface FaultHooks {
  step?(name: string): void | Promise<void>;
  crashed?(): boolean;
}

interface DiskState {
  disk: RbdTargetDisk;
  info: RbdImageInfo;
  decision: LevelDecision;
  snapName?: string;
  snap?: RbdSnapshot;
  /** This session made the snapshot (abort removes it). */
  created: boolean;
}

export interface SessionDeps {
  rbd: Rbd;
  /** Where hooks with `where: hypervisor` run, when the VM's hypervisor is reachable. */
  hypervisorExec?: CommandExec;
  localExec: CommandExec;
  faults?: FaultHooks;
  /** Called by close() after the session's own cleanup (closes an SSH pool, …). */
  onClose?: () => Promise<void>;
}

export class CephRbdSession implements BackupSession {
  private readonly disks: DiskState[] = [];
  private fsid: string | undefined;
  private pointId: string | undefined;
  private hookResults: HookResult[] = [];

  constructor(
    private readonly target: BackupTarget,
    private readonly rbdDisks: RbdTargetDisk[],
    private readonly ctx: StrategyContext,
    private readonly deps: SessionDeps,
  ) {}

  private get rbd(): Rbd {
    return this.deps.rbd;
  }

  private async fault(step: string): Promise<void> {
    await this.deps.faults?.step?.(step);
  }

  async plan(request: { level: BackupLevel; previous: PreviousPoint | undefined }): Promise<DiskPlan[]> {
    await this.fault('plan');
    const signal = this.ctx.signal;
    this.fsid = await this.rbd.fsid(signal);
    const plans: DiskPlan[] = [];
    for (const disk of this.rbdDisks) {
      const info = await this.rbd.info(disk.pool, disk.image, signal);
      const snapshots = await this.rbd.snapshots(disk.pool, disk.image, signal);
      const prev = request.previous?.disks.find((d) => d.key === disk.key);
      const decision = decideLevel({
        requested: request.level,
        previous: prev && request.previous ? { pointId: request.previous.pointId, size: prev.size, sourceAnchor: prev.sourceAnchor } : undefined,
        cluster: this.rbd.access.name,
        fsid: this.fsid,
        pool: disk.pool,
        image: disk.image,
        info,
        snapshots,
      });
      this.disks.push({ disk, info, decision, created: false });
      plans.push({ key: disk.key, size: info.size, sourceFormat: 'rbd', level: decision.level, reason: decision.reason });
    }
    return plans;
  }

  async snapshot(point?: { pointId: string }): Promise<ConsistencyReport> {
    if (this.disks.length !== this.rbdDisks.length) throw new UsageError('snapshot() before plan()');
    this.pointId = point?.pointId ?? newPointId();
    const policy = this.ctx.policy;
    const quiesce = policy?.quiesce ?? 'off';
    if (quiesce === 'require') {
      throw new UsageError(`the ceph-rbd strategy cannot quiesce ${this.target.vmName}: it has no channel to a guest agent`, { hint: 'use the libvirt-ssh strategy (it snapshots RBD disks through this code after freezing the guest), or set quiesce to try or off' });
    }
    const runners = { local: this.deps.localExec, ...(this.deps.hypervisorExec ? { hypervisor: this.deps.hypervisorExec } : {}), signal: this.ctx.signal };
    await this.fault('snapshot:before');
    try {
      this.hookResults = await runHooks('pre', policy?.hooks?.preSnapshot, runners);
    } catch (err) {
      if (err instanceof HookFailedError) this.hookResults = err.results;
      throw err;
    }
    let spreadMs = 0;
    let snapError: unknown;
    try {
      spreadMs = await this.createSnapshots();
    } catch (err) {
      snapError = err;
    }
    // Post hooks run even when a snapshot failed: they usually thaw what the pre hooks froze.
    try {
      this.hookResults.push(...(await runHooks('post', policy?.hooks?.postSnapshot, runners)));
    } catch (err) {
      if (err instanceof HookFailedError) this.hookResults.push(...err.results);
      if (!snapError) snapError = err;
    }
    if (snapError) throw snapError;
    await this.fault('snapshot:after');
    await this.recordSnapshots();
    return this.consistency(quiesce, spreadMs);
  }

  /** All disks at once (one `rbd snap create` each, in parallel): as close together as rbd allows. */
  private async createSnapshots(): Promise<number> {
    const name = snapshotName(this.pointId!);
    const started = Date.now();
    let lastDone = started;
    const results = await Promise.allSettled(
      this.disks.map(async (d) => {
        d.snapName = name;
        await this.rbd.snapCreate(d.disk.pool, d.disk.image, name, this.ctx.signal);
        d.created = true;
        lastDone = Math.max(lastDone, Date.now());
        await this.fault(`snapshot:created:${d.disk.key}`);
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return lastDone - started;
  }

  /** Snapshot ids and sizes, as rbd reports them after the fact (they go into the anchor). */
  private async recordSnapshots(): Promise<void> {
    for (const d of this.disks) {
      const snaps = await this.rbd.snapshots(d.disk.pool, d.disk.image, this.ctx.signal);
      const snap = snaps.find((s) => s.name === d.snapName && s.namespace === 'user');
      if (!snap) throw new UnavailableError(`snapshot ${d.snapName} of ${d.disk.pool}/${d.disk.image} disappeared right after it was made`);
      if (snap.size !== d.info.size) {
        throw new UnavailableError(`${d.disk.pool}/${d.disk.image} was resized while the backup started (${d.info.size} → ${snap.size} bytes)`, { hint: 'run the backup again' });
      }
      d.snap = snap;
    }
  }

  private consistency(quiesce: 'off' | 'try' | 'require', spreadMs: number): ConsistencyReport {
    const pre = this.hookResults.filter((h) => h.phase === 'pre');
    const appConsistent = pre.length > 0 && this.hookResults.every((h) => h.ok);
    const notes: string[] = [];
    if (this.disks.length > 1) notes.push(`${this.disks.length} RBD snapshots made in parallel within ${spreadMs} ms: each disk is crash-consistent; together they are not one atomic snapshot`);
    if (quiesce === 'try') notes.push('quiesce was asked for, but the ceph-rbd strategy has no guest agent channel');
    const failedHooks = this.hookResults.filter((h) => !h.ok);
    if (failedHooks.length) notes.push(`${failedHooks.length} hook(s) failed and were set to continue`);
    const report: ConsistencyReport & { snapshot: string; disks: number; spreadMs: number } = {
      level: appConsistent ? 'app' : 'crash',
      ...(notes.length ? { note: notes.join('; ') } : {}),
      ...(this.hookResults.length ? { hooks: this.hookResults } : {}),
      snapshot: snapshotName(this.pointId!),
      disks: this.disks.length,
      spreadMs,
    };
    return report;
  }

  read(plan: DiskPlan): AsyncIterable<Extent> {
    const d = this.state(plan.key);
    if (!d.snap || !d.snapName) throw new UsageError(`read(${plan.key}) before snapshot()`);
    if (plan.size !== d.snap.size) throw new UsageError(`disk ${plan.key}: planned size ${plan.size} is not the snapshot's ${d.snap.size}`);
    const fromSnap = plan.level === 'incremental' ? (d.decision.level === 'incremental' ? d.decision.from.name : undefined) : undefined;
    if (plan.level === 'incremental' && fromSnap === undefined) throw new UsageError(`disk ${plan.key}: an incremental was planned without a base snapshot`);
    const self = this;
    return (async function* () {
      await self.fault(`read:${plan.key}`);
      yield* readExportDiff(self.rbd, { pool: d.disk.pool, image: d.disk.image, snap: d.snapName!, ...(fromSnap ? { fromSnap } : {}), size: plan.size, signal: self.ctx.signal, joinRecords: plan.level === 'incremental' });
    })();
  }

  sourceAnchor(plan: DiskPlan): RbdAnchor {
    const d = this.state(plan.key);
    if (!d.snap) throw new UsageError(`sourceAnchor(${plan.key}) before snapshot()`);
    return {
      kind: 'rbd-snapshot',
      cluster: this.rbd.access.name,
      ...(this.fsid ? { fsid: this.fsid } : {}),
      pool: d.disk.pool,
      image: d.disk.image,
      imageId: d.info.id,
      snapName: d.snap.name,
      snapId: d.snap.id,
      size: d.snap.size,
    };
  }

  async metadata(): Promise<MetadataFile[]> {
    const disks = this.disks.map((d) => ({
      key: d.disk.key,
      pool: d.disk.pool,
      image: d.disk.image,
      ...(d.disk.volumeId ? { volumeId: d.disk.volumeId } : {}),
      imageId: d.info.id,
      size: d.info.size,
      objectSize: d.info.objectSize,
      features: d.info.features,
      snapshot: d.snap ? { name: d.snap.name, id: d.snap.id } : null,
      level: d.decision.level,
      reason: d.decision.reason,
      ...(d.decision.level === 'incremental' ? { fromSnapshot: { name: d.decision.from.name, id: d.decision.from.id } } : {}),
    }));
    return [{ name: 'ceph-rbd.json', content: `${JSON.stringify({ cluster: this.rbd.access.name, fsid: this.fsid ?? null, disks }, null, 2)}\n` }];
  }

  /** The point is durable: on each image, the vprotect snapshots older than this run's go. */
  async commit(): Promise<void> {
    await this.fault('commit:before');
    const problems: string[] = [];
    for (const d of this.disks) {
      if (!d.snap) continue;
      // From here the snapshot is the anchor of a durable point: abort must never remove it.
      d.created = false;
      let snaps: RbdSnapshot[];
      try {
        snaps = await this.rbd.snapshots(d.disk.pool, d.disk.image, this.ctx.signal);
      } catch (err) {
        problems.push(`${d.disk.pool}/${d.disk.image}: ${errorMessage(err)}`);
        continue;
      }
      const rotation = planRotation(snaps, d.snap);
      for (const k of rotation.keep) this.ctx.log.info(`${d.disk.pool}/${d.disk.image}: keeping ${k.snap.name}: ${k.why}`);
      for (const old of rotation.remove) {
        const outcome = await removeSnapshot(this.rbd, d.disk.pool, d.disk.image, old, this.ctx.signal);
        if (outcome.removed) {
          this.ctx.log.info(`${d.disk.pool}/${d.disk.image}: removed ${old.name}`);
          await this.fault(`commit:removed:${d.disk.key}:${old.name}`);
        } else problems.push(outcome.problem);
      }
    }
    if (problems.length) {
      throw new VprotectError(`old vprotect snapshots were kept: ${problems.join('; ')}`, { hint: 'they are removed by the next backup or `vprotect cleanup` once the reason is gone' });
    }
  }

  async abort(reason: unknown): Promise<void> {
    if (this.deps.faults?.crashed?.()) return;
    const problems: string[] = [];
    for (const d of this.disks) {
      if (!d.created || !d.snapName) continue;
      try {
        await this.rbd.snapRemove(d.disk.pool, d.disk.image, d.snapName);
        d.created = false;
      } catch (err) {
        problems.push(`rbd snap rm ${d.disk.pool}/${d.disk.image}@${d.snapName}: ${errorMessage(err)}`);
      }
    }
    if (problems.length) {
      throw new VprotectError(`the backup failed (${errorMessage(reason)}) and its snapshots could not all be removed: ${problems.join('; ')}`, { hint: 'remove them with `vprotect cleanup`' });
    }
  }

  async close(): Promise<void> {
    try {
      if (!this.deps.faults?.crashed?.()) await this.rbd.dispose();
    } finally {
      await this.deps.onClose?.();
    }
  }

  private state(key: string): DiskState {
    const d = this.disks.find((x) => x.disk.key === key);
    if (!d) throw new UsageError(`no planned disk ${key}`);
    return d;
  }
}
