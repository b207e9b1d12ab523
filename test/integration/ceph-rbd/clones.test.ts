/**
 * Old vprotect snapshots that someone cloned: rotation never removes a snapshot with children
 * (clone v2 would send it to the trash namespace, clone v1 needs it protected), says why in the
 * run's warnings, and removes it once the clone is gone. Rotation asks `rbd children` only when
 * the image can have clones (op_features clone-parent, or a protected snapshot): these are the
 * two ways a clone can exist, so both are tested.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupVm } from '../../../src/engine/backup-vm.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import cephRbd from '../../../strategies/ceph-rbd/index.js';
import { contextFor, rbd, removeImage, requireCeph, restoredSha, ScratchImage, tempDir, type CephLab } from './fixture.js';

const MiB = 1 << 20;
const VM = 'vm-clones';

describe('ceph-rbd: rotation and clones of old snapshots', () => {
  let ceph: CephLab;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let repo: Repository;
  let img: ScratchImage;
  const clones: string[] = [];
  let pattern = 0x30;

  const backup = async () => {
    await img.io(`write -P 0x${(pattern++).toString(16)} ${(pattern % 12) * MiB} 256k`);
    return backupVm({ repo, strategy: cephRbd, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' });
  };

  /** Once the clone is gone, the next backup removes the kept snapshot and restores like its own. */
  const removeCloneThenBackup = async (clone: string) => {
    await rbd(ceph, 'rm', '--no-progress', `volumes/${clone}`);
    const next = await backup();
    expect(next.level).toBe('incremental');
    expect(next.warnings).toEqual([]);
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${next.pointId}`]);
    expect(await restoredSha(repo, next.pointId, 'vda', dir.path)).toBe(await img.exportSha(`vprotect-${next.pointId}`));
  };

  beforeAll(async () => {
    ceph = requireCeph();
    dir = await tempDir();
    repo = await openRepository(join(dir.path, 'repo'), { create: true });
    img = new ScratchImage(ceph);
    await img.create(16 * MiB);
    expect((await backup()).level).toBe('full');
  });

  afterAll(async () => {
    for (const c of clones) await removeImage(ceph, 'volumes', c);
    await img?.remove();
    await dir?.cleanup();
  });

  it('a v2 clone (no protection): the snapshot is kept with the reason, removed once the clone is gone', async () => {
    const [anchor] = await img.vprotectSnapshots();
    const clone = `${img.name}-c2`;
    clones.push(clone);
    await rbd(ceph, 'clone', '--rbd-default-clone-format', '2', `${img.spec}@${anchor}`, `volumes/${clone}`);

    const second = await backup();
    expect(second.level).toBe('incremental');
    expect(second.warnings.join('\n')).toMatch(new RegExp(`${anchor} has clones \\(volumes/${clone}\\).*flatten`));
    expect(await img.vprotectSnapshots()).toEqual([anchor, `vprotect-${second.pointId}`]);
    // Not in rbd's trash namespace either: still an ordinary snapshot the clone reads from.
    expect((await img.snapshots()).map((s) => s.name)).toContain(anchor);

    await removeCloneThenBackup(clone);
  });

  it('a v1 clone of a protected snapshot: kept; once the clone is gone it is unprotected and removed', async () => {
    const [anchor] = await img.vprotectSnapshots();
    const clone = `${img.name}-c1`;
    clones.push(clone);
    await rbd(ceph, 'snap', 'protect', `${img.spec}@${anchor}`);
    await rbd(ceph, 'clone', '--rbd-default-clone-format', '1', `${img.spec}@${anchor}`, `volumes/${clone}`);

    const next = await backup();
    expect(next.warnings.join('\n')).toMatch(new RegExp(`${anchor} has clones \\(volumes/${clone}\\)`));
    expect(await img.vprotectSnapshots()).toEqual([anchor, `vprotect-${next.pointId}`]);

    await removeCloneThenBackup(clone);
  });
});
