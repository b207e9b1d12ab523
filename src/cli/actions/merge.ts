/** `vprotect merge <chain> [--keep N]`: fold the oldest incrementals into the full point. */
import { UsageError } from '../../errors.js';
import { mergeChain } from '../../repository/merge.js';
import type { Action } from '../main.js';
import { openRepo } from './repository-common.js';

export const merge: Action = async (ctx, args, opts) => {
  const chainId = String(args[0]);
  const repo = await openRepo(ctx, opts);
  let vmId: string | undefined;
  for (const id of await repo.listVmIds()) if ((await repo.listChains(id)).some((c) => c.chainId === chainId)) vmId = id;
  if (!vmId) throw new UsageError(`no chain ${chainId} in ${repo.root}`, { hint: 'see `vprotect list`' });
  if (ctx.dryRun) {
    const chain = (await repo.listChains(vmId)).find((c) => c.chainId === chainId)!;
    const k = Math.max(0, chain.points.length - 1 - ((opts['keep'] as number | undefined) ?? 0));
    const data = { dryRun: true, chainId, wouldFold: chain.points.slice(0, k).map((p) => p.pointId), newBase: chain.points[k]?.pointId };
    ctx.out.result(data, (d) => (d.wouldFold.length ? `would fold ${d.wouldFold.join(', ')} into ${d.newBase}` : 'nothing to merge'));
    return;
  }
  const r = await mergeChain(repo, vmId, chainId, { keep: opts['keep'] as number | undefined, signal: ctx.signal });
  ctx.out.result(r, (d) => (d.folded.length ? `merged ${d.folded.join(', ')} into ${d.base}; ${d.incrementalsLeft} incremental(s) left` : `nothing to merge in chain ${d.chainId}`));
};
