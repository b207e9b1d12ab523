/** A small repository with one chain (full + 2 incrementals, two disks) and the expected bytes of each point. */
import { join } from 'node:path';
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import type { Repository } from '../../../src/repository/repository.js';
import { openRepository } from '../../../src/repository/repository.js';
import type { BeginPointOptions } from '../../../src/repository/point-writer.js';
import { asyncOf, rng, SimDisk } from './helpers.js';

export interface Fixture {
  repo: Repository;
  points: string[];
  expected: Map<string, Record<string, Buffer>>;
  disks: Record<string, SimDisk>;
}

export async function buildChain(root: string, opts: { incrementals?: number; seed?: number; vmId?: string; now?: (i: number) => Date } = {}): Promise<Fixture> {
  const rand = rng(opts.seed ?? 42);
  const repo = await openRepository(root, { create: true, blockSize: 65536 });
  const disks = { vda: new SimDisk(2 * 1024 * 1024 + 777, rand), vdb: new SimDisk(512 * 1024, rand) };
  disks.vda.randomChanges(8);
  disks.vdb.randomChanges(3);
  const points: string[] = [];
  const expected = new Map<string, Record<string, Buffer>>();
  const n = opts.incrementals ?? 2;
  for (let i = 0; i <= n; i++) {
    if (i > 0) {
      disks.vda.randomChanges(3);
      disks.vdb.randomChanges(1);
    }
    const m = await writePoint(repo, { vmId: opts.vmId ?? 'vm-1', vmName: 'web', level: i === 0 ? 'full' : 'incremental', parentPointId: points.at(-1), ...(opts.now ? { now: opts.now(i) } : {}) }, disks);
    points.push(m);
    expected.set(m, { vda: disks.vda.snapshot(), vdb: disks.vdb.snapshot() });
  }
  return { repo, points, expected, disks };
}

export async function writePoint(repo: Repository, o: BeginPointOptions, disks: Record<string, SimDisk>): Promise<string> {
  const w = await repo.beginPoint(o);
  try {
    await w.addMetadata('server.json', { id: o.vmId });
    for (const [key, disk] of Object.entries(disks)) {
      await w.writeDisk({ key, size: disk.size }, asyncOf(o.level === 'full' ? disk.fullExtents(128 * 1024) : disk.changedExtents()));
    }
    return (await w.commit()).pointId;
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/** All bytes of a disk at a point, read through the chain reader. */
export async function readDisk(repo: Repository, pointId: string, key: string): Promise<Buffer> {
  const reader = await openDiskReader(repo, await repo.findPoint(pointId), key);
  try {
    return await reader.read(0, reader.size);
  } finally {
    await reader.close();
  }
}

export const pointDir = (f: Fixture, pointId: string, vmId = 'vm-1') => join(f.repo.root, 'vms', vmId, 'chains', f.points[0]!, pointId);
