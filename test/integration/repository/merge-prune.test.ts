import { join } from 'node:path';
import { cp, readdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mergeChain } from '../../../src/repository/merge.js';
import { pruneVm } from '../../../src/repository/prune.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { verifyRepository } from '../../../src/repository/verify.js';
import { tempDir } from './helpers.js';
import { buildChain, readDisk, writePoint, type Fixture } from './fixtures.js';

let dir: { path: string; cleanup: () => Promise<void> };
let f: Fixture;
beforeAll(async () => {
  dir = await tempDir();
  f = await buildChain(join(dir.path, 'clean'), { incrementals: 4, seed: 7 });
});
afterAll(async () => {
  await dir.cleanup();
});

async function copy(name: string): Promise<Repository> {
  const root = join(dir.path, name);
  await cp(f.repo.root, root, { recursive: true });
  return openRepository(root);
}

/** Every listed point restores bit-identical and verifies clean, data included. */
async function expectAllRestore(repo: Repository): Promise<string[]> {
  const chains = await repo.listChains('vm-1');
  const ids = chains.flatMap((c) => c.points.map((p) => p.pointId));
  for (const id of ids) {
    for (const key of ['vda', 'vdb']) expect((await readDisk(repo, id, key)).equals(f.expected.get(id)![key]!), `${id} ${key}`).toBe(true);
  }
  const report = await verifyRepository(repo, ['vm-1'], undefined, { readData: 100 });
  expect(report.damage).toEqual([]);
  return ids;
}

describe('merge', () => {
  it('folds the oldest incrementals into the full; the rest still restore', async () => {
    const repo = await copy('merge-keep');
    const r = await mergeChain(repo, 'vm-1', f.points[0]!, { keep: 2 });
    expect(r).toMatchObject({ base: f.points[2], folded: [f.points[0], f.points[1]], incrementalsLeft: 2 });
    const ids = await expectAllRestore(repo);
    expect(ids).toEqual(f.points.slice(2));
    const chain = (await repo.listChains('vm-1'))[0]!;
    expect(chain.chainId).toBe(f.points[0]);
    expect(chain.points[0]!.manifest).toMatchObject({ level: 'full', parentId: null, mergedFrom: [f.points[0], f.points[1]] });
    // merging everything afterwards leaves one full point, the newest
    await mergeChain(repo, 'vm-1', f.points[0]!, {});
    expect(await expectAllRestore(repo)).toEqual([f.points[4]]);
  });

  const steps = ['check', 'journal', `apply:vda:P2`, 'applied', 'finalize', 'moved', 'manifest', 'removed:P0', 'done'];
  it.each(steps)('a crash after step %s: the next run finishes the merge, nothing listed fails to restore', async (stepName) => {
    const step = stepName.replace(/P(\d)/, (_m, i: string) => f.points[Number(i)]!);
    const repo = await copy(`merge-crash-${stepName.replace(/[:]/g, '-')}`);
    class Crash extends Error {}
    await expect(
      mergeChain(repo, 'vm-1', f.points[0]!, {
        keep: 1,
        onStep: (s) => {
          if (s === step) throw new Crash(s);
        },
      }),
    ).rejects.toThrow(Crash);
    // The crashed process's lock is gone with it (withLock released it); the chain shows the merge.
    const before = (await repo.listChains('vm-1'))[0]!;
    if (!['check', 'done'].includes(stepName)) expect(before.merge).toBeDefined();
    // The next run (any locked command) finishes it.
    await repo.withLock('vm-1', 'test', (lock) => repo.cleanup('vm-1', lock));
    const ids = await expectAllRestore(repo);
    expect(ids).toEqual(stepName === 'check' ? f.points : f.points.slice(3));
    const chainDir = join(repo.root, 'vms', 'vm-1', 'chains', f.points[0]!);
    expect((await readdir(chainDir)).sort()).toEqual([...ids].sort());
  });
});

describe('prune', () => {
  it('keeps what the rules say plus every point a kept point depends on, and removes the rest', async () => {
    const root = join(dir.path, 'prune');
    const day = (i: number) => new Date(Date.UTC(2026, 0, 1 + i, 12));
    // Two chains of 3 points, one point a day.
    const a = await buildChain(root, { incrementals: 2, seed: 3, now: (i) => day(i) });
    const b = await writePoint(a.repo, { vmId: 'vm-1', level: 'full', now: day(3) }, a.disks);
    const b1 = await writePoint(a.repo, { vmId: 'vm-1', level: 'incremental', parentPointId: b, now: day(4) }, a.disks);
    // A dry run removes nothing.
    const dry = await pruneVm(a.repo, 'vm-1', { keepLast: 1 }, { dryRun: true });
    expect(dry.removed).toEqual([]);
    expect((await a.repo.listChains('vm-1')).flatMap((c) => c.points)).toHaveLength(5);
    const r = await pruneVm(a.repo, 'vm-1', { keepLast: 1 }, { dryRun: false });
    expect(r.decisions.find((d) => d.pointId === b)).toMatchObject({ keep: true, reasons: [`needed by ${b1}`] });
    expect(r.removed.sort()).toEqual([...a.points].sort());
    expect((await a.repo.listChains('vm-1')).map((c) => c.chainId)).toEqual([b]);
    expect((await verifyRepository(a.repo, ['vm-1'], undefined, { readData: 100 })).damage).toEqual([]);
  });

  it('keeping an old incremental keeps its whole chain prefix', async () => {
    const repo = await copy('prune-prefix');
    const pts = (await repo.listChains('vm-1'))[0]!.points;
    // keep-last 1 keeps the newest; every other point is its ancestor: nothing can go.
    const r = await pruneVm(repo, 'vm-1', { keepLast: 1 }, { dryRun: false });
    expect(r.removed).toEqual([]);
    expect(r.decisions.filter((d) => d.keep)).toHaveLength(pts.length);
    // after merge (forever incremental), prune can drop nothing either, and every point restores
    await mergeChain(repo, 'vm-1', f.points[0]!, { keep: 2 });
    await pruneVm(repo, 'vm-1', { keepLast: 1 }, { dryRun: false });
    await expectAllRestore(repo);
  });
});
