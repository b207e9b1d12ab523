/** `vprotect unlock <vm>`: remove a lock left by a process that is gone. */
import { breakLock, describeOwner } from '../../repository/lock.js';
import type { Action } from '../main.js';
import { openRepo, processLockEnv } from './repository-common.js';

export const unlock: Action = async (ctx, args, opts) => {
  const repo = await openRepo(ctx, opts);
  const vmId = String(args[0]);
  const info = await breakLock(repo.root, vmId, processLockEnv(), opts['force'] === true);
  const data = { vmId, removed: info !== undefined, owner: info?.owner ?? null };
  ctx.out.result(data, (d) => (d.removed ? `removed the lock of ${d.vmId}, held by ${describeOwner(info?.owner)}` : `${d.vmId} was not locked`));
};
