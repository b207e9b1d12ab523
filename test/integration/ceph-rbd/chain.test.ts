/**
 * Full, then incrementals after writes (data, zero-writes, discards), then a resize: every
 * point restores bit-identical to `rbd export` of the snapshot it was taken from — to a file, to
 * a new RBD image through vprotect, and with stock `rbd import` + `rbd import-diff` alone.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupVm, type BackupVmResult } from '../../../src/engine/backup-vm.js';
import { encodePreamble } from '../../../src/repository/rbd-diff.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import cephRbd, { restoreToRbd } from '../../../strategies/ceph-rbd/index.js';
import { contextFor, exportSha, POOL, rbd, removeImage, requireCeph, restoredSha, ScratchImage, tempDir, type CephLab } from './fixture.js';

const MiB = 1 << 20;

describe('ceph-rbd: a chain of points against the lab cluster', () => {
  let ceph: CephLab;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let repo: Repository;
  let img: ScratchImage;
  const made: string[] = [];
  /** point id → sha256 of `rbd export` of its snapshot, taken before rotation removed it. */
  const reference = new Map<string, string>();
  const results: BackupVmResult[] = [];

  beforeAll(async () => {
    ceph = requireCeph();
    dir = await tempDir();
    repo = await openRepository(join(dir.path, 'repo'), { create: true });
    img = new ScratchImage(ceph);
    await img.create(48 * MiB);
  });

  afterAll(async () => {
    await img?.remove();
    for (const name of made) await removeImage(ceph, POOL, name);
    await dir?.cleanup();
  });

  async function backup(level: 'auto' | 'full' = 'auto'): Promise<BackupVmResult> {
    const r = await backupVm({ repo, strategy: cephRbd, target: img.target('vm-chain'), level, ctx: contextFor(ceph), command: 'test chain' });
    reference.set(r.pointId, await img.exportSha(`vprotect-${r.pointId}`));
    results.push(r);
    // Only the newest vprotect snapshot stays on the image.
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${r.pointId}`]);
    return r;
  }

  it('full backup of a mostly empty image stores only what is allocated', async () => {
    await img.io('write -P 0x11 0 4M', 'write -P 0x22 20M 1M', 'write -P 0x23 47M 1M');
    // Snapshots of other tools must survive every rotation.
    await rbd(ceph, 'snap', 'create', `${img.spec}@cinder-snap`);
    await rbd(ceph, 'snap', 'create', `${img.spec}@vprotect-by-hand`);
    const r = await backup();
    expect(r.level).toBe('full');
    expect(r.disks[0]!.reason).toMatch(/no previous point/);
    expect(r.disks[0]!.dataBytes).toBe(6 * MiB);
    expect(r.consistency?.level).toBe('crash');
    const m = (await repo.findPoint(r.pointId)).manifest;
    expect(m.disks[0]!.sourceAnchor).toMatchObject({ kind: 'rbd-snapshot', cluster: 'lab', pool: POOL, image: img.name, snapName: `vprotect-${r.pointId}`, size: 48 * MiB });
  });

  it('incremental after data writes, a zero-write and a discard', async () => {
    await img.io('write -P 0x33 8M 64k', 'write -P 0x44 40M 4M', 'write -z 0 1M', 'discard 20M 1M', 'write -P 0x45 30M 4096');
    const r = await backup();
    expect(r.level).toBe('incremental');
    expect(r.disks[0]!.reason).toMatch(/is on image/);
    const d = r.disks[0]!;
    // rbd wrote the diff into the point itself, and it is kept as rbd wrote it: the 64k + 4M + 4k
    // of data, and the zero-write and the discard as rbd reports them (Pacific sends a zeroed
    // part of an object as data of zeros, a whole discarded object as a zero range).
    expect(d.changedBytes).toBeGreaterThanOrEqual(64 * 1024 + 4 * MiB + 4096 + 2 * MiB);
    expect(d.dataBytes).toBeGreaterThanOrEqual(64 * 1024 + 4 * MiB + 4096);
    // Nothing but rbd's records: 17 bytes of header each, plus the preamble and the end.
    const point = await repo.findPoint(r.pointId);
    const { records, index } = point.manifest.disks[0]!;
    expect(d.storedBytes).toBeLessThanOrEqual(d.dataBytes + 17 * records + 200);
    // rbd wrote it: its records start where rbd's longer snapshot names put them, 18 bytes after
    // the repository's own preamble (two repeated size records fill the difference).
    const firstRecordAt = Number((await readFile(join(point.dir, index!), 'latin1')).split('\n')[1]!.split(' ')[3]);
    expect(firstRecordAt).toBe(encodePreamble({ fromSnap: point.manifest.parentId!, toSnap: r.pointId, size: d.size }).length + 18);
  });

  it('an incremental with no change is tiny and still exact', async () => {
    const r = await backup();
    expect(r.level).toBe('incremental');
    expect(r.disks[0]!.changedBytes).toBe(0);
  });

  it('a resized image gets a full, then incrementals continue', async () => {
    await rbd(ceph, 'resize', '--no-progress', '--size', `${64 * MiB}B`, img.spec);
    await img.io('write -P 0x55 60M 2M');
    const full = await backup();
    expect(full.level).toBe('full');
    expect(full.disks[0]!.reason).toMatch(/resized from 50331648 to 67108864/);
    await img.io('write -P 0x66 61M 64k', 'discard 0 4M');
    const inc = await backup();
    expect(inc.level).toBe('incremental');
  });

  it('a level "full" request starts a new chain even when an incremental is possible', async () => {
    await img.io('write -P 0x77 12M 1M');
    const r = await backup('full');
    expect(r.level).toBe('full');
    expect(r.disks[0]!.reason).toMatch(/full backup was asked/);
    await img.io('write -P 0x78 13M 8k');
    expect((await backup()).level).toBe('incremental');
  });

  it('other tools\' snapshots were never touched', async () => {
    const names = (await img.snapshots()).map((s) => s.name);
    expect(names).toContain('cinder-snap');
    expect(names).toContain('vprotect-by-hand');
  });

  it('every point restores bit-identical to a file', async () => {
    expect(results.length).toBe(7);
    for (const r of results) expect(await restoredSha(repo, r.pointId, 'vda', dir.path), `point ${r.pointId}`).toBe(reference.get(r.pointId));
  });

  it('every point restores bit-identical to a new RBD image', async () => {
    for (const r of results) {
      const name = `vpt-restore-${r.pointId.slice(-4)}-${made.length}`;
      made.push(name);
      const point = await repo.findPoint(r.pointId);
      await restoreToRbd({ repo, point, disk: 'vda', clusterName: 'lab', cluster: contextFor(ceph).inventory.cephClusters['lab']!, pool: POOL, image: name });
      expect(await exportSha(ceph, `${POOL}/${name}`), `point ${r.pointId}`).toBe(reference.get(r.pointId));
    }
  });

  it('restore refuses an existing image without overwrite, and replaces all of it with', async () => {
    const name = made[0]!; // holds point 0; overwrite it with the last point (another size, other data)
    const cluster = contextFor(ceph).inventory.cephClusters['lab']!;
    const last = results.at(-1)!;
    const point = await repo.findPoint(last.pointId);
    await expect(restoreToRbd({ repo, point, disk: 'vda', clusterName: 'lab', cluster, pool: POOL, image: name })).rejects.toThrow(/exists already/);
    await restoreToRbd({ repo, point, disk: 'vda', clusterName: 'lab', cluster, pool: POOL, image: name, overwrite: true });
    expect(await exportSha(ceph, `${POOL}/${name}`)).toBe(reference.get(last.pointId));
  });

  it('each chain imports with stock rbd import + rbd import-diff alone', async () => {
    // Chains: points 0..2 (full, inc, inc), 3..4, 5..6 — see docs/FORMAT.md §10.
    const chains = new Map<string, BackupVmResult[]>();
    for (const r of results) chains.set(r.chainId, [...(chains.get(r.chainId) ?? []), r]);
    expect(chains.size).toBe(3);
    for (const chain of chains.values()) {
      const name = `vpt-stock-${made.length}`;
      made.push(name);
      const spec = `${POOL}/${name}`;
      const full = await repo.findPoint(chain[0]!.pointId);
      await rbd(ceph, 'import', '--no-progress', join(full.dir, 'disks/vda.raw'), spec);
      await rbd(ceph, 'snap', 'create', `${spec}@${full.pointId}`);
      expect(await exportSha(ceph, `${spec}@${full.pointId}`)).toBe(reference.get(full.pointId));
      for (const inc of chain.slice(1)) {
        const p = await repo.findPoint(inc.pointId);
        await rbd(ceph, 'import-diff', '--no-progress', join(p.dir, 'disks/vda.rbdiff'), spec);
        // import-diff leaves the point's snapshot on the target: compare each step.
        expect(await exportSha(ceph, `${spec}@${inc.pointId}`), `point ${inc.pointId}`).toBe(reference.get(inc.pointId));
      }
    }
  });

  it('the manifest and metadata say where each disk came from', async () => {
    const p = await repo.findPoint(results[1]!.pointId);
    const meta = JSON.parse(await readFile(join(p.dir, 'metadata/ceph-rbd.json'), 'utf8')) as { disks: { pool: string; image: string; fromSnapshot?: { name: string } }[] };
    expect(meta.disks[0]).toMatchObject({ pool: POOL, image: img.name, fromSnapshot: { name: `vprotect-${results[0]!.pointId}` } });
    expect(p.manifest.strategy?.name).toBe('ceph-rbd');
  });
});
