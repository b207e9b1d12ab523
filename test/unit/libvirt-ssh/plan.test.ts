/** Per-disk decisions: which disks, which mode, full or incremental and why. */
import { describe, expect, it } from 'vitest';
import { backupJobXml, checkpointDisks, checkpointForRedefine, checkpointName, checkpointXml } from '../../../strategies/libvirt-ssh/checkpoint-mode.js';
import type { DomainDisk, DomainInfo } from '../../../strategies/libvirt-ssh/domain-xml.js';
import type { Journal } from '../../../strategies/libvirt-ssh/journal.js';
import { chooseMode, decideLevel, parseOptions, selectDisks, type DiskAnchor, type DiskObservation } from '../../../strategies/libvirt-ssh/plan.js';
import { pointIsFromRun } from '../../../strategies/libvirt-ssh/recovery.js';
import { overlayPath, overlayRecord, snapshotArgs } from '../../../strategies/libvirt-ssh/snapshot-mode.js';

const disk = (o: Partial<DomainDisk>): DomainDisk => ({ target: 'vda', device: 'disk', type: 'file', format: 'qcow2', path: '/vms/a.qcow2', readonly: false, shareable: false, backing: [], ...o });
const domain = (disks: DomainDisk[]): DomainInfo => ({ name: 'a', uuid: 'u-1', running: true, disks, guestAgentChannel: false });

describe('selectDisks', () => {
  it('keeps file and block disks, hands RBD disks to ceph-rbd, skips removable media and excluded disks', () => {
    const s = selectDisks(
      domain([
        disk({ target: 'vda' }),
        disk({ target: 'vdb', format: 'raw', path: '/vms/b.raw' }),
        disk({ target: 'sda', device: 'cdrom', format: 'raw', path: '/iso/x.iso' }),
        disk({ target: 'vdc', type: 'block', format: 'raw', path: '/dev/vg/lv' }),
        disk({ target: 'vdd' }),
        disk({ target: 'vde', type: 'network', protocol: 'rbd', format: 'raw', rbd: { pool: 'vms', image: 'x_disk', hosts: [] } }),
      ]),
      { excludeDisks: ['vdd'] },
    );
    expect(s.disks.map((d) => d.target)).toEqual(['vda', 'vdb', 'vdc']);
    expect(s.skipped).toEqual([
      { target: 'sda', reason: 'cdrom: removable media are not backed up' },
      { target: 'vdd', reason: 'excluded by the policy (excludeDisks)' },
    ]);
    expect(s.rbd.map((d) => d.target)).toEqual(['vde']);
    expect(s.refused).toEqual([]);
  });

  it('refuses an RBD snapshot used as a disk, and other network protocols, with excludeDisks as the way out', () => {
    const s = selectDisks(
      domain([
        disk({ target: 'vda', type: 'network', protocol: 'rbd', rbd: { pool: 'vms', image: 'x', snapshot: 's1', hosts: [] } }),
        disk({ target: 'vdb', type: 'network', protocol: 'iscsi' }),
      ]),
      { excludeDisks: [] },
    );
    expect(s.refused.map((r) => r.reason)).toEqual(['RBD disk vms/x@s1 is a snapshot, not an image', 'network disk (iscsi protocol) is not supported']);
    expect(s.refused.every((r) => /excludeDisks/.test(r.hint))).toBe(true);
  });

  it('refuses formats it cannot read', () => {
    expect(selectDisks(domain([disk({ format: 'vmdk' })]), { excludeDisks: [] }).refused[0]!.reason).toMatch(/vmdk/);
  });
});

describe('chooseMode', () => {
  it('auto: checkpoint for qcow2 files, kept overlay for raw and block devices', () => {
    expect(chooseMode(disk({}), 'auto').mode).toBe('checkpoint');
    expect(chooseMode(disk({ format: 'raw' }), 'auto')).toEqual({ mode: 'snapshot', reason: 'raw file: kept overlay (checkpoints need qcow2)' });
    expect(chooseMode(disk({ type: 'block', format: 'raw' }), 'auto').mode).toBe('snapshot');
  });
  it('a disk already on a kept overlay stays in snapshot mode, whatever the policy', () => {
    expect(chooseMode(disk({ path: '/vms/b.raw.vprotect-run-20261124T000000Z-abcd' }), 'checkpoint')).toEqual({ mode: 'snapshot', reason: 'runs on the overlay kept by the previous backup' });
  });
  it('checkpoint asked for a raw disk falls back to a kept overlay, with the reason', () => {
    expect(chooseMode(disk({ format: 'raw' }), 'checkpoint').reason).toMatch(/checkpoints need a qcow2 file/);
    expect(chooseMode(disk({}), 'snapshot').mode).toBe('snapshot');
  });
});

describe('decideLevel', () => {
  const cp: DiskAnchor = { strategy: 'libvirt-ssh', mode: 'checkpoint', domainUuid: 'u-1', checkpoint: 'vprotect-run-1', checkpointXml: '<domaincheckpoint/>', path: '/vms/a.qcow2' };
  const base: DiskObservation = { disk: disk({}), mode: 'checkpoint', modeReason: 'qcow2 disk: libvirt checkpoint', size: 100, running: true, previous: { size: 100, anchor: cp }, domainUuid: 'u-1', checkpoints: ['vprotect-run-1'] };
  const level = (o: Partial<DiskObservation>, l: 'auto' | 'full' | 'incremental' = 'auto') => decideLevel({ ...base, ...o }, l);

  it('incremental when the checkpoint is on the disk', () => {
    expect(level({})).toEqual({ level: 'incremental', reason: 'checkpoint vprotect-run-1 is on the disk; qcow2 disk: libvirt checkpoint' });
  });
  it('full, with the reason, in every other case', () => {
    expect(level({}, 'full').reason).toMatch(/^full backup requested/);
    expect(level({ previous: undefined }).reason).toMatch(/^no previous point/);
    expect(level({ previous: { size: 100, anchor: undefined } }).reason).toMatch(/no libvirt-ssh anchor/);
    expect(level({ domainUuid: 'u-2' }).reason).toMatch(/re-created \(UUID u-1 → u-2\)/);
    expect(level({ size: 200 }).reason).toMatch(/size changed \(100 → 200 bytes\)/);
    expect(level({ running: false }).reason).toMatch(/not running/);
    expect(level({ mode: 'snapshot' }).reason).toMatch(/previous point used mode checkpoint, this one uses snapshot/);
    expect(level({ checkpoints: [] }).reason).toMatch(/^checkpoint vprotect-run-1 is gone;/);
    expect(level({ checkpoints: [], redefineFailure: 'bitmap missing' }).reason).toMatch(/is gone and could not be redefined \(bitmap missing\)/);
    expect(level({ disk: disk({ path: '/vms/other.qcow2' }) }).reason).toMatch(/disk file changed/);
  });
  it('snapshot mode: incremental only while the disk runs on the kept overlay', () => {
    const ov: DiskAnchor = { strategy: 'libvirt-ssh', mode: 'snapshot', domainUuid: 'u-1', overlay: '/vms/b.raw.vprotect-run-1', path: '/vms/b.raw' };
    const snap = { mode: 'snapshot' as const, previous: { size: 100, anchor: ov } };
    expect(level({ ...snap, disk: disk({ path: '/vms/b.raw.vprotect-run-1' }) }).level).toBe('incremental');
    expect(level({ ...snap, disk: disk({ path: '/vms/b.raw' }) }).reason).toMatch(/no longer runs on the kept overlay/);
  });
});

describe('checkpoint and backup job XML', () => {
  it('per-disk backup mode, disks not backed up said so, scratch files in the run dir', () => {
    const xml = backupJobXml({
      incremental: 'cp1',
      server: { transport: 'unix', socket: '/run/x/job.sock' },
      disks: [
        { target: 'vda', mode: 'incremental', scratch: '/run/x/vda.scratch', bitmap: true },
        { target: 'vdb', mode: 'full', scratch: '/run/x/vdb.scratch', bitmap: true },
      ],
      otherDisks: ['vdc'],
    });
    expect(xml).toBe(
      "<domainbackup mode='pull'><incremental>cp1</incremental><server transport='unix' socket='/run/x/job.sock'/><disks>" +
        "<disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='cp1'><scratch file='/run/x/vda.scratch'/></disk>" +
        "<disk name='vdb' backup='yes' type='file' backupmode='full'><scratch file='/run/x/vdb.scratch'/></disk>" +
        "<disk name='vdc' backup='no'/></disks></domainbackup>",
    );
    expect(backupJobXml({ server: { transport: 'tcp', host: '10.0.0.1', port: 10809 }, disks: [], otherDisks: [] })).toContain(`<server transport='tcp' name='10.0.0.1' port='10809'/>`);
  });

  it('a saved checkpoint loses its parent for a redefine (libvirt refuses unknown parents)', () => {
    const saved = `<domaincheckpoint>\n  <name>cp2</name>\n  <parent>\n    <name>cp1</name>\n  </parent>\n  <creationTime>1795560972</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='cp2'/>\n    <disk name='vdb' checkpoint='no'/>\n  </disks>\n</domaincheckpoint>\n`;
    const r = checkpointForRedefine(saved);
    expect(r).not.toContain('parent');
    expect(checkpointName(r)).toBe('cp2');
    expect(checkpointDisks(r)).toEqual(['vda']);
    expect(checkpointXml('cp3', [{ target: 'vda', bitmap: true }, { target: 'vdb', bitmap: false }], 'd')).toBe(
      "<domaincheckpoint><name>cp3</name><description>d</description><disks><disk name='vda' checkpoint='bitmap'/><disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>",
    );
  });
});

describe('overlays', () => {
  it('named after the original file and the run, never stacked names', () => {
    expect(overlayPath('/vms/b.raw', 'run-2')).toBe('/vms/b.raw.vprotect-run-2');
    expect(overlayPath('/vms/b.raw.vprotect-run-1', 'run-2')).toBe('/vms/b.raw.vprotect-run-2');
  });
  it('a kept overlay is committed into its own backing file, never further down the chain', () => {
    const d = disk({ path: '/vms/b.raw.vprotect-run-1', backing: [{ type: 'file', path: '/vms/b.raw', format: 'raw' }, { type: 'file', path: '/base/x.raw' }] });
    expect(overlayRecord(d, 'run-2')).toEqual({ target: 'vda', frozen: '/vms/b.raw.vprotect-run-1', overlay: '/vms/b.raw.vprotect-run-2', commitInto: '/vms/b.raw' });
    expect(overlayRecord(disk({ path: '/vms/a.qcow2', backing: [{ type: 'file', path: '/base/_base' }] }), 'run-2').commitInto).toBeUndefined();
  });
  it('snapshot arguments: external for the overlay disks, no for the others, commas in paths doubled', () => {
    expect(snapshotArgs('dom', 'run-2', [{ target: 'vdb', frozen: '/v/a,b', overlay: '/v/a,b.vprotect-run-2' }], ['vda'], false)).toEqual([
      'snapshot-create-as', 'dom', '--name', 'vprotect-run-2', '--disk-only', '--atomic', '--no-metadata',
      '--diskspec', 'vdb,snapshot=external,file=/v/a,,b.vprotect-run-2', '--diskspec', 'vda,snapshot=no',
    ]);
  });
});

describe('recovery direction', () => {
  const j: Journal = { kind: 'vprotect-libvirt-ssh-run', runId: 'run-2', domain: 'a', domainUuid: 'u-1', dir: '/w/run-2', owner: { host: 'h', pid: 1, startedAt: '' }, phase: 'snapshot', checkpoint: { name: 'vprotect-run-2', previous: 'vprotect-run-1' }, overlays: [{ target: 'vdb', frozen: '/v/b', overlay: '/v/b.vprotect-run-2' }] };
  it('rolls forward only when the last point carries this run\'s anchors', () => {
    const point = (anchor: unknown) => ({ pointId: 'p', chainId: 'c', disks: [{ key: 'vda', size: 1, sourceAnchor: anchor }] });
    expect(pointIsFromRun(point({ strategy: 'libvirt-ssh', mode: 'checkpoint', domainUuid: 'u-1', checkpoint: 'vprotect-run-2', checkpointXml: 'x', path: '/v/a' }), j)).toBe(true);
    expect(pointIsFromRun(point({ strategy: 'libvirt-ssh', mode: 'snapshot', domainUuid: 'u-1', overlay: '/v/b.vprotect-run-2', path: '/v/b' }), j)).toBe(true);
    expect(pointIsFromRun(point({ strategy: 'libvirt-ssh', mode: 'checkpoint', domainUuid: 'u-1', checkpoint: 'vprotect-run-1', checkpointXml: 'x', path: '/v/a' }), j)).toBe(false);
    expect(pointIsFromRun(undefined, j)).toBe(false);
  });
  it('options default to auto, ssh, atomic, /var/tmp/vprotect, rbd on the hypervisor', () => {
    expect(parseOptions({})).toEqual({ mode: 'auto', transport: 'ssh', dataChannel: 'auto', python: 'python3', atomic: true, excludeDisks: [], parallelDisks: 1, workDir: '/var/tmp/vprotect', rbd: { runOn: 'hypervisor' } });
    expect(() => parseOptions({ dataChannel: 'ssh2' })).toThrow(/dataChannel must be auto \| stream \| nbd, not "ssh2"/);
    expect(() => parseOptions({ python: 'python3; rm -rf /' })).toThrow(/python must be a command name or absolute path/);
    expect(parseOptions({ rbd: { runOn: 'backup-node', cluster: 'lab' } }).rbd).toEqual({ runOn: 'backup-node', cluster: 'lab' });
  });
  it('bad options are refused with the option, what it must be and what it was', () => {
    expect(() => parseOptions({ mode: 'snapshots' })).toThrow('libvirt-ssh: strategyOptions.mode must be auto | checkpoint | snapshot, not "snapshots"');
    expect(() => parseOptions({ transport: 'tcp' })).toThrow(/transport must be ssh \| netcat, not "tcp"/);
    expect(() => parseOptions({ rbd: 'hypervisor' })).toThrow(/strategyOptions.rbd must be a mapping/);
    expect(() => parseOptions({ rbd: { keyring: 3 } })).toThrow(/rbd.keyring must be a non-empty string, not 3/);
    expect(() => parseOptions({ rbd: { runOn: 'backup-node', conf: '/etc/ceph/ceph.conf' } })).toThrow(/paths on the hypervisor/);
  });
});
