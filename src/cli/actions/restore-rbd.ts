/**
 * `vprotect restore --to-rbd POOL/IMAGE [--ceph CLUSTER] [--overwrite]`: the RBD entry of the
 * restore target table (restore.ts). The ceph-rbd code (strategies/ceph-rbd/restore.ts) and the
 * inventory are loaded only when this target is used.
 */
import { UsageError } from '../../errors.js';
import type { RestoreTarget } from '../../repository/restore.js';
import type { CliContext } from '../context.js';

export function rbdRestoreTarget(opts: Record<string, unknown>, ctx: CliContext): RestoreTarget {
  const spec = String(opts['toRbd']);
  const m = /^([^/@]+)\/([^/@]+)$/.exec(spec);
  if (!m) throw new UsageError(`--to-rbd ${spec}: expected POOL/IMAGE`);
  const [, pool, image] = m as unknown as [string, string, string];
  const overwrite = opts['overwrite'] === true;
  return {
    describe: () => `rbd image ${pool}/${image}`,
    async restore(reader, rctx) {
      const inventory = await ctx.loadInventory({ offline: true });
      const { chooseCluster, localExec, Rbd, RbdRestoreTarget } = await import('../../../strategies/ceph-rbd/index.js');
      const { name, config } = chooseCluster(inventory, opts['ceph'] as string | undefined);
      const rbd = await Rbd.open(localExec(), name, config, { log: ctx.log });
      try {
        return await new RbdRestoreTarget(rbd, pool, image, overwrite).restore(reader, rctx);
      } finally {
        await rbd.dispose();
      }
    },
  };
}
