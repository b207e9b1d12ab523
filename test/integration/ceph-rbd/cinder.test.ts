/**
 * A real Cinder volume of the lab's OpenStack (RBD backend: `volumes/volume-<id>`), created from
 * the lab's Glance image: full, then an incremental after a write; both restore bit-identical.
 * Also shows the operational catch: Cinder cannot delete a volume while a vprotect snapshot is
 * on its image, so the test removes it first (README: "Cinder volumes").
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupVm } from '../../../src/engine/backup-vm.js';
import { silentLogger } from '../../../src/log.js';
import { parseInventory } from '../../../src/inventory/load.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { createVolume, deleteVolume } from '../../../src/openstack/restore.js';
import { settingsFromInventory } from '../../../src/openstack/settings.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { BackupTarget } from '../../../src/strategy/contract.js';
import cephRbd from '../../../strategies/ceph-rbd/index.js';
import { labOpenStack } from '../openstack/lab.js';
import { contextFor, rbd, requireCeph, restoredSha, ScratchImage, tempDir, type CephLab } from './fixture.js';

const PATIENT = { attempts: 8, baseDelayMs: 1_000, maxDelayMs: 20_000 };

describe('ceph-rbd: a real Cinder volume', () => {
  let ceph: CephLab;
  let cloud: Cloud;
  let volumeId: string | undefined;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let repo: Repository;
  let img: ScratchImage;
  let target: BackupTarget;

  beforeAll(async () => {
    ceph = requireCeph();
    const lab = labOpenStack();
    const inventory = parseInventory('/lab.yaml', readFileSync(new URL('../../../examples/lab.yaml', import.meta.url), 'utf8'), { env: {}, offline: true });
    cloud = await Cloud.connect(settingsFromInventory('lab', inventory.clouds['lab']!, { env: {} }), { log: silentLogger, retry: PATIENT });
    const v = await createVolume(cloud, { sizeGb: 1, name: `vpt-ceph-rbd-${Date.now().toString(36)}`, imageId: lab.image.id, volumeType: lab.volumeType.name });
    volumeId = v.id;
    dir = await tempDir();
    repo = await openRepository(join(dir.path, 'repo'), { create: true });
    img = Object.assign(new ScratchImage(ceph, lab.volumeType.rbdPool), { name: `volume-${v.id}` });
    target = { vmId: `volume-${v.id}`, vmName: v.name ?? v.id, disks: [{ key: `volume-${v.id}`, kind: 'rbd', pool: lab.volumeType.rbdPool, image: `volume-${v.id}`, volumeId: v.id }] };
  });

  afterAll(async () => {
    if (volumeId) {
      // Cinder's RBD driver refuses to delete an image that has snapshots it does not know.
      for (const s of await img.vprotectSnapshots().catch(() => [])) await rbd(ceph, 'snap', 'rm', '--no-progress', `${img.spec}@${s}`);
      await deleteVolume(cloud, volumeId).catch((e: unknown) => console.error(`cleanup of volume ${volumeId}: ${String(e)}`));
    }
    await dir?.cleanup();
  });

  it('full, then incremental after a write; each restores bit-identical', async () => {
    const full = await backupVm({ repo, strategy: cephRbd, target, level: 'auto', ctx: contextFor(ceph), command: 'test cinder' });
    expect(full.level).toBe('full');
    const fullRef = await img.exportSha(`vprotect-${full.pointId}`);
    // The volume holds the Glance image: something, but far less than its 1 GiB.
    expect(full.disks[0]!.dataBytes).toBeGreaterThan(0);
    expect(full.disks[0]!.dataBytes).toBeLessThan(1 << 30);
    await img.io('write -P 0x5a 100M 128k');
    const inc = await backupVm({ repo, strategy: cephRbd, target, level: 'auto', ctx: contextFor(ceph), command: 'test cinder' });
    expect(inc.level).toBe('incremental');
    expect(inc.disks[0]!.dataBytes).toBe(128 * 1024);
    expect(await restoredSha(repo, full.pointId, target.disks![0]!.key, dir.path)).toBe(fullRef);
    expect(await restoredSha(repo, inc.pointId, target.disks![0]!.key, dir.path)).toBe(await img.exportSha(`vprotect-${inc.pointId}`));
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${inc.pointId}`]);
  });
});
