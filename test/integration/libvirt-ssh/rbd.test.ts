/**
 * libvirt-ssh with an RBD network disk beside a qcow2 file disk, against the lab's sshd,
 * libvirtd and Ceph: the RBD disk is handed to the ceph-rbd session (rbd on the hypervisor over
 * the same SSH connection, with the hypervisor's ceph.conf/keyring), snapshotted in the same
 * pause as the file disk's backup job. Every point restores bit-identical: the file disk to its
 * content read at the same moment, the RBD disk to `rbd export` of the point's own snapshot.
 * A failed run removes the RBD snapshot it made and leaves no job, checkpoint or run dir.
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Inventory } from '../../../src/inventory/types.js';
import type { ConsistencyReport } from '../../../src/strategy/contract.js';
import { createDomain, destroyDomain, diskDigest, expectOnlyNewestBitmap, guestWrites, harness, hypervisorState, KiB, labEnv, MiB, scatteredWrites, sh, type LabEnv } from './fixture.js';

let env: LabEnv;
let ceph: { conf: string; keyring: string; user: string; secret: string };
const name = `vpt-rbd-${process.pid}`;
const image = `vms/${name}`;

function rbd(...args: string[]): string {
  return sh('rbd', ['--id', ceph.user, '--conf', ceph.conf, '--keyring', ceph.keyring, ...args]);
}

/** The vprotect snapshots on the test image, oldest first. */
function vprotectSnaps(): string[] {
  return (JSON.parse(rbd('snap', 'ls', '--format', 'json', image)) as { name: string }[]).map((s) => s.name).filter((n) => n.startsWith('vprotect-'));
}

/** sha256 of `rbd export` of one snapshot: the reference for a point of the RBD disk. */
function snapDigest(snap: string): string {
  const file = join(env.scratch, `export-${snap}.raw`);
  rbd('export', '--no-progress', `${image}@${snap}`, file);
  const digest = createHash('sha256').update(readFileSync(file)).digest('hex');
  rmSync(file, { force: true });
  return digest;
}

beforeAll(() => {
  env = labEnv();
  const c = env.lab.ceph as { conf: string; keyring: string; user: string; libvirtSecretUuid?: string } | undefined;
  if (!c?.libvirtSecretUuid) throw new Error('the lab has no Ceph (or no libvirt secret for it): start it with `npm run lab:up`');
  ceph = { conf: c.conf, keyring: c.keyring, user: c.user, secret: c.libvirtSecretUuid };
  // 64 MiB image: random data at 1 MiB (4 MiB), 'Z' at 32 MiB, holes elsewhere.
  const seed = join(env.scratch, 'rbd-seed.raw');
  sh('truncate', ['-s', String(64 * MiB), seed]);
  sh('sh', ['-c', 'head -c 4194304 /dev/urandom | dd of="$1" bs=1M seek=1 conv=notrunc status=none && head -c 1048576 /dev/zero | tr "\\0" Z | dd of="$1" bs=1M seek=32 conv=notrunc status=none', 'sh', seed]);
  try {
    rbd('rm', '--no-progress', image);
  } catch {
    /* not there */
  }
  rbd('import', '--no-progress', seed, image);
  rmSync(seed);
  const mon = (env.lab.ceph as { monitors?: string[] }).monitors?.[0] ?? '127.0.0.1:6789';
  const [host, port] = mon.split(':') as [string, string];
  createDomain(env, name, [{ target: 'vda', format: 'qcow2', backing: true }], {
    extraDisksXml: `<disk type='network' device='disk'><driver name='qemu' type='raw' cache='writeback' discard='unmap'/><auth username='${ceph.user}'><secret type='ceph' uuid='${ceph.secret}'/></auth><source protocol='rbd' name='${image}'><host name='${host}' port='${port}'/></source><target dev='vdb' bus='virtio'/></disk>`,
  });
}, 120_000);

afterAll(() => {
  destroyDomain(env, name);
  try {
    rbd('snap', 'purge', '--no-progress', image);
    rbd('rm', '--no-progress', image);
  } catch (err) {
    console.log(`could not remove ${image}: ${String(err)}`);
  }
});

describe('a domain with a qcow2 file disk and an RBD disk', () => {
  it('full → guest writes → incremental → failed run → incremental: every point restores bit-identical, one consistency point, no leftovers', async () => {
    const h = await harness(env, name);

    // Full, with hooks on the backup node around the snapshot: both kinds of disk inside them.
    const full = await h.backup('auto', { policy: { hooks: { preSnapshot: [{ run: ['true'], where: 'local' }], postSnapshot: [{ run: ['true'], where: 'local' }] } } });
    expect(full.level).toBe('full');
    const reasons = Object.fromEntries(full.disks.map((d) => [d.key, d.reason]));
    expect(reasons['vda']).toMatch(/checkpoint/);
    expect(reasons['vdb']).toMatch(/RBD snapshot/);
    const consistency = full.consistency as ConsistencyReport;
    expect(consistency.level).toBe('app');
    expect(consistency.note).toMatch(/2 snapshot calls \(backup job, 1 RBD snapshot\(s\)\) made with the domain paused/);
    expect(consistency.hooks?.map((x) => `${x.phase}:${x.ok}`)).toEqual(['pre:true', 'post:true']);
    expect(vprotectSnaps()).toEqual([`vprotect-${full.pointId}`]);
    const ref0 = { vda: diskDigest(env, name, 'vda'), vdb: snapDigest(`vprotect-${full.pointId}`) };
    expect(await h.restoredDigest(full.pointId, 'vda')).toBe(ref0.vda);
    expect(await h.restoredDigest(full.pointId, 'vdb')).toBe(ref0.vdb);
    // Holes stay holes on the RBD disk too: 4 MiB random + 1 MiB 'Z'.
    expect(full.disks.find((d) => d.key === 'vdb')!.dataBytes).toBeLessThanOrEqual(5 * MiB);
    const manifest = (await h.repo.findPoint(full.pointId)).manifest;
    const anchor = manifest.disks.find((d) => d.key === 'vdb')!.sourceAnchor as { kind: string; cluster: string; snapName: string };
    expect(anchor).toMatchObject({ kind: 'rbd-snapshot', cluster: 'hypervisor', snapName: `vprotect-${full.pointId}` });
    await expectOnlyNewestBitmap(h, name, 'after the full');

    // Guest writes on both disks, including a zeroed MiB on the RBD disk.
    guestWrites(name, 0, scatteredWrites(16, 64 * KiB, 5, 8 * MiB, 60 * MiB));
    guestWrites(name, 1, [...scatteredWrites(16, 64 * KiB, 6, 8 * MiB, 60 * MiB), `write -z ${2 * MiB} ${MiB}`]);
    const inc1 = await h.backup('auto');
    expect(inc1.level, JSON.stringify(inc1.disks.map((d) => d.reason))).toBe('incremental');
    for (const d of inc1.disks) expect(d.dataBytes, d.key).toBe(16 * 64 * KiB);
    // The zeroed MiB travels as a zero record (rbd export-diff may report more of the image as
    // zero records: they cost nothing and the restore below checks every byte).
    expect(inc1.disks.find((d) => d.key === 'vdb')!.zeroBytes).toBeGreaterThanOrEqual(MiB);
    // Rotation: only the newest point's snapshot stays on the image.
    expect(vprotectSnaps()).toEqual([`vprotect-${inc1.pointId}`]);
    const ref1 = { vda: diskDigest(env, name, 'vda'), vdb: snapDigest(`vprotect-${inc1.pointId}`) };
    expect(ref1.vdb).not.toBe(ref0.vdb);
    expect(await h.restoredDigest(inc1.pointId, 'vda')).toBe(ref1.vda);
    expect(await h.restoredDigest(inc1.pointId, 'vdb')).toBe(ref1.vdb);
    expect(await h.restoredDigest(full.pointId, 'vdb')).toBe(ref0.vdb);

    // A failed run (a post-snapshot hook fails after both snapshots were made): its RBD
    // snapshot, backup job and checkpoint go; the previous point's anchors stay.
    guestWrites(name, 1, [`write -P 0x77 ${20 * MiB} ${256 * KiB}`]);
    await expect(h.backup('auto', { policy: { hooks: { postSnapshot: [{ run: ['false'], where: 'local' }] } } })).rejects.toThrow(/post-snapshot hook "false"/);
    expect(vprotectSnaps()).toEqual([`vprotect-${inc1.pointId}`]);
    const state = hypervisorState(env, name);
    expect(state.job).toBe(false);
    expect(state.runDirs).toEqual([]);
    await expectOnlyNewestBitmap(h, name, 'after the failed run');

    // The next run is still incremental from inc1 and carries the write made before the failed run.
    const inc2 = await h.backup('auto');
    expect(inc2.level).toBe('incremental');
    expect(inc2.disks.find((d) => d.key === 'vdb')!.dataBytes).toBe(256 * KiB);
    expect(inc2.disks.find((d) => d.key === 'vda')!.dataBytes).toBe(0);
    expect(vprotectSnaps()).toEqual([`vprotect-${inc2.pointId}`]);
    expect(await h.restoredDigest(inc2.pointId, 'vdb')).toBe(snapDigest(`vprotect-${inc2.pointId}`));
    expect(await h.restoredDigest(inc2.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    expect(await h.restoredDigest(inc1.pointId, 'vdb')).toBe(ref1.vdb);
  }, 400_000);

  it('rbd on the backup node with the inventory cluster: a full of the RBD disk restores bit-identical', async () => {
    const h = await harness(env, name);
    const inventory: Partial<Inventory> = { cephClusters: { lab: { conf: { path: ceph.conf }, keyring: { path: ceph.keyring }, user: ceph.user } } };
    const r = await h.backup('auto', { options: { rbd: { runOn: 'backup-node' } }, inventory });
    // Another cluster name than the previous point's anchor ("hypervisor"): a full, said so.
    expect(r.level).toBe('full');
    expect(r.disks.find((d) => d.key === 'vdb')!.reason).toMatch(/another ceph cluster/);
    expect(vprotectSnaps()).toEqual([`vprotect-${r.pointId}`]);
    expect(await h.restoredDigest(r.pointId, 'vdb')).toBe(snapDigest(`vprotect-${r.pointId}`));
  }, 300_000);

  it('bad rbd options are refused with what to fix', async () => {
    const h = await harness(env, name);
    await expect(h.backup('auto', { options: { rbd: { runOn: 'elsewhere' } } })).rejects.toThrow(/strategyOptions\.rbd\.runOn must be hypervisor \| backup-node, not "elsewhere"/);
    await expect(h.backup('auto', { options: { rbd: { runOn: 'backup-node' } } })).rejects.toThrow(/no cephClusters entry/);
    expect(hypervisorState(env, name).runDirs).toEqual([]);
  }, 120_000);
});
