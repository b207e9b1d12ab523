/**
 * `vprotect cleanup`, libvirt-ssh side: on every hypervisor of the inventory, the run
 * directories of killed runs (with what their journals say they created), backup jobs that
 * serve from a vprotect run directory with no live run behind them, and vprotect checkpoint
 * metadata no run accounts for (it keeps Nova from undefining the domain).
 */
import { errorMessage } from '../../src/errors.js';
import { shellJoin } from '../../src/transport/quote.js';
import type { KnownAnchors, Leftover, PreviousPoint, StrategyContext } from '../../src/strategy/contract.js';
import { deleteCheckpoint } from './checkpoint-mode.js';
import { borrowConnection } from './connections.js';
import { Hypervisor } from './hypervisor.js';
import { listJournals, ownerMayBeAlive, type Journal } from './journal.js';
import { DEFAULT_WORK_DIR, parseOptions } from './plan.js';
import { finishRun, pointIsFromRun, rollbackRun } from './recovery.js';

function workDirs(ctx: StrategyContext): string[] {
  const dirs = new Set<string>([parseOptions(ctx.options).workDir, DEFAULT_WORK_DIR]);
  for (const p of ctx.inventory.policies) if (p.strategy === 'libvirt-ssh') dirs.add(parseOptions(p.strategyOptions ?? {}).workDir);
  return [...dirs];
}

function describeRun(j: Journal): string {
  const parts = [`interrupted run ${j.runId} of domain ${j.domain} (${j.phase})`];
  if (j.job) parts.push('a backup job');
  if (j.checkpoint) parts.push(`checkpoint ${j.checkpoint.name}`);
  for (const c of j.redefined ?? []) if (c !== j.checkpoint?.previous) parts.push(`redefined checkpoint ${c}`);
  for (const o of j.overlays ?? []) parts.push(`overlay ${o.overlay} on ${o.frozen}`);
  return parts.join(', ');
}

function manualSteps(j: Journal, forward: boolean): string {
  const steps: string[] = [];
  if (j.job) steps.push(shellJoin(['virsh', 'domjobabort', j.domain]));
  const older = [...new Set([...(j.checkpoint?.previous ? [j.checkpoint.previous] : []), ...(j.redefined ?? [])])].filter((n) => n !== j.checkpoint?.name);
  // No checkpoint metadata stays (Nova cannot undefine the domain); the newest durable bitmap does.
  if (forward) {
    for (const c of older) steps.push(shellJoin(['virsh', 'checkpoint-delete', j.domain, c]));
    if (j.checkpoint) steps.push(shellJoin(['virsh', 'checkpoint-delete', j.domain, j.checkpoint.name, '--metadata']));
    for (const o of j.overlays ?? []) if (o.commitInto) steps.push(shellJoin(['virsh', 'blockcommit', j.domain, o.target, '--top', o.frozen, '--base', o.commitInto, '--wait']), shellJoin(['rm', '-f', o.frozen]));
  } else {
    if (j.checkpoint) steps.push(shellJoin(['virsh', 'checkpoint-delete', j.domain, j.checkpoint.name]));
    for (const c of older) steps.push(shellJoin(['virsh', 'checkpoint-delete', j.domain, c, '--metadata']));
    for (const o of j.overlays ?? []) steps.push(shellJoin(['virsh', 'blockcommit', j.domain, o.target, '--active', '--pivot', '--top', o.overlay, '--base', o.frozen, '--wait']), shellJoin(['rm', '-f', o.overlay]));
  }
  steps.push(shellJoin(['rm', '-rf', j.dir]));
  return steps.join(' && ');
}

export async function findLeftovers(ctx: StrategyContext, known?: KnownAnchors): Promise<Leftover[]> {
  const out: Leftover[] = [];
  // The anchors the repositories hold: a killed run whose point became durable is finished, not undone.
  const durable: PreviousPoint | undefined = known ? { pointId: '', chainId: '', disks: known.anchors.map((a) => ({ key: a.disk, size: 0, sourceAnchor: a.anchor })) } : undefined;
  for (const hvConfig of ctx.inventory.hypervisors) {
    let borrowed;
    try {
      borrowed = await borrowConnection(hvConfig, ctx.env, ctx.log);
    } catch (err) {
      ctx.log.warn(`cleanup: cannot reach hypervisor ${hvConfig.name}: ${errorMessage(err)}`);
      continue;
    }
    const hv = new Hypervisor(borrowed.conn, hvConfig, ctx.log);
    // Many small queries (per domain): one persistent virsh and shell instead of an exec each.
    hv.keepProcesses();
    try {
      const seen = new Set<string>();
      // Checkpoints some run's journal (live or dead) accounts for, per domain.
      const journaled = new Set<string>();
      for (const workDir of workDirs(ctx)) {
        for (const { dir, journal } of await listJournals(hv, workDir)) {
          if (seen.has(dir)) continue;
          seen.add(dir);
          const where = `hypervisor ${hv.name}`;
          if (!journal) {
            out.push({ where, what: `run directory ${dir} without a journal`, removeWith: `ssh ${hv.name} ${shellJoin(['rm', '-rf', dir])}`, remove: () => withHv(ctx, hvConfig, (h) => h.remove(dir)) });
            continue;
          }
          for (const c of [journal.checkpoint?.name, journal.checkpoint?.previous, ...(journal.redefined ?? [])]) if (c) journaled.add(`${journal.domain}\0${c}`);
          if (ownerMayBeAlive(journal)) continue;
          const forward = journal.phase === 'committing' || pointIsFromRun(durable, journal);
          out.push({
            where,
            what: describeRun(journal),
            removeWith: `ssh ${hv.name} '${manualSteps(journal, forward).replace(/'/g, `'\\''`)}'`,
            remove: () =>
              withHv(ctx, hvConfig, async (h) => {
                const s = await h.domainState(journal.domain);
                const running = s === 'running' || s === 'paused';
                if (forward) await finishRun(h, journal, { running });
                else await rollbackRun(h, journal, { running });
              }),
          });
        }
        // Backup jobs serving from a run directory whose run is gone (its journal was removed).
        for (const domain of await hv.listDomains()) {
          const xml = await hv.backupJobXml(domain).catch(() => undefined);
          if (!xml || !xml.includes(`${workDir}/run-`)) continue;
          const run = new RegExp(`${workDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/(run-[0-9TZ]+-[0-9a-f]{4})`).exec(xml)?.[1];
          if (run && seen.has(`${workDir}/${run}`)) continue;
          out.push({
            where: `hypervisor ${hv.name}`,
            what: `backup job of domain ${domain} serving from ${workDir}/${run ?? '?'}, with no run behind it`,
            removeWith: `ssh ${hv.name} ${shellJoin(['virsh', 'domjobabort', domain])}`,
            remove: () => withHv(ctx, hvConfig, (h) => h.abortJob(domain)),
          });
        }
      }
      // Checkpoint metadata with no run behind it (older vprotect versions kept it between backups,
      // or a run killed before it journaled): Nova cannot delete, hard-reboot, resize or migrate
      // the instance while it exists. Only the metadata goes: the bitmap stays in the qcow2 and
      // the next backup redefines the checkpoint from its repository, still incremental.
      for (const domain of await hv.listDomains()) {
        const names = await hv.checkpointNames(domain).catch(() => [] as string[]);
        for (const cp of names.filter((n) => n.startsWith('vprotect-') && !journaled.has(`${domain}\0${n}`))) {
          out.push({
            where: `hypervisor ${hv.name}`,
            what: `checkpoint metadata ${cp} of domain ${domain} (blocks Nova's delete/hard reboot; the bitmap stays)`,
            removeWith: `ssh ${hv.name} ${shellJoin(['virsh', 'checkpoint-delete', domain, cp, '--metadata'])}`,
            remove: () => withHv(ctx, hvConfig, (h) => deleteCheckpoint(h, domain, cp, { metadataOnly: true })),
          });
        }
      }
    } finally {
      await hv.closeProcesses().catch(() => undefined);
      await borrowed.release();
    }
  }
  return out;
}

async function withHv<T>(ctx: StrategyContext, config: Parameters<typeof borrowConnection>[0], fn: (hv: Hypervisor) => Promise<T>): Promise<T> {
  const b = await borrowConnection(config, ctx.env, ctx.log);
  const hv = new Hypervisor(b.conn, config, ctx.log);
  hv.keepProcesses();
  try {
    return await fn(hv);
  } finally {
    await hv.closeProcesses().catch(() => undefined);
    await b.release();
  }
}
