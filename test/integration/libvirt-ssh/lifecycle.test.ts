/**
 * libvirt-ssh in the situations around the plain backup: checkpoints lost when Nova undefines
 * and redefines a domain, snapshot mode on qcow2 with discards, the netcat data channel,
 * quiesce and hooks, and restoring a whole domain to the hypervisor under a new name.
 * Every point is restored and compared with the disk as it was at its snapshot.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/log.js';
import { restoreDomain } from '../../../strategies/libvirt-ssh/restore.js';
import { createDomain, destroyDomain, diskDigest, expectOnlyNewestBitmap, guestWrites, harness, hypervisorState, KiB, labEnv, liveBitmaps, MiB, scatteredWrites, sh, tryVirsh, virsh, type LabEnv } from './fixture.js';

let env: LabEnv;
const domains: string[] = [];

beforeAll(() => {
  env = labEnv();
});

afterAll(() => {
  for (const d of domains) destroyDomain(env, d);
});

/**
 * What Nova does on a hard reboot (and, without the define, on delete): destroy, undefine
 * WITHOUT --checkpoints-metadata (libvirt refuses that while a checkpoint is defined: "cannot
 * delete inactive domain with 1 checkpoints"), define the same XML, start.
 */
function novaHardReboot(name: string, between?: () => void): void {
  const xml = virsh('dumpxml', '--inactive', name);
  const file = join(env.scratch, `${name}.reboot.xml`);
  writeFileSync(file, xml);
  virsh('destroy', name);
  virsh('undefine', name);
  between?.();
  virsh('define', file);
  virsh('start', name);
}

/** The hypervisor round trips of a run, in order ("sh", "virsh cmd,cmd"), from the strategy's debug log. */
function hypervisorCalls(): { log: Logger; after(command: string): string | undefined } {
  const calls: string[] = [];
  const log: Logger = {
    debug: (m, f) => {
      if (m === 'hypervisor sh') calls.push('sh');
      else if (m === 'hypervisor virsh') calls.push(`virsh ${(f!['commands'] as string[]).join(',')}`);
      else if (/NBD session open .*opened during the snapshot/.test(m)) calls.push('read with the early NBD session');
    },
    info: () => {},
    warn: () => {},
    error: () => {},
  };
  return { log, after: (command) => calls[calls.findIndex((c) => c.startsWith(`virsh ${command}`)) + 1] };
}

describe('Nova undefines the domain between backups (hard reboot)', () => {
  const name = `vpt-lost-${process.pid}`;

  it('the undefine succeeds (no checkpoint metadata), the next incremental reads the kept bitmap; without it a full; the chain still restores', async () => {
    domains.push(name);
    const dom = createDomain(env, name, [{ target: 'vda', format: 'qcow2' }]);
    const h = await harness(env, name);
    const full = await h.backup('auto');
    expect(await h.restoredDigest(full.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    await expectOnlyNewestBitmap(h, name, 'after the full');

    guestWrites(name, 0, scatteredWrites(16, 64 * KiB, 11, 8 * MiB, 60 * MiB));
    novaHardReboot(name);
    expect(tryVirsh('checkpoint-list', name, '--name')?.trim()).toBe('');
    const incCalls = hypervisorCalls();
    const inc = await h.backup('auto', { log: incCalls.log });
    expect(inc.level, inc.disks[0]!.reason).toBe('incremental');
    // The plan's shell round trip wrote the snapshot's journal and job files: backup-begin follows the redefine directly.
    expect(incCalls.after('checkpoint-create')).toBe('virsh backup-begin');
    // The NBD session opened while checkpoint-dumpxml ran is the one the read used.
    expect(incCalls.after('checkpoint-dumpxml')).toBe('read with the early NBD session');
    expect(inc.disks[0]!.dataBytes).toBe(16 * 64 * KiB);
    expect(await h.restoredDigest(inc.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    await expectOnlyNewestBitmap(h, name, 'after the incremental');

    // Now the bitmap goes too (image rebuilt): nothing to redefine from, so a full with the reason.
    guestWrites(name, 0, scatteredWrites(4, 64 * KiB, 12, 8 * MiB, 60 * MiB));
    const [bitmap] = liveBitmaps(name, dom.disks[0]!.path);
    expect(bitmap).toMatch(/^vprotect-run-/);
    novaHardReboot(name, () => sh('qemu-img', ['bitmap', '--remove', dom.disks[0]!.path, bitmap!]));
    const fallbackCalls = hypervisorCalls();
    const fallback = await h.backup('auto', { log: fallbackCalls.log });
    expect(fallback.level).toBe('full');
    // The failed redefine changed the plan: the snapshot writes the full job's files again first.
    expect(fallbackCalls.after('checkpoint-create')).toBe('sh');
    expect(fallback.disks[0]!.reason).toMatch(/checkpoint vprotect-run-\S+ is gone and could not be redefined/);
    expect(await h.restoredDigest(fallback.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    await expectOnlyNewestBitmap(h, name, 'after the fallback full');
    // The older points of the first chain still restore.
    expect(await h.restoredDigest(inc.pointId, 'vda')).not.toBe('');
  }, 300_000);
});

describe('snapshot mode on a qcow2 disk, over the netcat data channel', () => {
  const name = `vpt-snap-${process.pid}`;

  it('kept overlay: discarded and write-zeroed ranges restore as zeros; restore defines and starts a renamed domain', async () => {
    domains.push(name, `${name}-r`);
    createDomain(env, name, [{ target: 'vda', format: 'qcow2' }]);
    const h = await harness(env, name, { mode: 'snapshot', transport: 'netcat' });
    const full = await h.backup('auto');
    expect(full.disks[0]!.reason).toMatch(/mode snapshot/);
    expect(await h.restoredDigest(full.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));

    // Discard 1 MiB of the random data, write zeros over the 'Z' megabyte, and some data.
    guestWrites(name, 0, [`discard ${2 * MiB} ${MiB}`, `write -z ${32 * MiB} ${MiB}`, `write -P 0x77 ${20 * MiB} ${512 * KiB}`]);
    const inc = await h.backup('auto');
    expect(inc.level).toBe('incremental');
    expect(inc.disks[0]!.dataBytes).toBe(512 * KiB);
    expect(inc.disks[0]!.zeroBytes).toBe(2 * MiB);
    const ref = diskDigest(env, name, 'vda');
    expect(await h.restoredDigest(inc.pointId, 'vda')).toBe(ref);
    const state = hypervisorState(env, name);
    expect(state.job || state.runDirs.length > 0).toBe(false);

    // Restore the whole domain next to the original, renamed, and start it.
    const point = await h.repo.findPoint(inc.pointId);
    const r = await restoreDomain({ repo: h.repo, point, hypervisor: env.hv, env: {}, name: `${name}-r`, dir: env.vms, format: 'qcow2', start: true });
    expect(r.started).toBe(true);
    expect(virsh('domstate', `${name}-r`).trim()).toBe('running');
    expect(r.uuid).not.toBe(virsh('domuuid', name).trim());
    expect(diskDigest(env, `${name}-r`, 'vda')).toBe(ref);
    // Its serial log is its own, not the original's.
    expect(virsh('dumpxml', `${name}-r`)).toContain(`${name}-r.serial.log`);
    // A second restore under the same name is refused, and leaves the first alone.
    await expect(restoreDomain({ repo: h.repo, point, hypervisor: env.hv, env: {}, name: `${name}-r`, dir: env.vms })).rejects.toThrow(/already exists/);
    expect(virsh('domstate', `${name}-r`).trim()).toBe('running');
  }, 300_000);
});

describe('consistency: quiesce and hooks', () => {
  const name = `vpt-qui-${process.pid}`;

  it('quiesce try without an agent is crash-consistent and says so; require fails and leaves nothing; hooks run and a failing one aborts', async () => {
    domains.push(name);
    createDomain(env, name, [{ target: 'vda', format: 'qcow2' }], { agentChannel: true });
    const h = await harness(env, name);
    const marker = join(env.scratch, 'hook-marker');
    const tried = await h.backup('full', {
      policy: {
        quiesce: 'try',
        hooks: {
          preSnapshot: [{ run: `echo pre >> ${marker}`, where: 'hypervisor', timeoutSeconds: 10 }],
          postSnapshot: [{ run: ['sh', '-c', `echo post >> ${marker}`], where: 'local' }],
        },
      },
    });
    expect(tried.consistency?.level).toBe('app');
    expect(String(tried.consistency?.['note'])).toMatch(/guest agent is not connected|not responding/i);
    expect(sh('cat', [marker])).toBe('pre\npost\n');
    expect(await h.restoredDigest(tried.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));

    await expect(h.backup('incremental', { policy: { quiesce: 'require' } })).rejects.toThrow(/cannot quiesce/);
    await expect(h.backup('incremental', { policy: { hooks: { preSnapshot: [{ run: 'exit 3', onFailure: 'abort' }] } } })).rejects.toThrow(/pre-snapshot hook "exit 3" \(hypervisor\) failed with exit status 3/);
    const state = hypervisorState(env, name);
    expect(state).toMatchObject({ job: false, runDirs: [], checkpoints: [] });
    await expectOnlyNewestBitmap(h, name, 'after the failed runs');

    // The chain goes on from the point before the failures.
    guestWrites(name, 0, [`write -P 0x33 ${9 * MiB} ${64 * KiB}`]);
    const inc = await h.backup('incremental', { policy: { quiesce: 'try' } });
    expect(inc.level).toBe('incremental');
    expect(inc.consistency?.level).toBe('crash');
    expect(inc.disks[0]!.dataBytes).toBe(64 * KiB);
    expect(await h.restoredDigest(inc.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
  }, 300_000);
});
