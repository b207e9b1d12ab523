/** Where rbd runs for a domain's RBD disks and with which cluster access (pure, no Ceph). */
import { describe, expect, it } from 'vitest';
import type { Inventory } from '../../../src/inventory/types.js';
import type { DomainDisk } from '../../../strategies/libvirt-ssh/domain-xml.js';
import { HYPERVISOR_CLUSTER, rbdCluster, rbdTargetDisks } from '../../../strategies/libvirt-ssh/rbd-disks.js';

const rbdDisk = (target: string, o: Partial<NonNullable<DomainDisk['rbd']>> = {}): DomainDisk => ({
  target,
  device: 'disk',
  type: 'network',
  protocol: 'rbd',
  format: 'raw',
  readonly: false,
  shareable: false,
  backing: [],
  rbd: { pool: 'vms', image: `i-${target}`, hosts: [{ name: '10.0.0.1', port: '6789' }, { name: 'fd00::2', port: '3300' }], user: 'nova', ...o },
});
const inv = (clusters: Inventory['cephClusters'] = {}): Inventory => ({ file: '/dev/null', version: 1, clouds: {}, hypervisors: [], cephClusters: clusters, destinations: {}, proxies: [], policies: [] });

describe('rbdCluster', () => {
  it('on the hypervisor: the cephx user and monitors of the domain XML, rbd.conf/keyring when given', () => {
    expect(rbdCluster([rbdDisk('vda'), rbdDisk('vdb')], inv(), { runOn: 'hypervisor' }, 'd')).toEqual({
      name: HYPERVISOR_CLUSTER,
      config: { user: 'nova', monitors: ['10.0.0.1:6789', '[fd00::2]:3300'] },
    });
    expect(rbdCluster([rbdDisk('vda', { hosts: [], user: undefined as unknown as string })], inv(), { runOn: 'hypervisor', conf: '/c', keyring: '/k' }, 'd')).toEqual({
      name: HYPERVISOR_CLUSTER,
      config: { user: 'admin', conf: { path: '/c' }, keyring: { path: '/k' } },
    });
  });
  it('disks of different users or monitors need a named cluster', () => {
    expect(() => rbdCluster([rbdDisk('vda'), rbdDisk('vdb', { user: 'cinder' })], inv(), { runOn: 'hypervisor' }, 'd')).toThrow(/different cephx users or monitors/);
  });
  it('on the backup node: the inventory entry (the only one, or the named one), else a clear error', () => {
    const lab = { user: 'volumes', conf: { path: '/etc/ceph/ceph.conf' } };
    expect(rbdCluster([rbdDisk('vda')], inv({ lab }), { runOn: 'backup-node' }, 'd')).toEqual({ name: 'lab', config: lab });
    expect(() => rbdCluster([rbdDisk('vda')], inv(), { runOn: 'backup-node' }, 'd')).toThrow(/no cephClusters entry/);
    expect(() => rbdCluster([rbdDisk('vda')], inv({ lab, other: lab }), { runOn: 'backup-node' }, 'd')).toThrow(/several ceph clusters in the inventory \(lab, other\): name one with strategyOptions.rbd.cluster/);
    expect(rbdCluster([rbdDisk('vda')], inv({ lab, other: lab }), { runOn: 'hypervisor', cluster: 'other' }, 'd').name).toBe('other');
    expect(() => rbdCluster([rbdDisk('vda')], inv({ lab }), { runOn: 'backup-node', cluster: 'nope' }, 'd')).toThrow(/"nope" is not in the inventory's cephClusters \(lab\)/);
  });
});

describe('rbdTargetDisks', () => {
  it('keys RBD disks by their target, as file disks are', () => {
    expect(rbdTargetDisks([rbdDisk('vdb')], 'hypervisor')).toEqual([{ key: 'vdb', kind: 'rbd', pool: 'vms', image: 'i-vdb', cephCluster: 'hypervisor' }]);
  });
});
