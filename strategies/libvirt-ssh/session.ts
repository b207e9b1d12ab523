/**
 * One backup of one libvirt domain over SSH (the BackupSession of src/strategy/contract.ts):
 *
 *   open      SSH connection (shared per hypervisor), live + inactive domain XML
 *   plan      finish or undo what killed runs left (journal), disk sizes, the previous
 *             checkpoint redefined from its anchor (only its bitmap is kept between backups),
 *             per disk: mode (checkpoint | snapshot) and level with the reason
 *   snapshot  hooks, guest freeze, ONE point in time for every disk: the pull backup job
 *             (which also creates the new checkpoint) and/or external overlays; with both
 *             kinds and `atomic`, the domain is paused for the two calls
 *   read      NBD through the SSH connection (unix-socket forwarding) or direct TCP (netcat):
 *             the job's export per disk, or qemu-nbd on the frozen image
 *   RBD disks are handed to a ceph-rbd session (rbd-disks.ts): planned, snapshotted (inside
 *             the same freeze/pause as the file disks), read, committed and aborted by it
 *   commit    end the job, drop the previous checkpoint, the new one's metadata (its bitmap
 *             stays), merge the frozen overlay
 *   abort     end the job, drop the new checkpoint, the previous one's metadata, pivot back
 *             from the new overlays
 *
 * Everything the run creates on the hypervisor is written to its journal first (journal.ts).
 */
import { InterruptedError, UnavailableError, UsageError, errorMessage } from '../../src/errors.js';
import type { BackupLevel } from '../../src/inventory/types.js';
import type { ToolDiff } from '../../src/repository/tool-diff.js';
import type { Extent } from '../../src/repository/extents.js';
import { unifyLevels } from '../../src/engine/backup-vm.js';
import type { BackupSession, BackupTarget, ConsistencyReport, DiskPlan, MetadataFile, PreviousPoint, StrategyContext } from '../../src/strategy/contract.js';
import { connectSocketChannel, DEPTH_READ_CONTEXTS, dirtyReadContexts, FULL_READ_CONTEXTS, NbdSession, newCounters, readAllocationDepth, readDirty, readFull, type NbdDialer, type NbdSessionOptions, type NbdSource } from '../../src/transport/nbd/index.js';
import { DataStream, knownStreamFallback, STREAM_AFTER_BYTES, STREAM_PACING, SwitchingSource } from '../../src/transport/stream/index.js';
import { runBatch, writeFileStep, type Step, type StepResult } from './batch.js';
import { backupJobXml, checkpointForRedefine, checkpointXml, dumpCheckpoint, jobBitmapName, type JobDisk, type NbdServer } from './checkpoint-mode.js';
import { borrowConnection, type BorrowedConnection } from './connections.js';
import { checkHooks, freezeGuest, runHook, thawGuest } from './consistency.js';
import { parseDomainXml, type DomainDisk, type DomainInfo } from './domain-xml.js';
import { Hypervisor } from './hypervisor.js';
import { journalStep, listJournalsArgv, newJournal, newRunId, parseJournalListing, writeJournal, type Journal, type ListedJournal, type OverlayRecord } from './journal.js';
import { asAnchor, chooseMode, decideLevel, parseOptions, selectDisks, type DiskAnchor, type LibvirtSshOptions, type Mode, type SkippedDisk } from './plan.js';
import { startQemuNbd, stopQemuNbd } from './qemu-nbd.js';
import { dropRun, recoverStaleRuns, rollbackRun, startCommit } from './recovery.js';
import { openRbdDisks } from './rbd-disks.js';
import { overlayRecord, snapshotArgs } from './snapshot-mode.js';

/** Everything decided for one disk. */
interface DiskState {
  disk: DomainDisk;
  /** checkpoint | snapshot, offline (domain not running: qemu-nbd on the file itself), or rbd (the ceph-rbd session's). */
  mode: Mode | 'offline' | 'rbd';
  plan: DiskPlan;
  previousAnchor: DiskAnchor | undefined;
  overlay?: OverlayRecord;
}

export async function openSession(target: BackupTarget, ctx: StrategyContext): Promise<LibvirtSshSession> {
  if (!target.hypervisor) throw new UsageError(`${target.vmName}: no hypervisor for the libvirt-ssh strategy`, { hint: 'map the VM\'s host to an inventory hypervisor, or use --hypervisor' });
  if (!target.domain) throw new UsageError(`${target.vmName}: no libvirt domain name`);
  const options = parseOptions(ctx.options);
  // Accepted so that inventories written for it stay valid, but not built yet: say so rather than ignore it.
  if (options.parallelDisks > 1) ctx.log.warn(`${target.vmName}: parallelDisks ${options.parallelDisks} has no effect yet: disks are read one after the other`);
  const borrowed = await borrowConnection(target.hypervisor, ctx.env, ctx.log);
  let hv: Hypervisor | undefined;
  try {
    // One virsh and one shell for every phase of the run (persistent.ts), ended by close().
    hv = new Hypervisor(borrowed.conn, target.hypervisor, ctx.log, ctx.signal);
    hv.keepProcesses();
    const found = await readDomain(hv, target.domain, options.workDir, options.transport === 'netcat');
    return new LibvirtSshSession(target, ctx, options, hv, borrowed, found);
  } catch (err) {
    await hv?.closeProcesses().catch(() => undefined);
    await borrowed.release();
    throw err;
  }
}

/** What one look at the hypervisor tells about the domain, before anything is changed. */
interface DomainView {
  state: string;
  /** Parsed live XML. */
  domain: DomainInfo;
  /** Persistent XML (what a restore defines). */
  inactiveXml: string;
  /** `virsh domblkinfo --all` (sizes of the file disks), or its failure. */
  blkinfo: StepResult;
  /** Checkpoint names libvirt knows, undefined when the query failed (asked again when needed). */
  checkpoints: string[] | undefined;
  /** Run directories under workDir with their journals (killed runs to finish or undo). */
  journals: ListedJournal[];
  /** TCP ports listening on the hypervisor (`ss -Htln`, netcat transport only). */
  listening: Set<number> | undefined;
}

/**
 * The domain as it is now, in one round trip to each persistent process, at the same time:
 * every virsh query (each answer and error told apart) beside the journal listing (and, for the
 * netcat transport, the listening ports the plan picks the job's port from: asked now, the
 * plan can write the job's XML in its first round trip).
 */
async function readDomain(hv: Hypervisor, name: string, workDir: string, withPorts: boolean): Promise<DomainView> {
  const queries: string[][] = [['domstate', name], ['dumpxml', name], ['dumpxml', '--inactive', name], ['domblkinfo', name, '--all'], ['checkpoint-list', name, '--name']];
  const listing = listJournalsArgv(workDir);
  // Queries only: safe to ask again when the answer was lost (seen under load: no exit status).
  const listJournals = async () => {
    const l = await hv.exec(listing, { signal: null });
    return l.code === undefined ? hv.exec(listing, { signal: null }) : l;
  };
  const shell = async () => ({ listed: await listJournals(), ports: withPorts ? await hv.exec(['ss', '-Htln'], { signal: null }) : undefined });
  const [r, { listed, ports }] = await Promise.all([hv.virshEach(queries, { signal: null }), shell()]);
  const [state, live, inactive, blkinfo, checkpoints] = r as [StepResult, StepResult, StepResult, StepResult, StepResult];
  if (state.code !== 0) {
    if (/failed to get domain|Domain not found/i.test(state.stderr)) throw new UnavailableError(`domain ${name} does not exist on ${hv.name}`, { hint: 'check the domain name (virsh list --all) and the hypervisor' });
    throw hv.virshError(queries[0]!, state);
  }
  if (live.code !== 0) throw hv.virshError(queries[1]!, live);
  if (inactive.code !== 0) throw hv.virshError(queries[2]!, inactive);
  return {
    state: state.stdout.trim(),
    domain: parseDomainXml(live.stdout),
    inactiveXml: inactive.stdout,
    blkinfo,
    checkpoints: checkpoints.code === 0 ? checkpoints.stdout.split('\n').map((l) => l.trim()).filter(Boolean) : undefined,
    journals: parseJournalListing(listed.stdout),
    listening: ports?.code === 0 ? listeningPorts(ports.stdout) : undefined,
  };
}

export class LibvirtSshSession implements BackupSession {
  readonly runId = newRunId();
  private journal: Journal;
  private disks: DiskState[] = [];
  private skipped: SkippedDisk[] = [];
  private snapshotTaken = false;
  private frozen = false;
  private suspended = false;
  private newCheckpointXml: string | undefined;
  private finished = false;
  /** The ceph-rbd session of the domain's RBD disks, when it has some. */
  private rbd: BackupSession | undefined;
  /** Whether this run has file disks, hence a run directory and journal on the hypervisor. */
  private hasFileDisks = false;
  private readonly domainName: string;

  constructor(
    readonly target: BackupTarget,
    private readonly ctx: StrategyContext,
    readonly options: LibvirtSshOptions,
    readonly hv: Hypervisor,
    private readonly borrowed: BorrowedConnection,
    private view: DomainView,
  ) {
    this.domainName = view.domain.name;
    this.journal = newJournal(this.runId, view.domain.name, view.domain.uuid, `${options.workDir.replace(/\/+$/, '')}/${this.runId}`);
  }

  get domain(): DomainInfo {
    return this.view.domain;
  }
  get domainState(): string {
    return this.view.state;
  }
  private get inactiveXml(): string {
    return this.view.inactiveXml;
  }

  get runDir(): string {
    return this.journal.dir;
  }

  get checkpointName(): string {
    return `vprotect-${this.runId}`;
  }

  /** The plan of every disk, with modes (for tests and reports). */
  get diskStates(): readonly { target: string; mode: string; level: string; reason: string }[] {
    return this.disks.map((d) => ({ target: d.disk.target, mode: d.mode, level: d.plan.level, reason: d.plan.reason }));
  }

  async plan(request: { level: BackupLevel; previous: PreviousPoint | undefined }): Promise<DiskPlan[]> {
    const { hv, domainName } = this;
    // Whatever a killed run of this domain left is finished (its point is durable) or undone first.
    const recovered = await recoverStaleRuns(hv, this.options.workDir, { domain: domainName, previous: request.previous, log: this.ctx.log, listed: this.view.journals });
    if (recovered.length > 0) {
      // The recovery changed the domain (pivoted back, merged overlays): what open() read is stale.
      this.view = await readDomain(hv, domainName, this.options.workDir, this.options.transport === 'netcat');
    }

    const selected = selectDisks(this.domain, this.options);
    this.skipped = selected.skipped;
    for (const s of selected.skipped) this.ctx.log.info(`${domainName} ${s.target}: skipped (${s.reason})`);
    if (selected.refused.length > 0) {
      const r = selected.refused[0]!;
      throw new UsageError(`${domainName} ${r.target}: ${r.reason}`, { hint: r.hint, data: { refused: selected.refused } });
    }
    if (selected.disks.length === 0 && selected.rbd.length === 0) throw new UsageError(`${domainName}: no disk to back up`, { hint: 'check excludeDisks' });
    const running = this.domainState === 'running' || this.domainState === 'paused';
    const rbdPlans = selected.rbd.length > 0 ? await this.planRbd(selected.rbd, request) : [];
    this.hasFileDisks = selected.disks.length > 0;
    const sizes = this.hasFileDisks ? this.diskSizes() : new Map<string, number>();
    const checkpoints = running && this.hasFileDisks ? (this.view.checkpoints ?? (await hv.checkpointNames(domainName))) : [];
    const seen = selected.disks.map((disk) => {
      const size = sizes.get(disk.target);
      if (size === undefined) throw new UnavailableError(`${domainName} ${disk.target}: virsh domblkinfo gave no capacity`);
      const prev = request.previous?.disks.find((d) => d.key === disk.target);
      return { disk, size, chosen: chooseMode(disk, this.options.mode), prev, anchor: asAnchor(prev?.sourceAnchor) };
    });
    // The normal case of an incremental: the previous run left the bitmap in the qcow2 but removed
    // the checkpoint's libvirt metadata (Nova cannot undefine a domain with checkpoints); libvirt
    // needs it back to read the bitmap and to parent the new checkpoint.
    const toRedefine = new Map<string, string>();
    for (const { chosen, anchor } of seen) {
      if (running && chosen.mode === 'checkpoint' && anchor?.mode === 'checkpoint' && anchor.domainUuid === this.domain.uuid && !checkpoints.includes(anchor.checkpoint)) toRedefine.set(anchor.checkpoint, anchor.checkpointXml);
    }
    const decide = (known: string[], redefineFailures: ReadonlyMap<string, string>): DiskState[] => {
      const plans: DiskState[] = rbdPlans.map((p) => ({ ...p }));
      for (const { disk, size, chosen, prev, anchor } of seen) {
        const redefineFailure = anchor?.mode === 'checkpoint' ? redefineFailures.get(anchor.checkpoint) : undefined;
        const decision = decideLevel(
          {
            disk,
            mode: chosen.mode,
            modeReason: running ? chosen.reason : 'domain not running: its files are read as they are',
            size,
            running,
            previous: prev ? { size: prev.size, anchor } : undefined,
            domainUuid: this.domain.uuid,
            checkpoints: known,
            ...(redefineFailure !== undefined ? { redefineFailure } : {}),
          },
          request.level,
        );
        plans.push({
          disk,
          mode: running ? chosen.mode : 'offline',
          plan: { key: disk.target, size, sourceFormat: `${disk.format ?? 'raw'} ${disk.type}`, level: decision.level, reason: decision.reason },
          previousAnchor: anchor,
        });
      }
      // One level for the point (as the engine does), decided now: the backup job's XML needs it.
      const unified = unifyLevels(plans.map((p) => p.plan));
      plans.forEach((p, i) => (p.plan = unified[i]!));
      // An incremental checkpoint job reads every disk against ONE checkpoint.
      const bases = new Set(plans.filter((p) => p.mode === 'checkpoint' && p.plan.level === 'incremental').map((p) => (p.previousAnchor as { checkpoint: string }).checkpoint));
      if (bases.size > 1) {
        for (const p of plans) p.plan = { ...p.plan, level: 'full', reason: `disks were checkpointed at different points (${[...bases].join(', ')}); ${p.plan.reason}` };
      }
      // Keep the domain's disk order in reports and the manifest.
      const order = this.domain.disks.map((d) => d.target);
      plans.sort((a, b) => order.indexOf(a.disk.target) - order.indexOf(b.disk.target));
      return plans;
    };
    // The common case, qcow2 disks of a running domain only: the plan as it will be when every
    // redefine succeeds. Its snapshot journal and job files then go in the same round trip as the
    // run directory (the snapshot needs no shell round trip of its own); a failed redefine
    // changes the plan, and the snapshot writes them again.
    // The journal then says "snapshot" (with the job) before the redefines and backup-begin:
    // recovery copes (the job is ended only when its XML carries this run's mark, a checkpoint
    // that was never made is skipped).
    const expected = running && rbdPlans.length === 0 && seen.every((d) => d.chosen.mode === 'checkpoint') ? decide([...checkpoints, ...toRedefine.keys()], new Map()) : undefined;
    const early = expected ? await this.snapshotSteps(expected) : [];
    const redefineFailures = this.hasFileDisks ? await this.prepareRunDir(toRedefine, checkpoints, early) : new Map<string, string>();
    const plans = expected && redefineFailures.size === 0 ? expected : decide(checkpoints, redefineFailures);
    this.snapshotWritten = plans === expected;
    this.disks = plans;
    return plans.map((p) => p.plan);
  }

  /** The RBD disks' plans, from the ceph-rbd session (its anchors are RBD snapshots). */
  private async planRbd(disks: DomainDisk[], request: { level: BackupLevel; previous: PreviousPoint | undefined }): Promise<DiskState[]> {
    this.rbd = await openRbdDisks({ target: this.target, ctx: this.ctx, hv: this.hv, disks, options: this.options.rbd, domain: this.domainName });
    const keys = new Set(disks.map((d) => d.target));
    const previous = request.previous ? { ...request.previous, disks: request.previous.disks.filter((d) => keys.has(d.key)) } : undefined;
    const plans = await this.rbd.plan({ level: request.level, previous });
    return plans.map((plan) => {
      const disk = disks.find((d) => d.target === plan.key)!;
      this.ctx.log.debug(`${this.domainName} ${plan.key}: RBD disk ${disk.rbd!.pool}/${disk.rbd!.image} (ceph-rbd): ${plan.level}, ${plan.reason}`);
      return { disk, mode: 'rbd' as const, plan: { ...plan, reason: `${plan.reason}; RBD disk ${disk.rbd!.pool}/${disk.rbd!.image}: RBD snapshot` }, previousAnchor: undefined };
    });
  }

  private diskSizes(): Map<string, number> {
    const r = this.view.blkinfo;
    if (r.code !== 0) throw this.hv.virshError(['domblkinfo', this.domainName, '--all'], r);
    const m = new Map<string, number>();
    for (const line of r.stdout.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 2 && /^\d+$/.test(f[1]!)) m.set(f[0]!, Number(f[1]));
    }
    return m;
  }

  /**
   * One round trip to the shell: the run directory, the journal (naming the checkpoints about to
   * be redefined, so that a killed run does not leave their metadata behind), the checkpoint XML
   * files, and `more` (the snapshot's job files); once that succeeded, one round trip to virsh:
   * the redefines (`--redefine-validate`: libvirt checks the bitmaps really are in the images).
   * `checkpoints` gains the redefined names; returns libvirt's reason for each redefine that failed.
   */
  private async prepareRunDir(toRedefine: Map<string, string>, checkpoints: string[], more: Step[]): Promise<Map<string, string>> {
    const { hv, domainName } = this;
    if (toRedefine.size) this.journal.redefined = [...toRedefine.keys()];
    const steps: Step[] = [{ argv: hv.makeRunDirArgv(this.runDir) }, journalStep(this.journal)];
    const redefines: { name: string; command: string[] }[] = [];
    for (const [name, xml] of toRedefine) {
      const file = `${this.runDir}/redefine-${name}.xml`;
      steps.push(writeFileStep(file, checkpointForRedefine(xml)));
      redefines.push({ name, command: ['checkpoint-create', domainName, file, '--redefine', '--redefine-validate'] });
    }
    steps.push(...more);
    const r = await runBatch(hv, steps, { signal: null });
    if (r[0]!.code !== 0) throw new UnavailableError(`could not create the run directory ${this.runDir} on ${hv.name}: ${r[0]!.stderr.trim() || 'not run'}`, { hint: `check workDir (${this.options.workDir}): its parent must exist or be creatable, and vmUser (${hv.vmUser}) must exist` });
    for (let i = 1; i < steps.length; i++) {
      if (steps[i]!.mayFail || r[i]!.code === 0) continue;
      throw new UnavailableError(`could not write ${i === 1 ? 'the run journal' : 'a checkpoint or job XML'} in ${this.runDir} on ${hv.name}: ${r[i]!.stderr.trim() || 'not run'}`);
    }
    const failures = new Map<string, string>();
    const results = await hv.virshEach(redefines.map((d) => d.command), { signal: null });
    redefines.forEach(({ name }, i) => {
      const res = results[i]!;
      if (res.code === 0) {
        this.ctx.log.debug(`${domainName}: checkpoint ${name} redefined from the repository`);
        checkpoints.push(name);
      } else failures.set(name, hv.virshError(['checkpoint-create'], res).message.replace(/^virsh checkpoint-create on \S+ failed: /, ''));
    });
    return failures;
  }

  private get checkpointDisks(): DiskState[] {
    return this.disks.filter((d) => d.mode === 'checkpoint');
  }
  private get overlayDisks(): DiskState[] {
    return this.disks.filter((d) => d.mode === 'snapshot');
  }

  private get rbdDisks(): DiskState[] {
    return this.disks.filter((d) => d.mode === 'rbd');
  }

  async snapshot(point?: { pointId: string }): Promise<ConsistencyReport> {
    const { hv, domainName } = this;
    const policy = this.ctx.policy;
    const hooks: NonNullable<ConsistencyReport['hooks']> = [];
    const running = this.disks.some((d) => d.mode !== 'offline' && d.mode !== 'rbd') || (this.rbdDisks.length > 0 && (this.domainState === 'running' || this.domainState === 'paused'));
    if (!running) {
      // Nothing runs, nothing changes: the files (and images) are consistent as they are.
      if (this.rbd) await this.rbd.snapshot(point);
      return { level: 'crash', note: `domain ${this.domainState}: disks read as they are on the hypervisor (shut down cleanly, they are consistent)` };
    }
    let level: ConsistencyReport['level'] = 'crash';
    let note: string | undefined;
    try {
      for (const h of checkHooks(policy?.hooks?.preSnapshot)) hooks.push(await runHook(hv, domainName, h, 'pre', this.ctx.log));
      const freeze = await freezeGuest(hv, domainName, this.domain.guestAgentChannel, policy?.quiesce);
      this.frozen = freeze.frozen;
      level = freeze.level;
      note = freeze.note;
      const how = await this.takeSnapshot(point);
      if (how) note = note ? `${note}; ${how}` : how;
    } finally {
      if (this.frozen) {
        await thawGuest(hv, domainName).catch((e: unknown) => this.ctx.log.error(`could not thaw ${domainName}: ${errorMessage(e)} — run: virsh domfsthaw ${domainName}`));
        this.frozen = false;
      }
      // Post hooks run even when the snapshot failed: they undo what the pre hooks did.
      for (const h of checkHooks(policy?.hooks?.postSnapshot)) {
        try {
          hooks.push(await runHook(hv, domainName, h, 'post', this.ctx.log));
        } catch (err) {
          if (this.snapshotTaken) throw err;
          this.ctx.log.warn(errorMessage(err));
        }
      }
    }
    if (level === 'crash' && policy?.quiesce && policy.quiesce !== 'off') this.ctx.log.warn(`${domainName}: ${note ?? 'not quiesced'}`);
    const appHooks = hooks.some((h) => h.phase === 'pre' && h.ok);
    return { level: appHooks ? 'app' : level, ...(note ? { note } : {}), ...(hooks.length ? { hooks } : {}) };
  }

  /**
   * One point in time for every disk: overlays, RBD snapshots and the backup job, with the
   * domain paused around them when there are several (atomic). Returns what to say about it.
   */
  private async takeSnapshot(point?: { pointId: string }): Promise<string | undefined> {
    const { hv, domainName } = this;
    const cpDisks = this.checkpointDisks;
    const ovDisks = this.overlayDisks;
    const rbdCount = this.rbdDisks.length;
    for (const d of ovDisks) d.overlay = overlayRecord(d.disk, this.runId);
    if (ovDisks.length) this.journal.overlays = ovDisks.map((d) => d.overlay!);
    const jobSteps = this.snapshotWritten ? [] : await this.snapshotSteps(this.disks);
    const jobFiles = cpDisks.length ? this.jobPaths : undefined;
    // The journal first (it announces the job, checkpoint and overlays), then the job's files —
    // unless the plan's round trip wrote them already.
    const prepare: Step[] = this.hasFileDisks && !this.snapshotWritten ? [journalStep(this.journal), ...jobSteps] : [];
    // Separate calls (overlays, each RBD snapshot, the backup job) must see the same instant.
    const calls = (cpDisks.length > 0 ? 1 : 0) + (ovDisks.length > 0 ? 1 : 0) + rbdCount;
    const pause = this.options.atomic && calls > 1;
    if (jobFiles && calls === 1) {
      // The common case (qcow2 disks only): everything in one command batch.
      await this.beginJobInOneBatch(prepare, jobFiles);
      return undefined;
    }
    await this.runChecked(prepare, 'preparing the snapshot');
    const started = Date.now();
    try {
      if (pause) {
        // Two libvirt calls must see the same instant: nothing runs in the guest in between.
        await hv.virsh(['suspend', domainName]);
        this.suspended = true;
      }
      // Overlays first: a pull backup job holds the domain's async job until it ends, and
      // libvirt refuses a snapshot while it runs ("cannot acquire state change lock").
      if (ovDisks.length) {
        const others = this.domain.disks.filter((d) => !ovDisks.some((o) => o.disk.target === d.target) && d.device === 'disk').map((d) => d.target);
        await hv.virsh(snapshotArgs(domainName, this.runId, ovDisks.map((d) => d.overlay!), others, false), { timeoutMs: 300_000 });
      }
      // RBD snapshots (rbd snap create on the running image: librbd flushes qemu's cache first).
      if (this.rbd) await this.rbd.snapshot(point);
      if (jobFiles) {
        await hv.virsh(['backup-begin', domainName, jobFiles.job, jobFiles.checkpoint]);
      }
      this.snapshotTaken = true;
    } finally {
      if (this.suspended) {
        await hv.virsh(['resume', domainName], { signal: null });
        this.suspended = false;
      }
    }
    const spanMs = Date.now() - started;
    if (cpDisks.length) this.newCheckpointXml = await dumpCheckpoint(hv, domainName, this.checkpointName);
    if (calls <= 1) return undefined;
    const what = `${calls} snapshot calls (${[cpDisks.length ? 'backup job' : '', ovDisks.length ? 'overlays' : '', rbdCount ? `${rbdCount} RBD snapshot(s)` : ''].filter(Boolean).join(', ')})`;
    return pause ? `${what} made with the domain paused for ${spanMs} ms: one instant for all disks` : `${what} made one after the other within ${spanMs} ms (atomic: false): each disk is crash-consistent on its own`;
  }

  /**
   * The journal and the job files in one round trip to the shell; once they are written,
   * backup-begin and checkpoint-dumpxml in one round trip to virsh. The job started exactly when
   * the new checkpoint exists (backup-begin creates both at once).
   */
  private async beginJobInOneBatch(prepare: Step[], paths: { job: string; checkpoint: string }): Promise<void> {
    const { hv, domainName } = this;
    const begin = ['backup-begin', domainName, paths.job, paths.checkpoint];
    const dump = ['checkpoint-dumpxml', domainName, this.checkpointName, '--no-domain'];
    await this.runChecked(prepare, 'preparing the snapshot');
    // With a session to open early, backup-begin goes on its own: once it answered the export
    // exists, and the session opens while checkpoint-dumpxml runs and the engine writes the
    // point's metadata. Otherwise both in one round trip.
    const early = this.earlyDisk();
    let [begun, dumped] = (await hv.virshEach(early ? [begin] : [begin, dump])) as [StepResult, StepResult | undefined];
    if (begun.code !== 0) throw hv.virshError(begin, begun);
    this.snapshotTaken = true;
    if (early) {
      this.openEarly(early);
      [dumped] = (await hv.virshEach([dump])) as [StepResult];
    }
    if (!dumped) throw new Error('checkpoint-dumpxml was not run');
    if (dumped.code !== 0 || !dumped.stdout.includes(`<name>${this.checkpointName}</name>`)) throw hv.virshError(dump, { ...dumped, code: dumped.code || 1 });
    this.newCheckpointXml = dumped.stdout;
  }

  /** Whether the plan's round trip wrote the snapshot's journal and job files (the plan did not change after). */
  private snapshotWritten = false;

  /**
   * The snapshot's journal entries for the checkpoint disks of `disks` (the checkpoint the job
   * creates, the previous one, the job; phase snapshot) and the job's files as steps. Called by
   * the plan for the outcome it expects, and by the snapshot: same disks, same files.
   */
  private async snapshotSteps(disks: DiskState[]): Promise<Step[]> {
    const cpDisks = disks.filter((d) => d.mode === 'checkpoint');
    this.journal.phase = 'snapshot';
    if (cpDisks.length === 0) return [];
    const previousCheckpoint = [...new Set(cpDisks.map((d) => (d.previousAnchor?.mode === 'checkpoint' ? d.previousAnchor.checkpoint : undefined)).filter((x): x is string => !!x))];
    this.journal.checkpoint = { name: this.checkpointName, ...(previousCheckpoint[0] ? { previous: previousCheckpoint[0] } : {}) };
    this.journal.job = true;
    return this.jobFiles(cpDisks);
  }

  /** Runs steps as one batch; the first failure is an error naming `what`. */
  private async runChecked(steps: Step[], what: string): Promise<void> {
    if (steps.length) this.checkSteps(steps, await runBatch(this.hv, steps, { signal: null }), what);
  }

  private checkSteps(steps: Step[], r: StepResult[], what: string): void {
    steps.forEach((step, i) => {
      const res = r[i]!;
      if (step.mayFail || res.code === 0) return;
      throw new UnavailableError(`${what} on ${this.hv.name} failed: ${res.stderr.trim().slice(-500) || (res.code === undefined ? 'the command did not run' : `exit status ${res.code}`)}`);
    });
  }

  /** Where the job and checkpoint XML go in the run directory. */
  private get jobPaths(): { job: string; checkpoint: string } {
    return { job: `${this.runDir}/backup.xml`, checkpoint: `${this.runDir}/checkpoint.xml` };
  }

  /** The job and checkpoint XML as file writes into the run directory (jobPaths). */
  private async jobFiles(cpDisks: DiskState[]): Promise<Step[]> {
    const incremental = cpDisks.find((d) => d.plan.level === 'incremental' && d.previousAnchor?.mode === 'checkpoint')?.previousAnchor as { checkpoint: string } | undefined;
    const jobDisks: JobDisk[] = cpDisks.map((d) => ({
      target: d.disk.target,
      mode: d.plan.level === 'incremental' && incremental ? 'incremental' : 'full',
      scratch: `${this.runDir}/${d.disk.target}.scratch`,
      bitmap: true,
    }));
    const others = this.domain.disks.filter((d) => d.device === 'disk' && !cpDisks.some((c) => c.disk.target === d.target)).map((d) => d.target);
    // One server for the run: the plan and the snapshot may both write the job's XML.
    this.jobServer ??= await this.nbdServerFor('job');
    const job = backupJobXml({ ...(incremental ? { incremental: incremental.checkpoint } : {}), server: this.jobServer, disks: jobDisks, otherDisks: others });
    const cp = checkpointXml(
      this.checkpointName,
      [...jobDisks.map((d) => ({ target: d.target, bitmap: true })), ...others.map((t) => ({ target: t, bitmap: false }))],
      `vprotect ${this.runId} (${this.target.vmName})`,
    );
    const paths = this.jobPaths;
    return [writeFileStep(paths.job, job, '0644'), writeFileStep(paths.checkpoint, cp, '0644')];
  }

  private jobServer: NbdServer | undefined;
  private usedPorts = new Set<number>();

  /** A unix socket in the run dir (ssh transport) or a free TCP port of the hypervisor's netcat range. */
  private async nbdServerFor(name: string): Promise<NbdServer> {
    if (this.options.transport === 'ssh') return { transport: 'unix', socket: `${this.runDir}/${name}.sock` };
    const nc = this.hv.config.netcat;
    if (!nc) throw new UsageError(`transport netcat needs netcat.ports for hypervisor ${this.hv.name} in the inventory`);
    const [lo, hi] = nc.ports.split('-').map(Number) as [number, number | undefined];
    // Asked once per run (with open's journal listing); ports this run took are in usedPorts.
    const listening = (this.view.listening ??= listeningPorts((await this.hv.exec(['ss', '-Htln'], { signal: null })).stdout));
    for (let p = lo; p <= (hi ?? lo); p++) {
      if (!listening.has(p) && !this.usedPorts.has(p)) {
        this.usedPorts.add(p);
        return { transport: 'tcp', host: nc.address ?? this.hv.config.address, port: p };
      }
    }
    throw new UnavailableError(`no free port in ${nc.ports} on ${this.hv.name} for the NBD data channel`);
  }

  private dialer(server: NbdServer, level: DiskPlan['level'], streamed: boolean): NbdDialer {
    // An incremental moves little data: the OpenSSH data channel's own start (a second SSH
    // handshake, 0.5-0.8 s here) costs more than its lower CPU per byte saves, so ssh2 carries it.
    // With the data stream, NBD carries block status and the first reads only: ssh2 too.
    if (server.transport === 'unix') return this.hv.conn.nbdDialer({ path: server.socket }, { dataChannel: level === 'full' && !streamed ? 'auto' : 'ssh2' });
    return () => connectSocketChannel({ host: server.host, port: server.port });
  }

  /**
   * The one-way data stream for this disk's reads (src/transport/stream): a full starts it at
   * once (its SSH handshake overlaps the NBD session's), an incremental only once enough data
   * is asked for (dataChannel auto). Undefined for netcat and dataChannel nbd, and for auto
   * when an earlier disk found no interpreter on this connection's host (`known` says why):
   * that disk reads through NBD as before the stream (dialer and pacing), with no ssh started.
   * dataChannel stream requires it: a stream that cannot start fails the disk.
   */
  private streamFor(server: NbdServer, plan: DiskPlan): { stream: () => DataStream; started: () => DataStream | undefined; early: boolean } | { known: string } | undefined {
    if (server.transport !== 'unix' || this.options.dataChannel === 'nbd') return undefined;
    const required = this.options.dataChannel === 'stream';
    const known = required ? undefined : knownStreamFallback(this.hv.conn, this.options.python);
    if (known) return { known };
    let stream: DataStream | undefined;
    return {
      started: () => stream,
      stream: () =>
        (stream ??= new DataStream(this.hv.conn, {
          socket: server.socket,
          exportName: plan.key,
          interpreter: this.options.python,
          required,
          log: this.ctx.log,
          ...(this.ctx.signal ? { signal: this.ctx.signal } : {}),
        })),
      early: plan.level === 'full' || required,
    };
  }

  private sessionOptions(server: NbdServer, target: string, contexts: readonly string[]): NbdSessionOptions {
    return { exportName: target, metaContexts: contexts, connections: server.transport === 'tcp' ? 2 : 1, log: this.ctx.log };
  }

  /** The disk whose NBD session opens during the snapshot: the first checkpoint disk of an incremental read through NBD. */
  private earlyDisk(): DiskState | undefined {
    const first = this.checkpointDisks[0];
    return first && first.plan.level === 'incremental' && this.options.dataChannel !== 'stream' ? first : undefined;
  }

  /** The first checkpoint disk's NBD session, opening since backup-begin answered; its read takes it. */
  private early: { target: string; opening: Promise<NbdSession> } | undefined;

  /**
   * Opens the first checkpoint disk's NBD session now, as its read would first thing (an
   * incremental: no data stream starts before it, ssh2 or TCP carries it). Over TCP the
   * handshakes wait on qemu's delayed ACKs (~0.1 s); they now pass while the snapshot finishes.
   */
  private openEarly(first: DiskState): void {
    const target = first.disk.target;
    // What readDisk would open for it: the job's export, its contexts, the incremental's dialer.
    const opening = NbdSession.open(this.dialer(this.jobServer!, 'incremental', false), this.sessionOptions(this.jobServer!, target, jobContexts(target, 'incremental')));
    // Its failure is the read's (which awaits it), or nobody's when the run ends before reading.
    opening.catch(() => undefined);
    this.early = { target, opening };
  }

  private takeEarly(target: string): Promise<NbdSession> | undefined {
    const early = this.early?.target === target ? this.early.opening : undefined;
    if (early) this.early = undefined;
    return early;
  }

  read(plan: DiskPlan): AsyncIterable<Extent> {
    const state = this.disks.find((d) => d.disk.target === plan.key);
    if (!state) throw new UsageError(`disk ${plan.key} was not planned`);
    if (state.mode === 'rbd') return this.rbd!.read(plan);
    return this.readDisk(state, plan);
  }

  /** RBD disks: rbd writes their incremental into the point itself, where ceph-rbd can. */
  toolDiff(plan: DiskPlan): ToolDiff | undefined {
    const state = this.disks.find((d) => d.disk.target === plan.key);
    return state?.mode === 'rbd' ? this.rbd!.toolDiff?.(plan) : undefined;
  }

  private async *readDisk(state: DiskState, plan: DiskPlan): AsyncGenerator<Extent> {
    const signal = this.ctx.signal;
    const counters = newCounters();
    const target = state.disk.target;
    let session: NbdSession | undefined;
    let switching: SwitchingSource | undefined;
    let pidFile: string | undefined;
    let streamOfDisk: { started: () => DataStream | undefined } | undefined;
    try {
      let contexts: readonly string[];
      let server: NbdServer;
      if (state.mode === 'checkpoint') {
        server = this.jobServer!;
        contexts = jobContexts(target, plan.level);
      } else {
        // qemu-nbd on the frozen file: the overlay's base in snapshot mode, the disk itself offline.
        const file = state.mode === 'snapshot' ? state.overlay!.frozen : state.disk.path!;
        const format = state.mode === 'snapshot' ? frozenFormat(state) : ((state.disk.format ?? 'raw') as 'qcow2' | 'raw');
        server = await this.nbdServerFor(`${target}.nbd`);
        pidFile = `${this.runDir}/${target}.nbd.pid`;
        this.journal.nbdPidFiles = [...(this.journal.nbdPidFiles ?? []), pidFile];
        await writeJournal(this.hv, this.journal);
        const depth = plan.level === 'incremental';
        await startQemuNbd(this.hv, { file, format, exportName: target, server, pidFile, allocationDepth: depth });
        contexts = depth ? DEPTH_READ_CONTEXTS : FULL_READ_CONTEXTS;
      }
      const planned = this.streamFor(server, plan);
      const known = planned && 'known' in planned ? planned.known : undefined;
      const stream = planned && 'stream' in planned ? planned : undefined;
      streamOfDisk = stream;
      if (stream?.early) stream.stream();
      const early = this.takeEarly(target);
      session = await (early ?? NbdSession.open(this.dialer(server, plan.level, stream !== undefined), this.sessionOptions(server, target, contexts)));
      this.ctx.log.debug(`${this.domainName} ${target}: NBD session open (${server.transport}${early ? ', opened during the snapshot' : ''})`);
      if (session.info.size !== plan.size) throw new UnavailableError(`${this.domainName} ${target}: the NBD export is ${session.info.size} bytes, libvirt said ${plan.size}`);
      let source: NbdSource = session;
      if (stream) {
        switching = new SwitchingSource(session, () => stream.stream().use(plan.size), {
          startAfterBytes: stream.early ? 0 : STREAM_AFTER_BYTES,
          firstBytesWhileStarting: 8 * 1024 * 1024,
          pacing: STREAM_PACING,
        });
        if (stream.early) switching.start();
        source = switching;
      }
      // reuseBuffers: the engine's point writer is done with an extent when it asks for the next
      // (contract.ts); fresh multi-MiB buffers cost a page fault per 4 KiB on this kind of VM.
      const opts = { signal, counters, reuseBuffers: true };
      if (plan.level === 'full') yield* readFull(source, opts);
      else if (state.mode === 'checkpoint') yield* readDirty(source, jobBitmapName(target), opts);
      else yield* readAllocationDepth(source, opts);
      if (switching) await switching.finish();
      const fallback = known ?? stream?.started()?.fallbackReason;
      // The report carries the disk's reason (the engine reads plan.reason after the read).
      if (fallback) plan.reason = `${plan.reason}; read through NBD: ${fallback}`;
      this.ctx.log.debug(`${this.domainName} ${target}: read`, { ...counters, ...(switching ? { via: switching.served } : {}) });
      if (state.mode === 'checkpoint') {
        await session.close().catch(() => session!.destroy());
        session = undefined;
        this.jobDisksRead.add(target);
        if (this.jobDisksRead.size === this.checkpointDisks.length) this.endJobEarly();
      }
    } finally {
      // The stream is started before the NBD session opens (a full), so the open or the size
      // check can throw before `switching` exists: close what was started in every path, or the
      // ssh child (its own process group) and the helper run on until the NBD server goes, and
      // the stream's private directory and abort listener are never released. Both closes are
      // idempotent; each is waited for even when the other fails.
      const started = streamOfDisk?.started();
      for (const r of await Promise.allSettled([switching?.close(), started?.close()])) {
        if (r.status === 'rejected') this.ctx.log.warn(`stopping the data stream of ${target}: ${errorMessage(r.reason)}`);
      }
      if (session) await session.close().catch(() => session!.destroy());
      if (pidFile) await stopQemuNbd(this.hv, pidFile).catch((e: unknown) => this.ctx.log.warn(`stopping qemu-nbd of ${target}: ${errorMessage(e)}`));
    }
  }

  /** Checkpoint-mode disks whose export was read to the end. */
  private readonly jobDisksRead = new Set<string>();
  /** The backup job being ended once every export was read (commit and abort wait for it). */
  private jobEnding: Promise<void> | undefined;

  /**
   * Every export of the backup job was read: the job (its NBD server, copy-before-write scratch
   * files) can end now, while the repository makes the point durable — instead of after, in
   * commit. The new checkpoint does not depend on the job; commit and abort still drop
   * checkpoints as before, and the journal keeps `job` until this succeeded.
   */
  private endJobEarly(): void {
    if (this.jobEnding) return;
    // Only a job that is still our own (its XML names the run directory) is aborted: by now ours
    // may have ended, and domjobabort would abort whatever job runs instead (a migration, a save,
    // Nova's). The backup-dumpxml that tells costs one round trip in the persistent virsh.
    this.jobEnding = this.hv.endOwnBackupJob(this.domainName, this.runDir).then(
      () => {
        this.journal.job = false;
      },
      (err: unknown) => this.ctx.log.debug(`${this.domainName}: ending the backup job early failed (commit ends it): ${errorMessage(err)}`),
    );
  }

  sourceAnchor(plan: DiskPlan): unknown {
    const state = this.disks.find((d) => d.disk.target === plan.key)!;
    // RBD disks: the ceph-rbd anchor (cluster, fsid, image id, snapshot id), which its plan checks.
    if (state.mode === 'rbd') return this.rbd!.sourceAnchor(plan);
    const base = { strategy: 'libvirt-ssh' as const, domainUuid: this.domain.uuid };
    if (state.mode === 'checkpoint' && this.newCheckpointXml) {
      return { ...base, mode: 'checkpoint', checkpoint: this.checkpointName, checkpointXml: this.newCheckpointXml, path: state.disk.path! };
    }
    if (state.mode === 'snapshot' && state.overlay) return { ...base, mode: 'snapshot', overlay: state.overlay.overlay, path: state.disk.path! };
    return { ...base, mode: 'none', reason: `domain was ${this.domainState}`, ...(state.disk.path ? { path: state.disk.path } : {}) };
  }

  async metadata(): Promise<MetadataFile[]> {
    const disks = this.disks.map((d) => ({
      target: d.disk.target,
      device: d.disk.device,
      type: d.disk.type,
      format: d.disk.format ?? null,
      path: d.disk.path ?? null,
      ...(d.disk.rbd ? { rbd: `${d.disk.rbd.pool}/${d.disk.rbd.image}` } : {}),
      backing: d.disk.backing,
      mode: d.mode,
      level: d.plan.level,
      reason: d.plan.reason,
    }));
    return [
      ...(this.rbd ? await this.rbd.metadata() : []),
      { name: 'domain.xml', content: this.inactiveXml },
      {
        name: 'libvirt.json',
        content: `${JSON.stringify({ hypervisor: this.hv.name, domain: this.domainName, uuid: this.domain.uuid, state: this.domainState, runId: this.runId, disks, skipped: this.skipped }, null, 2)}\n`,
      },
    ];
  }

  async commit(): Promise<void> {
    let fileError: unknown;
    if (this.hasFileDisks) {
      try {
        this.journal.phase = 'committing';
        // The journal that says "committing" is written (shell) while the backup job ends (virsh):
        // both before anything is dropped, neither waits for the other.
        await Promise.all([this.jobEnding, startCommit(this.hv, this.journal)]);
        await dropRun(this.hv, this.journal, { running: this.domainState === 'running' || this.domainState === 'paused' });
      } catch (err) {
        fileError = err;
      }
    } else await this.jobEnding;
    this.finished = true;
    // The RBD side rotates its snapshots even when the file side failed: both points are durable.
    if (this.rbd) await this.rbd.commit();
    if (fileError) throw fileError;
  }

  async abort(reason: unknown): Promise<void> {
    if (this.finished) return;
    if (!(reason instanceof InterruptedError)) this.ctx.log.debug(`undoing ${this.runId} on ${this.hv.name}`, { reason: errorMessage(reason) });
    const { hv, domainName } = this;
    const problems: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${errorMessage(err)}`);
      }
    };
    await this.jobEnding;
    if (this.suspended) await step('resume', () => hv.virsh(['resume', domainName], { signal: null }));
    if (this.frozen) await step('thaw', () => thawGuest(hv, domainName));
    if (this.rbd) await step('remove the RBD snapshots', () => this.rbd!.abort(reason));
    if (this.hasFileDisks) await step('undo the run', () => rollbackRun(hv, this.journal, { running: this.domainState === 'running' || this.domainState === 'paused' }));
    this.finished = true;
    if (problems.length) {
      throw new UnavailableError(`could not undo everything on ${hv.name}: ${problems.join('; ')}`, { hint: `run \`vprotect cleanup\`, or see ${this.runDir}/journal.json on ${hv.name}` });
    }
  }

  async close(): Promise<void> {
    // An early session nobody read (the run failed or was interrupted before): closed here, before the SSH connection goes.
    const unread = this.early;
    this.early = undefined;
    await unread?.opening.then((s) => s.destroy(), () => undefined);
    try {
      await this.rbd?.close();
    } finally {
      await this.hv.closeProcesses().catch((e: unknown) => this.ctx.log.debug(`ending the persistent processes on ${this.hv.name}: ${errorMessage(e)}`));
      await this.borrowed.release();
    }
  }
}

/** Local ports in LISTEN state from `ss -Htln`. */
function listeningPorts(ssOutput: string): Set<number> {
  return new Set(
    ssOutput
      .split('\n')
      .map((l) => Number(/:(\d+)\s/.exec(l)?.[1]))
      .filter((n) => n > 0),
  );
}

/** The format of the frozen file of snapshot mode: the disk's own format, or qcow2 for a kept overlay. */
function frozenFormat(state: DiskState): 'qcow2' | 'raw' {
  if (state.overlay?.commitInto) return 'qcow2';
  return (state.disk.format ?? 'raw') as 'qcow2' | 'raw';
}

/** What a checkpoint disk's read asks the backup job's export for. */
function jobContexts(target: string, level: DiskPlan['level']): readonly string[] {
  return level === 'incremental' ? dirtyReadContexts(jobBitmapName(target)) : FULL_READ_CONTEXTS;
}
