/**
 * The binary as a user runs it (needs `npm run build`): `vprotect backup --rbd`, `restore
 * --to-rbd` (new image, refused without --overwrite, replaced with it) and `cleanup` listing and
 * removing a stale vprotect snapshot while keeping the anchor.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../helpers/cli.js';
import { exportSha, fileSha, rbd, removeImage, requireCeph, ScratchImage, tempDir, type CephLab } from './fixture.js';

// Not `volumes`: cleanup looks at whole pools, and other tests keep vprotect snapshots there.
const POOL = 'images';

const MiB = 1 << 20;

describe('ceph-rbd through the vprotect binary', () => {
  let ceph: CephLab;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let img: ScratchImage;
  let inventory: string;
  const restored = `vpt-cli-restore-${process.pid}`;
  const points: string[] = [];

  beforeAll(async () => {
    ceph = requireCeph();
    dir = await tempDir();
    img = new ScratchImage(ceph, POOL);
    await img.create(16 * MiB);
    await img.io('write -P 0x41 0 1M', 'write -P 0x42 9M 64k');
    inventory = join(dir.path, 'vprotect.yaml');
    await writeFile(
      inventory,
      [
        'version: 1',
        'cephClusters:',
        '  lab:',
        `    user: ${ceph.user}`,
        `    conf: {path: ${ceph.conf}}`,
        `    keyring: {path: ${ceph.keyring}}`,
        `    pools: [${POOL}]`,
        'destinations:',
        '  local:',
        '    type: local',
        `    path: ${join(dir.path, 'repo')}`,
        '',
      ].join('\n'),
    );
  });

  afterAll(async () => {
    await img?.remove();
    await removeImage(ceph, POOL, restored);
    await dir?.cleanup();
  });

  const cli = (...args: string[]) => runCli(['-c', inventory, '--json', ...args], { timeoutMs: 300_000 });

  it('backs up twice (full, incremental) and keeps one snapshot', async () => {
    for (const expected of ['full', 'incremental']) {
      const r = await cli('backup', '--rbd', img.spec);
      expect(r.code, r.stderr).toBe(0);
      const doc = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ok?: { pointId: string; level: string }[] };
      const ok = doc.ok ?? [];
      expect(ok[0]?.level, r.stdout).toBe(expected);
      points.push(ok[0]!.pointId);
      await img.io('write -P 0x43 5M 8k');
    }
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${points[1]}`]);
  });

  it('restore --to-rbd makes a new image equal to the snapshot, refuses to overwrite, and overwrites with --overwrite', async () => {
    const ref = await img.exportSha(`vprotect-${points[1]}`);
    let r = await cli('restore', '--point', points[1]!, '--to-rbd', `${POOL}/${restored}`);
    expect(r.code, r.stderr).toBe(0);
    expect(await exportSha(ceph, `${POOL}/${restored}`)).toBe(ref);
    r = await cli('restore', '--point', points[0]!, '--to-rbd', `${POOL}/${restored}`);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/exists already/);
    r = await cli('restore', '--point', points[0]!, '--to-rbd', `${POOL}/${restored}`, '--overwrite');
    expect(r.code, r.stderr).toBe(0);
    // Point 0 has no snapshot any more (rotated): its reference is what restore-to-file gives.
    const file = join(dir.path, 'p0.raw');
    expect((await cli('restore', '--point', points[0]!, '--to-file', file)).code).toBe(0);
    expect(await exportSha(ceph, `${POOL}/${restored}`)).toBe(await fileSha(file));
  });

  it('cleanup lists a stale vprotect snapshot (not the anchor), and removes it', async () => {
    const stale = 'vprotect-20200101T000000Z-dead';
    await rbd(ceph, 'snap', 'create', `${img.spec}@${stale}`);
    let r = await cli('cleanup', '--list');
    expect(r.code, r.stderr).toBe(0);
    const listed = (JSON.parse(r.stdout) as { leftovers: { where: string; what: string; status: string }[] }).leftovers.filter((l) => l.where.includes(img.name));
    expect(listed.map((l) => [l.what.split(':')[0], l.status])).toEqual([[`snapshot ${stale}`, 'listed']]);
    expect((await img.snapshots()).map((s) => s.name)).toContain(stale);
    r = await cli('cleanup');
    expect(r.code, r.stderr).toBe(0);
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${points[1]}`]);
  });
});
