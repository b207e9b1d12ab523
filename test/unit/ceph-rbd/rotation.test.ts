/**
 * Removing an old vprotect snapshot: the rbd calls made (children only when clones are
 * possible), snapshots with clones kept with the reason, and one removed meanwhile by someone
 * else counted as removed.
 */
import { describe, expect, it } from 'vitest';
import { CommandFailedError } from '../../../src/transport/command.js';
import type { Rbd } from '../../../strategies/ceph-rbd/rbd.js';
import type { RbdChild } from '../../../strategies/ceph-rbd/rbd-json.js';
import { removeSnapshot } from '../../../strategies/ceph-rbd/rotation.js';

function fakeRbd(opts: { children?: RbdChild[]; rmFails?: string } = {}) {
  const calls: string[] = [];
  const rbd = {
    async children(_p: string, _i: string, snap: string) {
      calls.push(`children ${snap}`);
      return opts.children ?? [];
    },
    async snapUnprotect(_p: string, _i: string, snap: string) {
      calls.push(`unprotect ${snap}`);
    },
    async snapRemove(_p: string, _i: string, snap: string) {
      calls.push(`rm ${snap}`);
      if (opts.rmFails) throw new CommandFailedError(`rbd snap rm failed: ${opts.rmFails}`, ['rbd'], 2, opts.rmFails);
    },
  };
  return { rbd: rbd as unknown as Rbd, calls };
}

const snap = (p = false) => ({ name: 'vprotect-20261124T210000Z-aaaa', protected: p });

describe('removeSnapshot', () => {
  it('asks rbd children first unless the caller knows there can be no clones', async () => {
    const a = fakeRbd();
    expect(await removeSnapshot(a.rbd, 'volumes', 'img', snap())).toEqual({ removed: true });
    expect(a.calls).toEqual(['children vprotect-20261124T210000Z-aaaa', 'rm vprotect-20261124T210000Z-aaaa']);
    const b = fakeRbd();
    expect(await removeSnapshot(b.rbd, 'volumes', 'img', snap(), { mayHaveChildren: false })).toEqual({ removed: true });
    expect(b.calls).toEqual(['rm vprotect-20261124T210000Z-aaaa']);
  });

  it('a protected snapshot is always checked for children (v1 clones), then unprotected', async () => {
    const a = fakeRbd();
    await removeSnapshot(a.rbd, 'volumes', 'img', snap(true), { mayHaveChildren: false });
    expect(a.calls).toEqual(['children vprotect-20261124T210000Z-aaaa', 'unprotect vprotect-20261124T210000Z-aaaa', 'rm vprotect-20261124T210000Z-aaaa']);
  });

  it('a snapshot with clones is kept, and the problem says what to do', async () => {
    const a = fakeRbd({ children: [{ pool: 'volumes', namespace: '', image: 'clone1' }] });
    const out = await removeSnapshot(a.rbd, 'volumes', 'img', snap());
    expect(out.removed).toBe(false);
    if (!out.removed) expect(out.problem).toMatch(/has clones \(volumes\/clone1\).*flatten/);
    expect(a.calls).not.toContain('rm vprotect-20261124T210000Z-aaaa');
  });

  it('already removed by someone else counts as removed; other failures are problems', async () => {
    const gone = fakeRbd({ rmFails: 'rbd: failed to remove snapshot: (2) No such file or directory' });
    expect(await removeSnapshot(gone.rbd, 'volumes', 'img', snap(), { mayHaveChildren: false })).toEqual({ removed: true, alreadyGone: true });
    const busy = fakeRbd({ rmFails: 'rbd: failed to remove snapshot: (16) Device or resource busy' });
    const out = await removeSnapshot(busy.rbd, 'volumes', 'img', snap(), { mayHaveChildren: false });
    expect(out).toMatchObject({ removed: false });
    if (!out.removed) expect(out.problem).toMatch(/volumes\/img@vprotect-.*Device or resource busy/);
  });
});
