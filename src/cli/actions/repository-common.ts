/** What the repository commands share: choosing and opening the repository, and formatting. */
import { hostname } from 'node:os';
import { UsageError } from '../../errors.js';
import type { Inventory } from '../../inventory/types.js';
import { looksLikePath, prepareDestination, selectDestination } from '../../repository/destination.js';
import type { LockEnv } from '../../repository/lock.js';
import { openRepository, type Repository } from '../../repository/repository.js';
import type { CliContext } from '../context.js';

/** This process, as lock owners see it. */
export function processLockEnv(): LockEnv {
  return {
    host: hostname(),
    pid: process.pid,
    isAlive: (pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch (err) {
        return (err as NodeJS.ErrnoException).code === 'EPERM';
      }
    },
  };
}

export async function openRepo(ctx: CliContext, opts: Record<string, unknown>, o: { create?: boolean } = {}): Promise<Repository> {
  const root = await destinationRoot(ctx, opts);
  return openRepository(root, { create: o.create === true, log: ctx.log, lockEnv: processLockEnv() });
}

/**
 * The repository directory that `-d` (or the inventory's only destination) names, made usable
 * (an NFS export mounted when allowed) — or, with `dryRun`, only checked: nothing is mounted.
 */
export async function destinationRoot(ctx: CliContext, opts: Record<string, unknown>, o: { dryRun?: boolean } = {}): Promise<string> {
  const arg = opts['destination'] as string | undefined;
  let inv: Inventory | undefined;
  if (arg === undefined || !looksLikePath(arg)) inv = await ctx.loadInventory({ offline: true });
  const dest = selectDestination(inv, arg, process.cwd());
  return prepareDestination(dest, { log: ctx.log, signal: ctx.signal, dryRun: o.dryRun === true });
}

/** VM ids matching --vm (id or last known name); all when not given. */
export async function selectVms(repo: Repository, vm: unknown): Promise<string[]> {
  if (vm === undefined) return repo.listVmIds();
  const ids = await repo.resolveVm(String(vm));
  if (ids.length === 0) throw new UsageError(`no VM "${String(vm)}" in ${repo.root}`, { hint: 'see `vprotect list`' });
  return ids;
}
