/**
 * One backup of one VM whose disks are RBD images (contract: src/strategy/contract.ts):
 *   plan     — per disk: image id, size, snapshots → full or incremental, with the reason;
 *   snapshot — pre hooks, `rbd snap create pool/image@vprotect-<point-id>` for all disks at
 *              once, post hooks; the report says which consistency that gives;
 *   read     — `rbd export-diff [--from-snap <previous>]` parsed on the fly; an incremental
 *              with rbd on this machine is written by rbd into the point itself (toolDiff);
 *   commit   — once the point is durable: older vprotect snapshots go (rotation);
 *   abort    — the snapshots this run made go; nothing else is touched.
 *
 * Every `rbd` start costs 0.1–0.3 s (librados connects to the monitors and authenticates), which
 * for an incremental of a few hundred MiB is as much as the data. So: the calls of plan run at
 * once; the first disk's export-diff starts while the new snapshots are listed; commit removes
 * from the list made right after the snapshot instead of listing again, and asks `rbd children`
 * only of an image that can have clones (see commit()). An incremental makes 6 rbd calls in 4
 * steps one after the other (info ‖ snap ls, snap create, snap ls ‖ export-diff, snap rm); the 5
 * besides the export-diff cost 0.12–0.18 s of CPU each on the lab. A first full makes 5 in 3.
 */
import { errorMessage, UnavailableError, UsageError, VprotectError } from '../../src/errors.js';
import type { BackupLevel } from '../../src/inventory/types.js';
import { MAX_RECORD_BYTES } from '../../src/repository/disk-writers.js';
import type { Extent } from '../../src/repository/extents.js';
import type { ToolDiff } from '../../src/repository/tool-diff.js';
import { newPointId } from '../../src/repository/ids.js';
import type { BackupSession, BackupTarget, ConsistencyReport, DiskPlan, MetadataFile, PreviousPoint, StrategyContext, TargetDisk } from '../../src/strategy/contract.js';
import type { CommandExec, StreamingExec } from './exec.js';
import { exportDiffArgs, IDLE_HINT, readExportDiff, startExportDiff } from './export-diff.js';
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
  /** The image's snapshots right after this run's was made (commit rotates from this list). */
  snapsAfter?: RbdSnapshot[];
  /** This session made the snapshot (abort removes it). */
  created: boolean;
}

/** An export-diff started before read() asked for it (see snapshot()). */
interface EarlyRead {
  key: string;
  fromSnap: string | undefined;
  proc: Promise<StreamingExec>;
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
  private early: EarlyRead | undefined;
  /** The listing of the new snapshots (recordSnapshots), started by snapshot(). */
  private recorded: Promise<void> | undefined;

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
    // All at once: each is an rbd start-up of its own.
    const [fsid, looked] = await Promise.all([
      this.rbd.fsid(signal),
      Promise.all(this.rbdDisks.map((disk) => Promise.all([this.rbd.info(disk.pool, disk.image, signal), this.rbd.snapshots(disk.pool, disk.image, signal)]))),
    ]);
    this.fsid = fsid;
    const plans: DiskPlan[] = [];
    for (const [i, disk] of this.rbdDisks.entries()) {
      const [info, snapshots] = looked[i]!;
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
    // The new snapshots are listed (their ids go into the anchors) while the first disk's data
    // starts flowing: rbd writes it into the repository itself (toolDiff), or into the read-ahead.
    this.recorded = this.recordSnapshots();
    this.recorded.catch(() => {});
    const first = this.disks[0];
    if (!(first && this.allIncremental() && this.byTool(first))) {
      this.startFirstRead();
      await this.recorded;
    }
    return this.consistency(quiesce, spreadMs);
  }

  private allIncremental(): boolean {
    return this.disks.every((x) => x.decision.level === 'incremental');
  }

  /**
   * Whether rbd can write this disk's incremental into the repository itself: rbd runs on this
   * machine (it writes the file), and no record can exceed the repository's limit (export-diff's
   * records stay within one object).
   */
  private byTool(d: DiskState): boolean {
    return this.rbd.local && d.info.objectSize <= MAX_RECORD_BYTES;
  }

  toolDiff(plan: DiskPlan): ToolDiff | undefined {
    const d = this.state(plan.key);
    if (plan.level !== 'incremental' || d.decision.level !== 'incremental' || !this.byTool(d) || !d.snapName) return undefined;
    const req = { pool: d.disk.pool, image: d.disk.image, snap: d.snapName, fromSnap: d.decision.from.name };
    const signal = this.ctx.signal;
    return {
      what: `rbd export-diff --from-snap ${req.fromSnap} ${req.pool}/${req.image}@${req.snap}`,
      header: { fromSnap: req.fromSnap, toSnap: req.snap, size: plan.size },
      start: async (path) => {
        await this.fault(`read:${plan.key}`);
        const run = this.rbd.start(exportDiffArgs(req, path), signal);
        // The disk is done only once the snapshots are listed too (the anchor needs the id). A
        // listing that fails (the snapshot is gone, the image was resized) stops rbd, and its
        // reason is the one to tell; `done` still waits for rbd to have exited.
        const recorded = (this.recorded ?? Promise.reject(new UsageError(`toolDiff(${plan.key}) before snapshot()`))).catch((err: unknown) => {
          run.kill();
          throw err;
        });
        const done = Promise.allSettled([recorded, run.done]).then((settled) => {
          for (const r of settled) if (r.status === 'rejected') throw r.reason;
        });
        done.catch(() => {});
        return { done, kill: run.kill };
      },
      idleHint: IDLE_HINT,
    };
  }

  /**
   * Starts the export-diff of the first disk at the level the engine will ask for: all
   * incremental when every disk can be, else all full (engine rule). read() uses it when its
   * request is the same, else stops it and starts its own.
   */
  private startFirstRead(): void {
    const d = this.disks[0];
    if (!d?.snapName) return;
    const fromSnap = this.allIncremental() && d.decision.level === 'incremental' ? d.decision.from.name : undefined;
    const proc = startExportDiff(this.rbd, { pool: d.disk.pool, image: d.disk.image, snap: d.snapName, ...(fromSnap ? { fromSnap } : {}), signal: this.ctx.signal });
    // Failures surface when read() awaits it; one that nobody awaits must not crash the process.
    proc.catch(() => {});
    this.early = { key: d.disk.key, fromSnap, proc };
  }

  /** The early export-diff for this read, if it is the one asked for; any other is stopped. */
  private takeEarlyRead(key: string, fromSnap: string | undefined): Promise<StreamingExec> | undefined {
    const early = this.early;
    if (!early || early.key !== key) return undefined;
    this.early = undefined;
    if (early.fromSnap === fromSnap) return early.proc;
    stopRead(early);
    return undefined;
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
    await Promise.all(
      this.disks.map(async (d) => {
        const snaps = await this.rbd.snapshots(d.disk.pool, d.disk.image, this.ctx.signal);
        const snap = snaps.find((s) => s.name === d.snapName && s.namespace === 'user');
        if (!snap) throw new UnavailableError(`snapshot ${d.snapName} of ${d.disk.pool}/${d.disk.image} disappeared right after it was made`);
        if (snap.size !== d.info.size) {
          throw new UnavailableError(`${d.disk.pool}/${d.disk.image} was resized while the backup started (${d.info.size} → ${snap.size} bytes)`, { hint: 'run the backup again' });
        }
        d.snap = snap;
        d.snapsAfter = snaps;
      }),
    );
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
    if (!this.recorded || !d.snapName) throw new UsageError(`read(${plan.key}) before snapshot()`);
    const fromSnap = plan.level === 'incremental' ? (d.decision.level === 'incremental' ? d.decision.from.name : undefined) : undefined;
    if (plan.level === 'incremental' && fromSnap === undefined) throw new UsageError(`disk ${plan.key}: an incremental was planned without a base snapshot`);
    const self = this;
    const recorded = this.recorded;
    return (async function* () {
      await recorded;
      if (plan.size !== d.snap!.size) throw new UsageError(`disk ${plan.key}: planned size ${plan.size} is not the snapshot's ${d.snap!.size}`);
      const early = self.takeEarlyRead(plan.key, fromSnap);
      try {
        await self.fault(`read:${plan.key}`);
      } catch (err) {
        if (early) stopRead({ proc: early });
        throw err;
      }
      // reuseBuffers: the engine's point writer is done with an extent when it asks for the next.
      const req = { pool: d.disk.pool, image: d.disk.image, snap: d.snapName!, ...(fromSnap ? { fromSnap } : {}), size: plan.size, signal: self.ctx.signal, joinRecords: plan.level === 'incremental', reuseBuffers: true };
      yield* readExportDiff(self.rbd, req, early);
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
    await this.recorded;
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

  /**
   * The point is durable: on each image (all at once), the vprotect snapshots older than this
   * run's go. The list is the one made right after this run's snapshot: a vprotect snapshot
   * made since then is newer than ours and would be kept anyway, one removed since then is
   * taken as removed. `rbd children` is asked only when the image can have clones of a snapshot:
   * a v2 clone marks its parent image `clone-parent` (op_features), a v1 clone needs a
   * protected snapshot; an image with neither at plan time has no children (a clone made during
   * the run would keep our old snapshot alive in rbd's trash namespace, never lose data).
   */
  async commit(): Promise<void> {
    await this.fault('commit:before');
    // From here the snapshots are anchors of a durable point: abort must never remove them.
    for (const d of this.disks) if (d.snap) d.created = false;
    const problems = (await Promise.all(this.disks.map((d) => this.rotate(d)))).flat();
    if (problems.length) {
      throw new VprotectError(`old vprotect snapshots were kept: ${problems.join('; ')}`, { hint: 'they are removed by the next backup or `vprotect cleanup` once the reason is gone' });
    }
  }

  /** Removes the vprotect snapshots of one image older than this run's; returns the problems. */
  private async rotate(d: DiskState): Promise<string[]> {
    if (!d.snap || !d.snapsAfter) return [];
    const problems: string[] = [];
    const rotation = planRotation(d.snapsAfter, d.snap);
    for (const k of rotation.keep) this.ctx.log.info(`${d.disk.pool}/${d.disk.image}: keeping ${k.snap.name}: ${k.why}`);
    const cloneParent = d.info.opFeatures === undefined || d.info.opFeatures.includes('clone-parent');
    for (const old of rotation.remove) {
      const outcome = await removeSnapshot(this.rbd, d.disk.pool, d.disk.image, old, { mayHaveChildren: cloneParent || old.protected, ...(this.ctx.signal ? { signal: this.ctx.signal } : {}) });
      if (outcome.removed) {
        this.ctx.log.info(`${d.disk.pool}/${d.disk.image}: removed ${old.name}${outcome.alreadyGone ? ' (someone else already had)' : ''}`);
        await this.fault(`commit:removed:${d.disk.key}:${old.name}`);
      } else problems.push(outcome.problem);
    }
    return problems;
  }

  async abort(reason: unknown): Promise<void> {
    if (this.early) {
      stopRead(this.early);
      this.early = undefined;
    }
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
    if (this.early) {
      stopRead(this.early);
      this.early = undefined;
    }
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

/** Stops a started export-diff nobody will read (its failure, if any, is of no interest). */
function stopRead(read: Pick<EarlyRead, 'proc'>): void {
  read.proc.then(
    (p) => p.kill(),
    () => {},
  );
}
