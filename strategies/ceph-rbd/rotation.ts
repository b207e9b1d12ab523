/**
 * Removing one vprotect snapshot, the careful way: a snapshot with clones (children) is never
 * removed — with clone v2 `rbd snap rm` would "succeed" and move it to the trash namespace,
 * where its data stays as long as the clones live — and the problem is said in words. A
 * protected snapshot without children is unprotected first (someone protected ours; nothing
 * depends on it any more).
 */
import { errorMessage } from '../../src/errors.js';
import { CommandFailedError } from '../../src/transport/command.js';
import type { Rbd } from './rbd.js';
import type { RbdSnapshot } from './rbd-json.js';

export type RemoveOutcome = { removed: true; alreadyGone?: boolean } | { removed: false; problem: string };

export interface RemoveOptions {
  signal?: AbortSignal;
  /**
   * false when the caller knows the snapshot cannot have clones (unprotected, on an image
   * without the `clone-parent` op feature): saves the `rbd children` call. Default true.
   */
  mayHaveChildren?: boolean;
}

export async function removeSnapshot(rbd: Rbd, pool: string, image: string, snap: Pick<RbdSnapshot, 'name' | 'protected'>, opts: RemoveOptions = {}): Promise<RemoveOutcome> {
  const spec = `${pool}/${image}@${snap.name}`;
  const { signal } = opts;
  try {
    if (opts.mayHaveChildren !== false || snap.protected) {
      const children = await rbd.children(pool, image, snap.name, signal);
      if (children.length) {
        const names = children.map((c) => `${c.pool}/${c.namespace ? `${c.namespace}/` : ''}${c.image}`).join(', ');
        return { removed: false, problem: `${spec} has clones (${names}): a snapshot with children cannot be removed; flatten them (rbd flatten) or remove them first` };
      }
    }
    if (snap.protected) await rbd.snapUnprotect(pool, image, snap.name, signal);
    await rbd.snapRemove(pool, image, snap.name, signal);
    return { removed: true };
  } catch (err) {
    // Removed by someone else since it was listed (another run's rotation, vprotect cleanup).
    if (err instanceof CommandFailedError && /\(2\) No such file or directory/.test(err.stderr)) return { removed: true, alreadyGone: true };
    return { removed: false, problem: `${spec}: ${errorMessage(err)}` };
  }
}
