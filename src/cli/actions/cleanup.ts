/**
 * `vprotect cleanup`: asks every strategy of the table for leftovers of killed runs, telling it
 * what the repositories know (anchors of the newest points, backups running now: see
 * src/engine/known-anchors.ts), lists them, and removes them unless --list / --dry-run.
 */
import { errorMessage, PartialFailureError, UsageError } from '../../errors.js';
import { knownAnchors, type RepositorySource } from '../../engine/known-anchors.js';
import type { StrategyName } from '../../inventory/types.js';
import { prepareDestination, selectDestination } from '../../repository/destination.js';
import { openRepository } from '../../repository/repository.js';
import type { Leftover } from '../../strategy/contract.js';
import type { Action } from '../main.js';
import { processLockEnv } from './repository-common.js';

interface Row {
  strategy: string;
  where: string;
  what: string;
  removeWith: string;
  status: 'listed' | 'would remove' | 'removed' | 'failed';
  error?: string;
}

export const cleanup: Action = async (ctx, _args, opts) => {
  const inventory = await ctx.loadInventory({ offline: true });
  const { strategies } = await import('../../../strategies/index.js');
  const names = Object.keys(strategies) as StrategyName[];
  const only = opts['strategy'] as string | undefined;
  if (only !== undefined && !names.includes(only as StrategyName)) throw new UsageError(`no strategy "${only}" in this build`, { hint: `strategies: ${names.join(', ')}` });
  const remove = !ctx.dryRun && opts['list'] !== true;

  const sources: RepositorySource[] = Object.keys(inventory.destinations).map((name) => ({
    name,
    open: async () => {
      const root = await prepareDestination(selectDestination(inventory, name, process.cwd()), { log: ctx.log, signal: ctx.signal });
      return openRepository(root, { log: ctx.log, lockEnv: processLockEnv() });
    },
  }));
  const known = await knownAnchors(sources);
  for (const u of known.unreadable) ctx.log.warn(`destination ${u.repository} could not be read (${u.problem}): the newest snapshot of each image is kept`);
  if (known.runningSince) ctx.log.info(`a backup is running since ${known.runningSince.toISOString()}: what it may be making is kept`);

  const rows: Row[] = [];
  for (const name of only ? [only as StrategyName] : names) {
    const strategy = await strategies[name]!();
    if (!strategy.leftovers) continue;
    let found: Leftover[];
    try {
      found = await strategy.leftovers({ log: ctx.log, events: ctx.events, signal: ctx.signal, dryRun: ctx.dryRun, inventory, policy: undefined, options: {}, env: ctx.env }, known);
    } catch (err) {
      ctx.log.error(`${name}: cannot look for leftovers: ${errorMessage(err)}`);
      rows.push({ strategy: name, where: '-', what: 'leftovers could not be listed', removeWith: '-', status: 'failed', error: errorMessage(err) });
      continue;
    }
    for (const l of found) {
      const row: Row = { strategy: name, where: l.where, what: l.what, removeWith: l.removeWith, status: remove ? 'removed' : ctx.dryRun ? 'would remove' : 'listed' };
      if (remove) {
        try {
          await l.remove();
        } catch (err) {
          row.status = 'failed';
          row.error = errorMessage(err);
        }
      }
      rows.push(row);
    }
  }
  ctx.out.result({ removed: remove, leftovers: rows }, (d, c) =>
    d.leftovers.length === 0
      ? 'no leftovers'
      : d.leftovers
          .map((r) => {
            const status = r.status === 'failed' ? c.red('failed') : r.status === 'removed' ? c.green('removed') : c.yellow(r.status);
            return `${status} ${r.where}: ${r.what}${r.error ? `\n  ${c.red(r.error)}` : ''}${r.status !== 'removed' ? `\n  remove with: ${r.removeWith}` : ''}`;
          })
          .join('\n'),
  );
  const failed = rows.filter((r) => r.status === 'failed');
  if (failed.length) throw new PartialFailureError(`${failed.length} of ${rows.length} leftovers could not be removed or listed`, { data: { failed } });
};
