import type { DiskPlan, BackupSession, Strategy } from '../../src/strategy/contract.js';
import type { Extent } from '../../src/repository/extents.js';

/**
 * `strategy` with every session's reads replaced by `read(session, plan)` (to fault or interrupt
 * a run at a chosen extent, or to feed the engine a lying plan); every other call goes to the
 * real session. Methods are forwarded one by one: a session's are on its prototype, which a
 * spread would not copy.
 */
export function withRead(strategy: Strategy, read: (session: BackupSession, plan: DiskPlan) => AsyncIterable<Extent>): Strategy {
  return {
    ...strategy,
    async open(target, ctx) {
      const s = await strategy.open(target, ctx);
      return {
        plan: (r) => s.plan(r),
        snapshot: (p) => s.snapshot(p),
        read: (plan) => read(s, plan),
        sourceAnchor: (p) => s.sourceAnchor(p),
        metadata: () => s.metadata(),
        commit: () => s.commit(),
        abort: (r) => s.abort(r),
        close: () => s.close(),
      };
    },
  };
}
