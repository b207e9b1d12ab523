/**
 * What the repositories say about the sources, for `vprotect cleanup`: the source anchor of
 * every disk of each VM's newest complete point (the next incremental needs it, so cleanup must
 * never remove it), and whether a backup is running right now (a held, live lock: what it made
 * on the source is not a leftover). Strategies get this instead of reading repositories.
 */
import { readdir } from 'node:fs/promises';
import { errorMessage } from '../errors.js';
import { layout } from '../repository/layout.js';
import { readLock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import type { KnownAnchors } from '../strategy/contract.js';

export interface RepositorySource {
  /** For messages: the destination's name or path. */
  name: string;
  open(): Promise<Repository>;
}

export async function knownAnchors(sources: RepositorySource[]): Promise<KnownAnchors> {
  const known: KnownAnchors = { anchors: [], unreadable: [] };
  for (const src of sources) {
    try {
      const repo = await src.open();
      for (const vmId of await repo.listVmIds()) {
        const last = await repo.lastCompletePoint(vmId);
        for (const d of last?.manifest.disks ?? []) {
          if (d.sourceAnchor) known.anchors.push({ repository: src.name, vmId, pointId: last!.pointId, disk: d.key, anchor: d.sourceAnchor });
        }
      }
      for (const name of await readdir(layout.locksDir(repo.root)).catch(() => [] as string[])) {
        if (!name.endsWith('.lock')) continue;
        const info = await readLock(repo.root, name.slice(0, -'.lock'.length), repo.lockEnv);
        if (!info || info.stale) continue;
        // A lock without a readable owner counts as running since the beginning of time.
        const since = info.owner ? new Date(info.owner.startedAt) : new Date(0);
        if (!known.runningSince || since < known.runningSince) known.runningSince = since;
      }
    } catch (err) {
      known.unreadable.push({ repository: src.name, problem: errorMessage(err) });
    }
  }
  return known;
}
