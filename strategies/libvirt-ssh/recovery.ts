/**
 * Finishing or undoing a run from its journal — the same code for a run's own commit/abort,
 * for the next run of a domain after a killed one, and for `vprotect cleanup`.
 *
 * A killed run is rolled FORWARD when its point became durable (the previous point's anchor
 * names this run's checkpoint or overlay, or the journal says it was committing): the old
 * anchor is dropped as commit would have. Otherwise it is rolled BACK: the job ended, the new
 * checkpoint deleted, the new overlays merged back. Each step is idempotent, so a cleanup that
 * is itself interrupted can simply run again.
 */
import { errorMessage } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import type { PreviousPoint } from '../../src/strategy/contract.js';
import { deleteCheckpoint } from './checkpoint-mode.js';
import type { Hypervisor } from './hypervisor.js';
import { UnavailableError } from '../../src/errors.js';
import { newBoundary, runBatch, virshMultiArgv, type Step } from './batch.js';
import { journalStep, listJournals, ownerMayBeAlive, type Journal, type ListedJournal } from './journal.js';
import { asAnchor } from './plan.js';
import { stopQemuNbd, stopQemuNbdArgv } from './qemu-nbd.js';
import { commitFrozenOverlay, rollbackOverlay } from './snapshot-mode.js';

/** Ends the domain's backup job if it is the one this run started (its files are in the run dir). */
async function endOwnJob(hv: Hypervisor, j: Journal): Promise<void> {
  if (!j.job) return;
  const xml = await hv.backupJobXml(j.domain);
  if (xml !== undefined && xml.includes(j.dir)) await hv.abortJob(j.domain);
}

async function stopServers(hv: Hypervisor, j: Journal): Promise<void> {
  for (const pid of j.nbdPidFiles ?? []) await stopQemuNbd(hv, pid);
}

async function isRunning(hv: Hypervisor, domain: string): Promise<boolean> {
  const s = await hv.domainState(domain);
  return s === 'running' || s === 'paused';
}

/** The checkpoints before this run's own: the previous point's, and any this run redefined. */
function olderCheckpoints(j: Journal): string[] {
  return [...new Set([...(j.checkpoint?.previous ? [j.checkpoint.previous] : []), ...(j.redefined ?? [])])].filter((n) => n !== j.checkpoint?.name);
}

/**
 * Commit: the point is durable; drop the previous anchors and the run's files. The older
 * checkpoints go with their bitmaps (nothing will be read against them again); the new one
 * loses its libvirt metadata only — its bitmap stays in the qcow2 for the next incremental,
 * which redefines it from the anchor. No checkpoint metadata may stay between backups: Nova
 * undefines domains without VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA and libvirt refuses that.
 * libvirt deletes bitmaps only of a running domain: otherwise the old bitmaps stay (harmless,
 * `qemu-img bitmap --remove` by hand).
 */
export async function finishRun(hv: Hypervisor, j: Journal, opts: { running: boolean; writeJournalFirst?: boolean }): Promise<void> {
  // One command batch for everything but overlay merges (blockcommit is long and watched step by step).
  const steps: { step: Step; what: string }[] = [];
  if (opts.writeJournalFirst) steps.push({ step: journalStep(j), what: 'writing the run journal' });
  if (j.job) steps.push({ step: { argv: hv.endOwnBackupJobArgv(j.domain, j.dir) }, what: 'ending the backup job' });
  for (const pid of j.nbdPidFiles ?? []) steps.push({ step: { argv: stopQemuNbdArgv(pid), mayFail: true }, what: 'stopping qemu-nbd' });
  // Older checkpoints with their bitmaps first, then the new one's metadata only.
  const deletes = [...olderCheckpoints(j).map((name) => ({ name, metadataOnly: !opts.running })), ...(j.checkpoint ? [{ name: j.checkpoint.name, metadataOnly: true }] : [])];
  const deleteArgs = deletes.map((d) => ['checkpoint-delete', j.domain, d.name, ...(d.metadataOnly ? ['--metadata'] : [])]);
  // All in one virsh process; any complaint (a checkpoint already gone, …) and they run again
  // one by one below, where an absent checkpoint is fine and any other error is libvirt's own.
  if (deleteArgs.length) steps.push({ step: { argv: ['sh', '-c', 'e=$("$@" 2>&1 >/dev/null); [ -z "$e" ] || { printf "%s\\n" "$e" >&2; exit 1; }', 'sh', ...virshMultiArgv(hv, deleteArgs, newBoundary())] }, what: 'deleting checkpoints' });
  const overlays = j.overlays ?? [];
  if (overlays.length === 0) steps.push({ step: { argv: ['rm', '-rf', '--', j.dir] }, what: `removing ${j.dir}` });
  const results = await runBatch(hv, steps.map((s) => s.step), { signal: null });
  let deletesDone = deleteArgs.length === 0;
  let dirRemoved = false;
  steps.forEach((s, i) => {
    const r = results[i]!;
    if (s.what === 'deleting checkpoints') deletesDone = r.code === 0;
    else if (s.what.startsWith('removing')) dirRemoved = r.code === 0;
    if (r.code === 0 || s.step.mayFail || r.code === undefined || s.what === 'deleting checkpoints') return;
    throw new UnavailableError(`${s.what} on ${hv.name} failed: ${r.stderr.trim().slice(-500) || `exit status ${r.code}`}`);
  });
  if (!deletesDone) for (const d of deletes) await deleteCheckpoint(hv, j.domain, d.name, { metadataOnly: d.metadataOnly });
  for (const o of overlays) await commitFrozenOverlay(hv, j.domain, o);
  if (!dirRemoved) await hv.remove(j.dir);
}

/**
 * Abort: put the domain back as it was before the run — the new checkpoint deleted with its
 * bitmap, the previous one's bitmap kept (the next run redefines it) but not its metadata.
 */
export async function rollbackRun(hv: Hypervisor, j: Journal, opts: { running: boolean }): Promise<void> {
  await endOwnJob(hv, j);
  await stopServers(hv, j);
  if (j.checkpoint) await deleteCheckpoint(hv, j.domain, j.checkpoint.name, { metadataOnly: !opts.running });
  for (const name of olderCheckpoints(j)) await deleteCheckpoint(hv, j.domain, name, { metadataOnly: true });
  for (const o of j.overlays ?? []) await rollbackOverlay(hv, j.domain, o, opts.running);
  await hv.remove(j.dir);
}

/** Whether the previous complete point was made by this journal's run (its anchors name them). */
export function pointIsFromRun(previous: PreviousPoint | undefined, j: Journal): boolean {
  if (!previous) return false;
  return previous.disks.some((d) => {
    const a = asAnchor(d.sourceAnchor);
    if (!a) return false;
    if (a.mode === 'checkpoint') return a.checkpoint === j.checkpoint?.name;
    if (a.mode === 'snapshot') return (j.overlays ?? []).some((o) => o.overlay === a.overlay);
    return false;
  });
}

export interface Recovered {
  dir: string;
  domain: string;
  action: 'rolled-forward' | 'rolled-back';
}

/**
 * Finishes or undoes the runs of `domain` that died (owner process gone). `previous` (the
 * repository's last complete point) decides the direction; without it (cleanup), only a run
 * that was committing is rolled forward.
 */
export async function recoverStaleRuns(hv: Hypervisor, workDir: string, opts: { domain?: string; previous?: PreviousPoint | undefined; log: Logger; listed?: ListedJournal[] }): Promise<Recovered[]> {
  const done: Recovered[] = [];
  for (const { dir, journal } of opts.listed ?? (await listJournals(hv, workDir))) {
    if (!journal || (opts.domain !== undefined && journal.domain !== opts.domain) || ownerMayBeAlive(journal)) continue;
    const forward = journal.phase === 'committing' || pointIsFromRun(opts.previous, journal);
    const running = await isRunning(hv, journal.domain).catch(() => false);
    try {
      if (forward) await finishRun(hv, journal, { running });
      else await rollbackRun(hv, journal, { running });
      opts.log.info(`${journal.domain}: ${forward ? 'finished' : 'undid'} the interrupted run ${journal.runId} on ${hv.name}`);
      done.push({ dir, domain: journal.domain, action: forward ? 'rolled-forward' : 'rolled-back' });
    } catch (err) {
      opts.log.warn(`${journal.domain}: could not clean up the interrupted run ${journal.runId}: ${errorMessage(err)}`);
      throw err;
    }
  }
  return done;
}
