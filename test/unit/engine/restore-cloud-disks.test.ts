/** Which point disk feeds which disk of a cloud restore, and which image properties travel. */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { uploadableImageProperties, type VmMetadata } from '../../../src/openstack/plan.js';
import type { DiskRecord } from '../../../src/openstack/vm.js';
import { mapDisks, planDisks, targetsBySerial } from '../../../src/restore-cloud/disks.js';

const VOL = '1a195236-2a91-4a1f-9153-04223ba4cf63';

function record(over: Partial<DiskRecord> & Pick<DiskRecord, 'key' | 'role'>): DiskRecord {
  return { device: undefined, bootIndex: undefined, sizeGb: 1, volumeId: undefined, volumeType: undefined, deleteOnTermination: undefined, backup: true, backend: { kind: 'unknown', reason: 'test' }, evidence: 'inferred', ...over };
}

function meta(disks: DiskRecord[], opts: { imageId?: string; volumes?: string[] } = {}): VmMetadata {
  return {
    server: { imageId: opts.imageId } as VmMetadata['server'],
    flavor: undefined,
    image: undefined,
    volumes: (opts.volumes ?? []).map((id) => ({ id }) as VmMetadata['volumes'][number]),
    ports: [],
    keypair: undefined,
    disks,
  };
}

const manifest = (...keys: [string, number][]) => ({ pointId: 'P1', disks: keys.map(([key, size]) => ({ key, size })) as never });

const DOMAIN = `<domain type='qemu'><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/x/disk'/><target dev='sda' bus='scsi'/><alias name='scsi0-0-0-0'/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='volumes/volume-${VOL}'/><target dev='sdc' bus='scsi'/>
    <serial>${VOL}</serial></disk>
</devices></domain>`;

describe('restore --to-cloud: point disks', () => {
  it('libvirt-ssh keys: the root by its device, a volume by the <serial> of the domain XML (not the device Cinder reported)', () => {
    const m = meta([record({ key: 'root', role: 'root', device: 'sda', bootIndex: 0 }), record({ key: `volume-${VOL}`, role: 'volume', device: '/dev/sdb', volumeId: VOL })], { imageId: 'img', volumes: [VOL] });
    expect(planDisks(m)).toEqual([`volume-${VOL}`, 'root']);
    const r = mapDisks(planDisks(m), m, manifest(['sda', 1 << 30], ['sdc', 2 << 30]), DOMAIN);
    expect(r.sources.get('root')).toEqual({ planDisk: 'root', key: 'sda', size: 1 << 30 });
    expect(r.sources.get(`volume-${VOL}`)).toEqual({ planDisk: `volume-${VOL}`, key: 'sdc', size: 2 << 30 });
    expect(r.notRestored).toEqual([]);
  });

  it('ceph-rbd keys are the plan\'s own; an ephemeral disk of the point is reported as not restored', () => {
    const m = meta([record({ key: 'root', role: 'root' }), record({ key: 'ephemeral0', role: 'ephemeral' })], { imageId: 'img' });
    const r = mapDisks(planDisks(m), m, manifest(['root', 1 << 30], ['ephemeral0', 1 << 30]), undefined);
    expect(r.sources.get('root')?.key).toBe('root');
    expect(r.notRestored).toEqual([{ key: 'ephemeral0', why: expect.stringMatching(/Nova creates it empty/) }]);
  });

  it('a disk the point does not hold is an error naming it, not an empty volume', () => {
    const m = meta([record({ key: `volume-${VOL}`, role: 'volume', volumeId: VOL, device: 'sdb' })], { volumes: [VOL] });
    expect(() => mapDisks(planDisks(m), m, manifest(['sda', 1]), undefined)).toThrow(UsageError);
    expect(() => mapDisks(planDisks(m), m, manifest(['sda', 1]), undefined)).toThrow(new RegExp(`holds no data for volume-${VOL} \\(its disks: sda\\)`));
  });

  it('targetsBySerial reads only disks with a serial', () => {
    expect([...targetsBySerial(DOMAIN)]).toEqual([[VOL, 'sdc']]);
    expect(targetsBySerial(undefined).size).toBe(0);
  });

  it('image properties of the original that must not travel are dropped', () => {
    expect(
      uploadableImageProperties({ hw_disk_bus: 'scsi', os_distro: 'debian', os_glance_importing_to_stores: 'x', 'owner_specified.openstack.sha256': 'ab', img_signature: 's', img_signature_hash_method: 'SHA-256', block_device_mapping: '[]', bdm_v2: 'True', root_device_name: '/dev/vda', image_type: 'snapshot', instance_uuid: 'u' }),
    ).toEqual({ hw_disk_bus: 'scsi', os_distro: 'debian' });
  });
});
