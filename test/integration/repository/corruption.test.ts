import { cp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataCorruptError } from '../../../src/errors.js';
import { openRepository } from '../../../src/repository/repository.js';
import { verifyRepository } from '../../../src/repository/verify.js';
import { tempDir } from './helpers.js';
import { buildChain, pointDir, readDisk, type Fixture } from './fixtures.js';

let dir: { path: string; cleanup: () => Promise<void> };
let f: Fixture;
beforeAll(async () => {
  dir = await tempDir();
  f = await buildChain(join(dir.path, 'clean'));
});
afterAll(async () => {
  await dir.cleanup();
});

const files = [
  ['full', 'manifest.json'],
  ['full', 'SHA256SUMS'],
  ['full', 'metadata/server.json'],
  ['full', 'disks/vda.raw'],
  ['full', 'disks/vda.blockmap'],
  ['inc1', 'manifest.json'],
  ['inc1', 'SHA256SUMS'],
  ['inc1', 'disks/vda.rbdiff'],
  ['inc1', 'disks/vda.rbdiff.idx'],
  ['inc2', 'disks/vdb.rbdiff'],
] as const;

async function damaged(mutate: (path: string) => Promise<void>, which: readonly [(typeof files)[number][0], string], readData: number | undefined) {
  const root = join(dir.path, `case-${Math.random().toString(16).slice(2)}`);
  await cp(f.repo.root, root, { recursive: true });
  const idx = { full: 0, inc1: 1, inc2: 2 }[which[0]];
  const point = f.points[idx]!;
  const file = join(root, 'vms', 'vm-1', 'chains', f.points[0]!, point, which[1]);
  await mutate(file);
  const repo = await openRepository(root);
  const report = await verifyRepository(repo, ['vm-1'], undefined, { readData });
  await rm(root, { recursive: true, force: true });
  return { report, file, dependents: f.points.slice(idx) };
}

async function flip(path: string): Promise<void> {
  const b = await readFile(path);
  // A byte in the middle: inside data, names or digits depending on the file.
  const at = Math.floor(b.length / 2) + 3;
  b[at] = b[at]! ^ 0x20;
  await writeFile(path, b);
}

describe('corruption: verify finds each damaged file and names the points that depend on it', () => {
  it('a clean chain verifies with no damage, data included', async () => {
    const r = await verifyRepository(f.repo, ['vm-1'], undefined, { readData: 100 });
    expect(r.damage).toEqual([]);
    expect(r.checkedPoints).toEqual(f.points);
  });

  it.each(files)('a flipped byte in %s/%s', async (point, name) => {
    const { report, file, dependents } = await damaged(flip, [point, name], 100);
    const hit = report.damage.find((d) => d.file === file);
    expect(hit, JSON.stringify(report.damage, null, 1)).toBeDefined();
    expect(hit!.affectedPoints).toEqual(expect.arrayContaining(dependents));
  });

  it.each(files)('a truncated %s/%s', async (point, name) => {
    const { report, file, dependents } = await damaged(async (p) => truncate(p, Math.max(0, (await readFile(p)).length - 10)), [point, name], 100);
    const hit = report.damage.find((d) => d.file === file);
    expect(hit, JSON.stringify(report.damage, null, 1)).toBeDefined();
    expect(hit!.affectedPoints).toEqual(expect.arrayContaining(dependents));
  });

  it('without --read-data, damage in everything but the data is still found', async () => {
    for (const which of files.filter(([, n]) => !n.endsWith('.raw') && !n.endsWith('.rbdiff'))) {
      const { report, file } = await damaged(flip, which, undefined);
      expect(report.damage.map((d) => d.file), which.join('/')).toContain(file);
    }
  });

  it('a missing point breaks the chain: its descendants are named', async () => {
    const { report, dependents } = await damaged(async (p) => rm(join(p, '..'), { recursive: true }), ['inc1', 'manifest.json'], undefined);
    expect(report.damage.length).toBeGreaterThan(0);
    expect(report.damage[0]!.affectedPoints).toEqual(dependents.slice(1));
  });

  it('restore of a damaged point stops with DataCorruptError instead of returning wrong bytes', async () => {
    const root = join(dir.path, 'restore-damage');
    await cp(f.repo.root, root, { recursive: true });
    const repo = await openRepository(root);
    const file = join(root, 'vms', 'vm-1', 'chains', f.points[0]!, f.points[1]!, 'disks', 'vda.rbdiff');
    const b = await readFile(file);
    b[b.length - 100] = b[b.length - 100]! ^ 1;
    await writeFile(file, b);
    // vdb is untouched and restores; vda's damaged record is caught.
    expect((await readDisk(repo, f.points[2]!, 'vdb')).equals(f.expected.get(f.points[2]!)!['vdb']!)).toBe(true);
    await expect(readDisk(repo, f.points[2]!, 'vda')).rejects.toThrow(DataCorruptError);
    await expect(readDisk(repo, f.points[1]!, 'vda')).rejects.toThrow(/does not match its sha256/);
    // The full point does not depend on the diff.
    expect((await readDisk(repo, f.points[0]!, 'vda')).equals(f.expected.get(f.points[0]!)!['vda']!)).toBe(true);
  });

  it('a flipped byte in a full image is caught by the block map on restore', async () => {
    const root = join(dir.path, 'restore-raw');
    await cp(f.repo.root, root, { recursive: true });
    const file = join(pointDir({ ...f, repo: await openRepository(root) }, f.points[0]!), 'disks', 'vda.raw');
    await flip(file);
    await expect(readDisk(await openRepository(root), f.points[2]!, 'vda')).rejects.toThrow(/does not match the block map/);
  });
});
