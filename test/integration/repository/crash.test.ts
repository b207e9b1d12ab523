/**
 * Crash tests: the writer stops dead after each durable step (no abort, no cleanup, lock left
 * behind by a process that no longer exists). No point may be listed as complete unless it
 * restores, and the next run cleans up.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localLockEnv } from '../../../src/repository/lock.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { Extent } from '../../../src/repository/extents.js';
import { verifyRepository } from '../../../src/repository/verify.js';
import { asyncOf, rng, SimDisk, tempDir } from './helpers.js';
import { readDisk, writePoint } from './fixtures.js';

let dir: { path: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(async () => {
  await dir.cleanup();
});

class Crash extends Error {}
/** A process that has died: its pid is not alive, so its lock is stale. */
const deadEnv = () => ({ ...localLockEnv(), pid: 2 ** 22 + 12345, isAlive: (p: number) => p !== 2 ** 22 + 12345 && localLockEnv().isAlive(p) });

async function allFiles(root: string): Promise<string[]> {
  return (await readdir(root, { recursive: true })).map(String);
}

async function crashRun(level: 'full' | 'incremental', crashAt: string | 'mid-data') {
  const root = join(dir.path, `${level}-${crashAt.replace(/:/g, '-')}`);
  const rand = rng(5);
  const good = await openRepository(root, { create: true, blockSize: 65536 });
  const disks = { vda: new SimDisk(1024 * 1024 + 100, rand), vdb: new SimDisk(300_000, rand) };
  disks.vda.randomChanges(5);
  disks.vdb.randomChanges(2);
  const full = await writePoint(good, { vmId: 'vm-1', level: 'full' }, disks);
  const expectedFull = { vda: disks.vda.snapshot(), vdb: disks.vdb.snapshot() };
  disks.vda.randomChanges(3);
  disks.vdb.randomChanges(1);

  // The crashing process.
  const dying = await openRepository(root, { lockEnv: deadEnv() });
  const w = await dying.beginPoint({
    vmId: 'vm-1',
    level,
    parentPointId: level === 'incremental' ? full : undefined,
    onStep: (s) => {
      if (s === crashAt) throw new Crash(s);
    },
  });
  let crashed = false;
  try {
    await w.addMetadata('server.json', { id: 'vm-1' });
    for (const [key, disk] of Object.entries(disks)) {
      let extents: Extent[] | AsyncIterable<Extent> = level === 'full' ? disk.fullExtents() : disk.changedExtents();
      if (crashAt === 'mid-data' && key === 'vdb') {
        const list = extents;
        extents = (async function* () {
          yield* asyncOf(list.slice(0, 1));
          throw new Crash('mid-data');
        })();
      }
      await w.writeDisk({ key, size: disk.size }, extents);
    }
    await w.commit();
  } catch (err) {
    if (!(err instanceof Crash)) throw err;
    crashed = true;
  }
  expect(crashed).toBe(true);
  return { root, full, expectedFull, expectedNew: { vda: disks.vda.snapshot(), vdb: disks.vdb.snapshot() }, disks };
}

async function expectListedPointsRestore(repo: Repository, expected: Map<string, Record<string, Buffer>>): Promise<string[]> {
  const listed = (await repo.listChains('vm-1')).flatMap((c) => c.points.map((p) => p.pointId));
  for (const id of listed) {
    const exp = expected.get(id);
    expect(exp, `point ${id} is listed as complete but was never committed`).toBeDefined();
    for (const key of ['vda', 'vdb']) expect((await readDisk(repo, id, key)).equals(exp![key]!), `${id} ${key}`).toBe(true);
  }
  return listed;
}

const fullSteps = ['metadata:server.json', 'data:vda', 'blockmap:vda', 'mid-data', 'data:vdb', 'blockmap:vdb', 'sums', 'manifest'];
const incSteps = ['metadata:server.json', 'data:vda', 'index:vda', 'mid-data', 'data:vdb', 'index:vdb', 'sums', 'manifest'];

describe.each([
  ['full', fullSteps],
  ['incremental', incSteps],
] as const)('a %s point killed', (level, steps) => {
  it.each(steps)('after %s', async (step) => {
    const run = await crashRun(level, step);
    const repo = await openRepository(run.root);
    const chains = await repo.listChains('vm-1');
    const newId = chains.flatMap((c) => [...c.points.map((p) => p.pointId), ...c.incomplete]).find((id) => id !== run.full)!;
    const expected = new Map([[run.full, run.expectedFull]]);
    // Only a point whose manifest made it is complete — and then it must restore.
    if (step === 'manifest') expected.set(newId, run.expectedNew);
    const listed = await expectListedPointsRestore(repo, expected);
    expect(listed.includes(newId)).toBe(step === 'manifest');
    if (step !== 'manifest') expect(chains.flatMap((c) => c.incomplete)).toEqual([newId]);

    // The next run: takes over the stale lock, removes the leftovers, writes a good point.
    const next = await openRepository(run.root);
    run.disks.vda.write(10, 100);
    const parentPointId = (await next.lastCompletePoint('vm-1'))!.pointId;
    const snap = await writePoint(next, { vmId: 'vm-1', level: 'incremental', parentPointId }, { vda: run.disks.vda, vdb: run.disks.vdb });
    // (Its bytes are checked by verify --read-data below: records and block maps.)
    const after = await next.listChains('vm-1');
    expect(after.flatMap((c) => c.incomplete)).toEqual([]);
    expect((await allFiles(run.root)).filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect((await verifyRepository(next, ['vm-1'], undefined, { readData: 100 })).damage).toEqual([]);
    expect(after.flatMap((c) => c.points.map((p) => p.pointId))).toContain(snap);
  });
});
