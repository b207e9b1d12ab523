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
import { deleteCheckpoints } from './checkpoint-mode.js';
import type { Hypervisor } from './hypervisor.js';
import { UnavailableError } from '../../src/errors.js';
import { runBatch, type Step } from './batch.js';
import { journalStep, listJournals, ownerMayBeAlive, type Journal, type ListedJournal } from './journal.js';
import { asAnchor } from './plan.js';
import { stopQemuNbdArgv } from './qemu-nbd.js';
import { commitFrozenOverlay, rollbackOverlay } from './snapshot-mode.js';

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
export async function finishRun(hv: Hypervisor, j: Journal, opts: { running: boolean }): Promise<void> {
  const stops = stopServerSteps(j);
  if (stops.length) await runBatch(hv, stops, { signal: null });
  await dropRun(hv, j, opts);
}

/**
 * A run's own commit, first round trip (while its backup job ends): the journal that says
 * "committing" — it must have succeeded before anything is dropped — and the qemu-nbd servers
 * stopped. Then dropRun.
 */
export async function startCommit(hv: Hypervisor, j: Journal): Promise<void> {
  const r = await runBatch(hv, [journalStep(j), ...stopServerSteps(j)], { signal: null });
  if (r[0]!.code !== 0) throw new UnavailableError(`writing the run journal ${j.dir} on ${hv.name} failed: ${r[0]!.stderr.trim().slice(-500) || `exit status ${r[0]!.code ?? 'unknown'}`}`);
}

/** The rest of finishRun, once the servers are stopped: the job, the checkpoints, the overlays, the run directory. */
export async function dropRun(hv: Hypervisor, j: Journal, opts: { running: boolean }): Promise<void> {
  if (j.job) await hv.endOwnBackupJob(j.domain, j.dir);
  // Older checkpoints with their bitmaps first, then the new one's metadata only.
  await deleteCheckpoints(hv, j.domain, [...olderCheckpoints(j).map((name) => ({ name, metadataOnly: !opts.running })), ...(j.checkpoint ? [{ name: j.checkpoint.name, metadataOnly: true }] : [])]);
  for (const o of j.overlays ?? []) await commitFrozenOverlay(hv, j.domain, o);
  await hv.remove(j.dir);
}

/** Stopping the run's qemu-nbd servers (they may be gone already). */
function stopServerSteps(j: Journal): Step[] {
  return (j.nbdPidFiles ?? []).map((pid) => ({ argv: stopQemuNbdArgv(pid), mayFail: true }));
}

/**
 * Abort: put the domain back as it was before the run — the new checkpoint deleted with its
 * bitmap, the previous one's bitmap kept (the next run redefines it) but not its metadata.
 */
export async function rollbackRun(hv: Hypervisor, j: Journal, opts: { running: boolean }): Promise<void> {
  if (j.job) await hv.endOwnBackupJob(j.domain, j.dir);
  const stops = stopServerSteps(j);
  if (stops.length) await runBatch(hv, stops, { signal: null });
  await deleteCheckpoints(hv, j.domain, [...(j.checkpoint ? [{ name: j.checkpoint.name, metadataOnly: !opts.running }] : []), ...olderCheckpoints(j).map((name) => ({ name, metadataOnly: true }))]);
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
