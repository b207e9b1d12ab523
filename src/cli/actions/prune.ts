/** `vprotect prune`: retention from a policy or from flags; prints why each point is kept or removed. */
import { UsageError } from '../../errors.js';
import type { RetentionConfig } from '../../inventory/types.js';
import { pruneVm } from '../../repository/prune.js';
import { hasRules } from '../../repository/retention.js';
import type { Action } from '../main.js';
import { openRepo, selectVms } from './repository-common.js';

const flags: [string, keyof RetentionConfig][] = [
  ['keepLast', 'keepLast'],
  ['keepHourly', 'keepHourly'],
  ['keepDaily', 'keepDaily'],
  ['keepWeekly', 'keepWeekly'],
  ['keepMonthly', 'keepMonthly'],
  ['keepYearly', 'keepYearly'],
];

export const prune: Action = async (ctx, _args, opts) => {
  const fromFlags: RetentionConfig = {};
  for (const [opt, key] of flags) if (opts[opt] !== undefined) (fromFlags as Record<string, number>)[key] = opts[opt] as number;
  let rules: RetentionConfig;
  if (opts['policy'] !== undefined) {
    if (hasRules(fromFlags)) throw new UsageError('use either --policy or --keep-* flags, not both');
    const inv = await ctx.loadInventory({ offline: true });
    const policy = inv.policies.find((p) => p.name === opts['policy']);
    if (!policy) throw new UsageError(`no policy "${String(opts['policy'])}" in the inventory`, { hint: `policies: ${inv.policies.map((p) => p.name).join(', ')}` });
    rules = policy.retention ?? {};
    if (opts['destination'] === undefined) opts['destination'] = policy.destination;
  } else {
    rules = fromFlags;
  }
  if (!hasRules(rules)) throw new UsageError('no retention rules: give --keep-last/--keep-daily/… or --policy with a retention', { hint: 'prune never guesses what to delete' });
  const repo = await openRepo(ctx, opts);
  const results = [];
  for (const vmId of await selectVms(repo, opts['vm'])) results.push(await pruneVm(repo, vmId, rules, { dryRun: ctx.dryRun }));
  const data = { dryRun: ctx.dryRun, rules, vms: results };
  ctx.out.result(data, (d, c) =>
    d.vms
      .map((vm) =>
        [
          c.bold(vm.vmId),
          ...vm.decisions.map((x) => `  ${x.keep ? c.green('keep  ') : c.red(d.dryRun ? 'would remove' : 'remove')} ${x.pointId} ${x.level.padEnd(11)} ${x.reasons.join('; ')}${vm.skipped.includes(x.pointId) ? c.yellow(' (skipped: its chain is damaged or being merged)') : ''}`),
        ].join('\n'),
      )
      .join('\n') || 'nothing to prune',
  );
};
