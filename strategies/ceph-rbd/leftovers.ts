/**
 * `vprotect cleanup` for ceph-rbd: vprotect snapshots that killed runs left on the images of
 * every pool the inventory names. What the repositories know (anchors of the newest points,
 * running backups) decides, through classifyForCleanup, which snapshots are leftovers: an
 * anchor the next incremental needs is never offered for removal.
 */
import { errorMessage, VprotectError } from '../../src/errors.js';
import type { KnownAnchors, Leftover, StrategyContext } from '../../src/strategy/contract.js';
import { describeArgv } from '../../src/transport/quote.js';
import { localExec, type CommandExec } from './exec.js';
import { imageSpec, Rbd } from './rbd.js';
import type { RbdSnapshot } from './rbd-json.js';
import { removeSnapshot } from './rotation.js';
import { classifyForCleanup, isVprotectSnapshot, parseAnchor, type KnownAnchor } from './snapshots.js';

export async function cephRbdLeftovers(ctx: StrategyContext, known: KnownAnchors | undefined, execOverride?: CommandExec): Promise<Leftover[]> {
  const exec = execOverride ?? localExec();
  const anchors: KnownAnchor[] = [];
  for (const a of known?.anchors ?? []) {
    const r = parseAnchor(a.anchor);
    if (r) anchors.push({ imageId: r.imageId, snapName: r.snapName });
  }
  const out: Leftover[] = [];
  for (const [name, config] of Object.entries(ctx.inventory.cephClusters ?? {})) {
    if (!config.pools?.length) {
      ctx.log.warn(`ceph cluster ${name} lists no pools: cleanup cannot look for vprotect snapshots there (add pools: [...] to the inventory)`);
      continue;
    }
    const rbd = await Rbd.open(exec, name, config, { remote: exec.where !== 'the backup node', log: ctx.log });
    try {
      for (const pool of config.pools) {
        let rows;
        try {
          rows = await rbd.list(pool, ctx.signal);
        } catch (err) {
          ctx.log.warn(`cleanup: cannot list pool ${pool} of ceph cluster ${name}: ${errorMessage(err)}`);
          continue;
        }
        const images = new Map<string, { id: string | undefined; snaps: RbdSnapshot[] }>();
        for (const row of rows) {
          const img = images.get(row.image) ?? { id: row.id, snaps: [] };
          images.set(row.image, img);
          if (row.snapshot) img.snaps.push({ id: row.snapshot.id, name: row.snapshot.name, size: row.size, protected: row.snapshot.protected, timestamp: '', namespace: 'user' });
        }
        for (const [image, img] of images) {
          if (!img.id || !img.snaps.some(isVprotectSnapshot)) continue;
          const verdicts = classifyForCleanup({ imageId: img.id, snapshots: img.snaps, anchors, runningSince: known?.runningSince });
          for (const v of verdicts) {
            if (!v.leftover) {
              ctx.log.debug(`cleanup: keeping ${pool}/${image}@${v.snap.name}: ${v.why}`);
              continue;
            }
            const snap = v.snap;
            out.push({
              where: `ceph cluster ${name}, image ${pool}/${image}`,
              what: `snapshot ${snap.name}${snap.protected ? ' (protected)' : ''}: ${v.why}`,
              removeWith: describeArgv(rbd.argv(['snap', ...(snap.protected ? ['unprotect'] : ['rm']), imageSpec(pool, image, snap.name)]), 400) + (snap.protected ? ` && ${describeArgv(rbd.argv(['snap', 'rm', imageSpec(pool, image, snap.name)]), 400)}` : ''),
              remove: async () => {
                const r = await Rbd.open(exec, name, config, { remote: exec.where !== 'the backup node' });
                try {
                  const outcome = await removeSnapshot(r, pool, image, snap, { signal: ctx.signal });
                  if (!outcome.removed) throw new VprotectError(outcome.problem);
                } finally {
                  await r.dispose();
                }
              },
            });
          }
        }
      }
    } finally {
      await rbd.dispose();
    }
  }
  return out;
}
