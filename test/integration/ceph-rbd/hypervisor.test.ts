/**
 * runOn: hypervisor — every rbd command runs on the lab's hypervisor over the SSH connection
 * (ssh2 pool, argv quoted), the export-diff stream comes back through the SSH channel. Full,
 * then incremental; both restore bit-identical; the inline keyring is uploaded to a private
 * temporary directory on the host and removed after the run.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupVm } from '../../../src/engine/backup-vm.js';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { runCommand } from '../../../src/transport/command.js';
import cephRbd from '../../../strategies/ceph-rbd/index.js';
import { requireLab } from '../../helpers/lab.js';
import { contextFor, inventoryFor, requireCeph, restoredSha, ScratchImage, tempDir, type CephLab } from './fixture.js';

const MiB = 1 << 20;

describe('ceph-rbd with runOn: hypervisor (rbd over SSH)', () => {
  let ceph: CephLab;
  let hv: HypervisorConfig;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let repo: Repository;
  let img: ScratchImage;

  beforeAll(async () => {
    ceph = requireCeph();
    const ssh = requireLab('hypervisor').ssh!;
    hv = { name: 'hv1', address: ssh.host, port: ssh.port, user: ssh.user, keyFile: ssh.keyFile, hostKey: { knownHostsFile: ssh.knownHostsFile } };
    dir = await tempDir();
    repo = await openRepository(join(dir.path, 'repo'), { create: true });
    img = new ScratchImage(ceph);
    await img.create(16 * MiB);
    await img.io('write -P 0x61 0 2M', 'write -P 0x62 10M 64k');
  });

  afterAll(async () => {
    await img?.remove();
    await dir?.cleanup();
  });

  it('full and incremental, restored bit-identical', async () => {
    const inventory = inventoryFor(ceph);
    // The keyring inline: it must reach the hypervisor as a private temporary file.
    inventory.cephClusters['lab']!.keyring = { inline: readFileSync(ceph.keyring, 'utf8') };
    inventory.hypervisors = [hv];
    const ctx = () => contextFor(ceph, { inventory, options: { runOn: 'hypervisor' } });
    const target = { ...img.target('vm-hv'), hypervisor: hv };
    const full = await backupVm({ repo, strategy: cephRbd, target, level: 'auto', ctx: ctx(), command: 'test hv' });
    expect(full.level).toBe('full');
    const fullRef = await img.exportSha(`vprotect-${full.pointId}`);
    await img.io('write -P 0x63 5M 128k', 'discard 0 64k');
    const inc = await backupVm({ repo, strategy: cephRbd, target, level: 'auto', ctx: ctx(), command: 'test hv' });
    expect(inc.level).toBe('incremental');
    expect(await restoredSha(repo, full.pointId, 'vda', dir.path)).toBe(fullRef);
    expect(await restoredSha(repo, inc.pointId, 'vda', dir.path)).toBe(await img.exportSha(`vprotect-${inc.pointId}`));
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${inc.pointId}`]);
    // No uploaded keyring is left behind on the host.
    const left = await runCommand(['sh', '-c', 'ls -d /tmp/vprotect-ceph.* 2>/dev/null || true']);
    expect(left.stdout.trim()).toBe('');
  });
});
