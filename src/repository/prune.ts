/**
 * Applying retention to a repository: decide (pure, retention.ts), then remove points newest
 * first, each by deleting its manifest before its files, so that at every moment every
 * remaining complete point still has all its ancestors.
 */
import { rm, rmdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { RetentionConfig } from '../inventory/types.js';
import { fsyncDir } from './durable.js';
import { MANIFEST } from './layout.js';
import type { PointInfo, Repository } from './repository.js';
import { decideRetention, type RetentionDecision } from './retention.js';

export interface PruneResult {
  vmId: string;
  decisions: (RetentionDecision & { chainId: string; level: string; time: string })[];
  removed: string[];
  skipped: string[];
}

export async function removePoint(p: PointInfo): Promise<void> {
  await unlink(join(p.dir, MANIFEST));
  await fsyncDir(p.dir);
  await rm(p.dir, { recursive: true, force: true });
  await rmdir(dirname(p.dir)).catch(() => {}); // the chain directory, once empty
}

/** Prunes one VM under its lock; with dryRun only decides. */
export async function pruneVm(repo: Repository, vmId: string, rules: RetentionConfig, opts: { dryRun: boolean }): Promise<PruneResult> {
  const run = async (): Promise<PruneResult> => {
    const chains = await repo.listChains(vmId);
    const complete = chains.flatMap((c) => c.points);
    const decisions = decideRetention(
      complete.map((p) => ({ pointId: p.pointId, chainId: p.chainId, parentId: p.manifest.parentId, time: p.manifest.startedAt })),
      rules,
    );
    const byId = new Map(complete.map((p) => [p.pointId, p]));
    const out: PruneResult = {
      vmId,
      decisions: decisions.map((d) => ({ ...d, chainId: byId.get(d.pointId)!.chainId, level: byId.get(d.pointId)!.manifest.level, time: byId.get(d.pointId)!.manifest.startedAt })),
      removed: [],
      skipped: [],
    };
    // Points of a chain with an unfinished merge, or damaged chains, are left alone.
    const untouchable = new Set(chains.filter((c) => c.merge || c.orphans.length || c.damaged.length).flatMap((c) => c.points.map((p) => p.pointId)));
    if (opts.dryRun) return out;
    // Newest first: a removed point never leaves a kept descendant behind.
    for (const d of out.decisions) {
      if (d.keep) continue;
      if (untouchable.has(d.pointId)) {
        out.skipped.push(d.pointId);
        continue;
      }
      await removePoint(byId.get(d.pointId)!);
      out.removed.push(d.pointId);
    }
    return out;
  };
  return opts.dryRun ? run() : repo.withLock(vmId, 'prune', async (lock) => {
    await repo.cleanup(vmId, lock);
    return run();
  });
}
