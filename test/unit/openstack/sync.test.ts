import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Inventory, PolicyConfig } from '../../../src/inventory/types.js';
import { captureMetadata, stripSecrets } from '../../../src/openstack/capture.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { parseDomainDisks, type HypervisorProbe } from '../../../src/openstack/probe.js';
import { policyMatches } from '../../../src/openstack/select.js';
import { syncCloud } from '../../../src/openstack/sync.js';
import { FAST_RETRY, FakeCloud, fixture, recordingLogger, send } from './fake-cloud.js';

const KVM_ID = '2558f8e1-a8a9-4c0d-a0ab-63a00dfff628';
const FAKE_ID = '893d9f34-9cb5-450a-b417-3b9a316a0977';
const DOMAIN_XML = `<domain type='kvm'><name>instance-00000002</name><devices>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
    <auth username='volumes'><secret type='ceph' uuid='8a1c3f9e-6d2b-4c1e-9f0a-0b5e1ab0c0de'/></auth>
    <source protocol='rbd' name='vms/${KVM_ID}_disk' index='2'><host name='127.0.0.1' port='6789'/></source>
    <target dev='sda' bus='scsi'/>
  </disk>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw'/>
    <source protocol='rbd' name='volumes/volume-c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1'/>
    <target dev='sdb' bus='scsi'/>
    <serial>c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1</serial>
  </disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/var/lib/nova/instances/${KVM_ID}/disk.eph0'/>
    <backingStore type='file'><format type='raw'/><source file='/var/lib/nova/instances/_base/ephemeral_1_0706d66'/></backingStore>
    <target dev='sdc' bus='scsi'/>
  </disk>
</devices></domain>`;

describe('libvirt domain disks', () => {
  it('parses RBD and file disks, ignoring backing stores', () => {
    expect(parseDomainDisks(DOMAIN_XML)).toEqual([
      { type: 'network', device: 'disk', target: 'sda', source: `vms/${KVM_ID}_disk`, protocol: 'rbd', format: 'raw', serial: undefined },
      { type: 'network', device: 'disk', target: 'sdb', source: 'volumes/volume-c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', protocol: 'rbd', format: 'raw', serial: 'c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1' },
      { type: 'file', device: 'disk', target: 'sdc', source: `/var/lib/nova/instances/${KVM_ID}/disk.eph0`, protocol: undefined, format: 'qcow2', serial: undefined },
    ]);
  });
});

describe('policy selection', () => {
  const vm = { id: 'i-1', name: 'db-01', projectId: 'p1', projectName: 'acme-prod', tags: ['backup', 'prod'], metadata: { tier: 'db' }, availabilityZone: 'nova', host: 'cmp1', hypervisorHostname: 'cmp1.example' };
  const p = (select: PolicyConfig['select'], cloud?: string): PolicyConfig => ({ name: 'p', strategy: 'libvirt-ssh', destination: 'd', ...(cloud ? { cloud } : {}), ...(select ? { select } : {}) });
  it('all filters must match; lists are any-of, tags all-of', () => {
    expect(policyMatches(vm, p({ projects: ['acme-prod'], nameRegex: '^db-', tags: ['backup'], metadata: { tier: 'db' }, availabilityZones: ['nova'], hosts: ['cmp1.example'] }), 'c')).toBe(true);
    expect(policyMatches(vm, p({ tags: ['backup', 'nightly'] }), 'c')).toBe(false);
    expect(policyMatches(vm, p({ projects: ['p1'] }), 'c')).toBe(true);
    expect(policyMatches(vm, p({ metadata: { tier: 'web' } }), 'c')).toBe(false);
    expect(policyMatches(vm, p(undefined), 'c')).toBe(true);
  });
  it('exclude wins, include selects, include alone selects only those; cloud must match', () => {
    expect(policyMatches(vm, p({ projects: ['acme-prod'], exclude: ['db-01'] }), 'c')).toBe(false);
    expect(policyMatches(vm, p({ projects: ['other'], include: ['i-1'] }), 'c')).toBe(true);
    expect(policyMatches(vm, p({ include: ['i-2'] }), 'c')).toBe(false);
    expect(policyMatches(vm, p({}, 'other-cloud'), 'c')).toBe(false);
  });
});

describe('sync on recorded responses', () => {
  let fake: FakeCloud;
  let cloud: Cloud;
  beforeEach(async () => {
    fake = await FakeCloud.start();
    const kvm = fixture('nova-server-detail-kvm-2.93.json').server;
    kvm.flavor.ephemeral = 1;
    const volumeBooted = fixture('nova-server-detail-2.93-admin.json').server;
    volumeBooted.image = '';
    volumeBooted['os-extended-volumes:volumes_attached'] = [{ id: '296e0b20-6389-46f5-81e5-cf1e3bdb361c', delete_on_termination: true }];
    volumeBooted['OS-EXT-SRV-ATTR:root_device_name'] = '/dev/sdb';
    volumeBooted.key_name = 'smoke-key';
    fake.json('GET', /^\/compute\/v2\.1\/$/, { version: { version: '2.93', min_version: '2.1' } });
    fake.json('GET', /^\/volume\/v3\/$/, { versions: [{ version: '3.70', min_version: '3.0' }] });
    fake.json('GET', /\/servers\/detail$/, { servers: [kvm, volumeBooted] });
    fake.json('GET', /\/os-hypervisors\/detail$/, fixture('nova-hypervisors-detail-2.88.json'));
    fake.json('GET', /^\/v3\/projects$/, fixture('keystone-projects-acme.json'));
    fake.json('GET', /\/volumes\/detail$/, { volumes: [fixture('cinder-volume-detail-in-use-via-nova-3.70.json').volume, { ...fixture('cinder-volume-detail-in-use-via-nova-3.70.json').volume, id: 'c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', attachments: [{ server_id: KVM_ID, device: '/dev/sdb', attachment_id: '7a57fa4d-03ad-4e86-8383-39329b0e7e1c' }] }] });
    fake.json('GET', /\/attachments\/detail$/, { attachments: [...fixture('cinder-attachment-list-kvm-rbd.json').attachments, ...fixture('cinder-attachment-list-nova-attached.json').attachments] });
    cloud = await Cloud.connect(
      { name: 'test', source: 't', authUrl: fake.authUrl, auth: { kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'lab-backup-pass' }, project: { name: 'acme-prod', domain: { name: 'acme' } }, interface: 'public', insecure: false, endpointOverrides: {} },
      { log: recordingLogger(), retry: FAST_RETRY },
    );
  });
  afterEach(async () => {
    cloud.close();
    await fake.close();
  });

  const inventory: Pick<Inventory, 'hypervisors' | 'cephClusters' | 'policies' | 'proxies'> = {
    hypervisors: [{ name: 'vm', address: '127.0.0.1', port: 2222 }],
    cephClusters: { lab: { user: 'volumes', pools: ['vms'], usedBy: [{ cloud: 'test' }] } },
    policies: [
      { name: 'kvm', strategy: 'ceph-rbd', destination: 'd', select: { availabilityZones: ['kvm'] } },
      { name: 'everything', strategy: 'cinder-attach', destination: 'd' },
    ],
    proxies: [],
  };
  const probe: HypervisorProbe = {
    check: async () => ({ reachable: true, method: 'ssh', detail: 'ok' }),
    domainDisks: async (_hv, domain) => (domain === 'instance-00000002' ? parseDomainDisks(DOMAIN_XML) : undefined),
  };

  it('maps instances to hypervisors, domains, boot sources, disks and policies', async () => {
    const r = await syncCloud(cloud, inventory, { probe, log: recordingLogger() });
    expect(r).toMatchObject({ admin: true, scope: 'all-projects', user: 'acme\\backup', project: 'acme-prod@acme', microversions: { compute: '2.89', volume: '3.70' } });
    const kvm = r.instances.find((i) => i.id === KVM_ID)!;
    expect(kvm).toMatchObject({ hypervisor: 'vm', libvirtDomain: 'instance-00000002', availabilityZone: 'kvm', powerState: 'running', boot: { kind: 'image' }, policy: 'kvm', strategy: 'ceph-rbd', project: { name: 'acme-prod' } });
    expect(kvm.disks.map((d) => [d.key, d.device, d.bootIndex, d.evidence, d.backend.kind === 'rbd' ? `${d.backend.pool}/${d.backend.image}@${d.backend.cephCluster}` : d.backend.kind === 'file' ? `${d.backend.format}:${d.backend.path}` : d.backend.kind])).toEqual([
      ['volume-c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', '/dev/sdb', undefined, 'cinder', 'volumes/volume-c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1@undefined'],
      ['root', 'sda', 0, 'libvirt', `vms/${KVM_ID}_disk@lab`],
      ['ephemeral0', 'sdc', undefined, 'libvirt', `qcow2:/var/lib/nova/instances/${KVM_ID}/disk.eph0`],
    ]);
    const vb = r.instances.find((i) => i.id === FAKE_ID)!;
    expect(vb.boot).toEqual({ kind: 'volume', volumeId: '296e0b20-6389-46f5-81e5-cf1e3bdb361c' });
    expect(vb.disks).toHaveLength(1);
    expect(vb.disks[0]).toMatchObject({ bootIndex: 0, deleteOnTermination: true, backend: { kind: 'rbd', pool: 'volumes' } });
    expect(vb.hypervisor).toBeUndefined();
  });

  it('lists what the inventory does not cover, each with a fix', async () => {
    const r = await syncCloud(cloud, inventory, { probe, log: recordingLogger() });
    const byCode = (c: string) => r.warnings.filter((w) => w.code === c);
    expect(byCode('hypervisor-not-in-inventory')[0]).toMatchObject({ subject: 'lab', fix: expect.stringContaining('name: lab, address: 127.0.0.1') });
    expect(byCode('ceph-cluster-missing')[0]).toMatchObject({ subject: 'volumes', fix: expect.stringContaining('pools: [volumes]') });
    expect(byCode('several-policies')[0]!.message).toContain('matches policies kvm, everything; kvm wins');
    expect(byCode('strategy-mismatch')[0]!.message).toContain('disk(s) ephemeral0 are not RBD images');
    expect(byCode('no-proxy')[0]!.subject).toBe(FAKE_ID);
    expect(r.cephPools).toEqual([
      { pool: 'vms', cephCluster: 'lab', usedFor: ['ephemeral'], hypervisors: ['vm'], disks: 1 },
      { pool: 'volumes', cephCluster: undefined, usedFor: ['volumes'], hypervisors: ['vm', 'lab'], disks: 2 },
    ]);
    expect(r.hypervisors.map((h) => [h.name, h.inInventory, h.instances])).toEqual([
      ['lab', false, 1],
      ['vm', true, 1],
    ]);
  });

  it('a Cinder that is down is a warning, not a failed sync', async () => {
    fake.route('GET', /\/volumes\/detail$/, (_q, res) => send(res, 503, '<html><title>503</title></html>', { 'content-type': 'text/html' }));
    const r = await syncCloud(cloud, inventory, { probe, log: recordingLogger() });
    expect(r.instances).toHaveLength(2);
    expect(r.warnings.find((w) => w.code === 'service-unavailable')!.message).toMatch(/cannot read volume: volume GET .* HTTP 503/);
  });

  it('captures metadata as returned, secrets stripped, issues listed', async () => {
    const server = fixture('nova-server-detail-2.93-admin.json');
    server.server.adminPass = 'should-not-be-kept';
    server.server['OS-EXT-SRV-ATTR:user_data'] = Buffer.from('#!/bin/sh\necho secret').toString('base64');
    server.server.user_id = 'someone-else';
    fake.json('GET', new RegExp(`/servers/${FAKE_ID}$`), server);
    fake.json('GET', /\/flavors\/detail$/, { flavors: [fixture('nova-flavor-detail.json').flavor] });
    fake.json('GET', new RegExp(`/servers/${FAKE_ID}/os-volume_attachments$`), { volumeAttachments: [] });
    fake.json('GET', /\/image\/v2\/images\/6c8dc785/, fixture('glance-image-detail.json'));
    fake.json('GET', /\/network\/v2\.0\/ports$/, { ports: [] });
    fake.route('GET', /\/os-keypairs\/smoke-key$/, (q, res) => {
      if (q.query.get('user_id') !== 'someone-else') return send(res, 404, { itemNotFound: { message: 'Keypair smoke-key not found for user' } });
      send(res, 200, { keypair: { ...fixture('nova-keypair-create.json').keypair, user_id: 'someone-else' } });
    });
    const m = await captureMetadata(cloud, FAKE_ID);
    expect(Object.keys(m.files).sort()).toEqual(['capture.json', 'flavor.json', 'image.json', 'keypair.json', 'ports.json', 'security_groups.json', 'server.json', 'volume_attachments.json']);
    const s = (m.files['server.json'] as any).server;
    expect(s).not.toHaveProperty('adminPass');
    expect(s['OS-EXT-SRV-ATTR:user_data']).toBe(server.server['OS-EXT-SRV-ATTR:user_data']);
    expect((m.files['keypair.json'] as any).keypair).toMatchObject({ name: 'smoke-key', user_id: 'someone-else' });
    expect((m.files['keypair.json'] as any).keypair).not.toHaveProperty('private_key');
    expect(m.issues).toEqual([]);
  });

  it('a keypair that is gone is an issue, not a failure', async () => {
    fake.json('GET', new RegExp(`/servers/${FAKE_ID}$`), fixture('nova-server-detail-2.93-admin.json'));
    fake.route('GET', /\/os-keypairs\/smoke-key$/, (_q, res) => send(res, 404, { itemNotFound: { message: 'Keypair smoke-key not found' } }));
    const m = await captureMetadata(cloud, FAKE_ID);
    expect(m.files['keypair.json']).toBeUndefined();
    expect(m.issues.find((i) => i.what.startsWith('keypair'))!.message).toContain('no longer exists');
  });
});

describe('secret stripping', () => {
  it('drops secret fields at any depth, keeps the rest', () => {
    expect(stripSecrets({ a: 1, adminPass: 'x', nested: [{ private_key: 'k', keep: 'y', connection_info: { auth_password: 'p', name: 'n' } }] })).toEqual({ a: 1, nested: [{ keep: 'y', connection_info: { name: 'n' } }] });
  });
});

describe('hypervisor reachability (TCP + SSH banner)', () => {
  it('reachable when the port answers with an SSH banner; not when it is something else or closed', async () => {
    const net = await import('node:net');
    const { tcpCheck } = await import('../../../src/openstack/probe.js');
    const serve = (banner: string) =>
      new Promise<import('node:net').Server>((resolve) => {
        const s = net.createServer((c) => c.end(banner));
        s.listen(0, '127.0.0.1', () => resolve(s));
      });
    const ssh = await serve('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n');
    const http = await serve('HTTP/1.1 400 Bad Request\r\n\r\n');
    const port = (s: import('node:net').Server) => (s.address() as import('node:net').AddressInfo).port;
    expect(await tcpCheck('127.0.0.1', port(ssh))).toMatchObject({ reachable: true, method: 'tcp', detail: expect.stringContaining('SSH-2.0-OpenSSH_9.2p1') });
    expect(await tcpCheck('127.0.0.1', port(http))).toMatchObject({ reachable: false, detail: expect.stringContaining('not as an SSH server') });
    const closedPort = port(http);
    await new Promise((r) => http.close(r));
    ssh.close();
    expect(await tcpCheck('127.0.0.1', closedPort)).toMatchObject({ reachable: false, detail: expect.stringContaining('ECONNREFUSED') });
  });
});
