/**
 * Removing one vprotect snapshot, the careful way: a snapshot with clones (children) is never
 * removed — with clone v2 `rbd snap rm` would "succeed" and move it to the trash namespace,
 * where its data stays as long as the clones live — and the problem is said in words. A
 * protected snapshot without children is unprotected first (someone protected ours; nothing
 * depends on it any more).
 */
import { errorMessage } from '../../src/errors.js';
import type { Rbd } from './rbd.js';
import type { RbdSnapshot } from './rbd-json.js';

export type RemoveOutcome = { removed: true } | { removed: false; problem: string };

export async function removeSnapshot(rbd: Rbd, pool: string, image: string, snap: Pick<RbdSnapshot, 'name' | 'protected'>, signal?: AbortSignal): Promise<RemoveOutcome> {
  const spec = `${pool}/${image}@${snap.name}`;
  try {
    const children = await rbd.children(pool, image, snap.name, signal);
    if (children.length) {
      const names = children.map((c) => `${c.pool}/${c.namespace ? `${c.namespace}/` : ''}${c.image}`).join(', ');
      return { removed: false, problem: `${spec} has clones (${names}): a snapshot with children cannot be removed; flatten them (rbd flatten) or remove them first` };
    }
    if (snap.protected) await rbd.snapUnprotect(pool, image, snap.name, signal);
    await rbd.snapRemove(pool, image, snap.name, signal);
    return { removed: true };
  } catch (err) {
    return { removed: false, problem: `${spec}: ${errorMessage(err)}` };
  }
}
