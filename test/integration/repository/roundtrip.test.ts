import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openRepository } from '../../../src/repository/repository.js';
import { asyncOf, rng, SimDisk, tempDir, restoreBytes } from './helpers.js';

let dir: { path: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  await dir.cleanup();
});

describe('round trip: every point of every chain restores bit-identical', () => {
  it.each([1, 2, 3])('random disks, seed %i (64 KiB blocks, odd sizes, growth, zeroing)', async (seed) => {
    const rand = rng(seed);
    const repo = await openRepository(join(dir.path, 'repo'), { create: true, blockSize: 65536 });
    // vda: size not a multiple of the block size; vdb: grows between points.
    const disks = { vda: new SimDisk(3 * 1024 * 1024 + 12345, rand), vdb: new SimDisk(1024 * 1024, rand) };
    disks.vda.randomChanges(12);
    disks.vdb.randomChanges(4);
    const expected = new Map<string, Record<string, Buffer>>();
    let parent: string | undefined;
    for (let n = 0; n < 7; n++) {
      const level = n === 0 || n === 4 ? 'full' : 'incremental';
      if (n > 0) {
        disks.vda.randomChanges(1 + Math.floor(rand() * 6));
        disks.vdb.randomChanges(2);
        if (n === 2) {
          disks.vdb.grow(disks.vdb.size + 700_001);
          disks.vdb.write(disks.vdb.size - 5000, 4000);
        }
        if (n === 3) disks.vda.zero(0, 200_000);
      }
      const w = await repo.beginPoint({ vmId: 'vm-1', vmName: 'web', level, parentPointId: level === 'full' ? undefined : parent });
      await w.addMetadata('server.json', { id: 'vm-1', n });
      for (const [key, disk] of Object.entries(disks)) {
        const extents = level === 'full' ? disk.fullExtents(256 * 1024) : disk.changedExtents();
        await w.writeDisk({ key, size: disk.size, sourceAnchor: { n } }, asyncOf(extents));
      }
      const m = await w.commit();
      expected.set(m.pointId, { vda: disks.vda.snapshot(), vdb: disks.vdb.snapshot() });
      parent = m.pointId;
    }
    const chains = await repo.listChains('vm-1');
    expect(chains.map((c) => c.points.length)).toEqual([4, 3]);
    for (const [pointId, snap] of expected) {
      for (const key of ['vda', 'vdb']) {
        const got = await restoreBytes(repo, pointId, key, dir.path);
        expect(got.length).toBe(snap[key]!.length);
        expect(got.equals(snap[key]!), `${pointId} ${key}`).toBe(true);
      }
    }
    const last = await repo.lastCompletePoint('vm-1');
    expect(last?.pointId).toBe(parent);
    expect(last?.manifest.disks[0]?.sourceAnchor).toEqual({ n: 6 });
  });

  it('a full with the default 4 MiB block size and an empty incremental', async () => {
    const rand = rng(9);
    const repo = await openRepository(join(dir.path, 'repo'), { create: true });
    const disk = new SimDisk(9 * 1024 * 1024 + 1, rand);
    disk.randomChanges(5);
    const w = await repo.beginPoint({ vmId: 'vm-2', level: 'full' });
    await w.writeDisk({ key: 'vda', size: disk.size }, disk.fullExtents());
    const full = await w.commit();
    const w2 = await repo.beginPoint({ vmId: 'vm-2', level: 'incremental', parentPointId: full.pointId });
    await w2.writeDisk({ key: 'vda', size: disk.size }, []);
    const inc = await w2.commit();
    expect(inc.disks[0]).toMatchObject({ records: 0, changedBytes: 0 });
    expect((await restoreBytes(repo, full.pointId, 'vda', dir.path)).equals(disk.data)).toBe(true);
    expect((await restoreBytes(repo, inc.pointId, 'vda', dir.path)).equals(disk.data)).toBe(true);
  });
});
