import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAttachment, parseVolume, parseVolumeType, parseSnapshot } from '../../../src/openstack/cinder.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { OperationFailedError } from '../../../src/openstack/errors.js';
import { parseImage } from '../../../src/openstack/glance.js';
import { Reader } from '../../../src/openstack/json.js';
import { parseFlavor, parseHypervisor, parseKeypair, parseServer, parseVolumeAttachment, serverSpecBody } from '../../../src/openstack/nova.js';
import { FAST_RETRY, FakeCloud, fixture, PROJECT_ID, recordingLogger, send } from './fake-cloud.js';

const r = (name: string, key?: string) => {
  const doc = fixture(name);
  return Reader.of(key ? doc[key] : doc, key ?? '');
};

describe('typed results from recorded Zed responses', () => {
  it('server at 2.93 (admin): host, hypervisor, libvirt domain, embedded flavor', () => {
    const s = parseServer(r('nova-server-detail-kvm-2.93.json', 'server'));
    expect(s).toMatchObject({
      id: '2558f8e1-a8a9-4c0d-a0ab-63a00dfff628',
      name: 'smoke-kvm',
      status: 'ACTIVE',
      projectId: PROJECT_ID,
      availabilityZone: 'kvm',
      host: 'lab-kvm',
      hypervisorHostname: 'vm',
      instanceName: 'instance-00000002',
      rootDeviceName: '/dev/sda',
      powerState: 'running',
      imageId: '6c8dc785-0eaa-46bf-ac00-96694ae7336f',
      keyName: undefined,
      volumesAttached: [{ id: 'c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', deleteOnTermination: false }],
      flavor: { id: undefined, name: 'smoke.tiny', vcpus: 1, ramMb: 128, diskGb: 1, ephemeralGb: 0, swapMb: 0, extraSpecs: {} },
      userData: undefined,
    });
    expect(s.raw['OS-EXT-SRV-ATTR:reservation_id']).toBe('r-ranl143d');
  });

  it('server at 2.1: flavor is a reference, no tags', () => {
    const s = parseServer(r('nova-server-detail-2.1.json', 'server'));
    expect(s.flavor).toMatchObject({ id: '19742060-420e-4e45-8218-b03d4ad65c94', name: undefined, extraSpecs: undefined });
    expect(s.metadata).toEqual({ backup: 'daily' });
    expect(s.keyName).toBe('smoke-key');
    expect(s.tags).toEqual([]);
  });

  it('a volume-booted server (image "") has no image id', () => {
    const doc = fixture('nova-server-detail-2.93-admin.json').server;
    doc.image = '';
    expect(parseServer(Reader.of(doc)).imageId).toBeUndefined();
  });

  it('server list, flavor, hypervisors, keypairs, attachments', () => {
    expect(r('nova-server-list-detail.json').list('servers').map(parseServer).map((s) => s.name)).toEqual(['smoke-vm']);
    expect(parseFlavor(r('nova-flavor-detail.json', 'flavor'))).toMatchObject({ name: 'smoke.tiny', ramMb: 128, swapMb: 0, ephemeralGb: 0, isPublic: true, extraSpecs: {} });
    expect(r('nova-hypervisors-detail-2.88.json').list('hypervisors').map(parseHypervisor).map((h) => [h.hostname, h.serviceHost, h.type, h.hostIp])).toEqual([
      ['lab', 'lab', 'fake', '127.0.0.1'],
      ['vm', 'lab-kvm', 'QEMU', '127.0.0.1'],
    ]);
    const created = parseKeypair(r('nova-keypair-create.json', 'keypair'));
    expect(created.raw).not.toHaveProperty('private_key');
    expect(created.userId).toBe('4ba94f72cc9d45239b12468e5f2164e5');
    const listed = r('nova-keypair-list.json').list('keypairs').map((k) => parseKeypair(k.get('keypair')));
    expect(listed[0]).toMatchObject({ name: 'smoke-key', type: 'ssh' });
    const att = r('nova-volume-attachments-list-kvm-2.89.json').list('volumeAttachments').map(parseVolumeAttachment);
    expect(att[0]).toMatchObject({ volumeId: 'c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', device: '/dev/sdb', attachmentId: '7a57fa4d-03ad-4e86-8383-39329b0e7e1c', bdmUuid: 'eb185fb5-5ebe-4bfd-ae37-65167b1e5618' });
    expect(parseVolumeAttachment(r('nova-volume-attachments-list-2.79.json').list('volumeAttachments')[0]!).attachmentId).toBeUndefined();
  });

  it('volumes, types, snapshots; the RBD image behind an attachment', () => {
    const v = parseVolume(r('cinder-volume-detail-in-use-via-nova-3.70.json', 'volume'));
    expect(v).toMatchObject({ status: 'in-use', sizeGb: 1, volumeType: 'ceph', bootable: false, backendHost: 'lab@ceph#ceph', projectId: PROJECT_ID, metadata: { purpose: 'smoke' } });
    expect(v.attachments).toEqual([{ attachmentId: '320d5ed8-0a22-4303-b11e-b60af0e82f86', serverId: '893d9f34-9cb5-450a-b417-3b9a316a0977', device: '/dev/sdb', hostName: 'lab' }]);
    expect(r('cinder-types.json').list('volume_types').map(parseVolumeType).map((t) => [t.name, t.extraSpecs])).toEqual([
      ['ceph', { volume_backend_name: 'ceph' }],
      ['__DEFAULT__', {}],
    ]);
    expect(parseSnapshot(r('cinder-snapshot-detail.json', 'snapshot'))).toMatchObject({ status: 'available', volumeId: '296e0b20-6389-46f5-81e5-cf1e3bdb361c' });
    const a = parseAttachment(r('cinder-attachment-list-kvm-rbd.json').list('attachments')[0]!);
    expect(a.connection).toEqual({ driver: 'rbd', pool: 'volumes', image: 'volume-c70d0dd1-d3c7-44e1-bd7b-1be15ea649c1', monitors: ['127.0.0.1:6789'], clusterName: 'ceph', authUser: 'volumes' });
    expect(parseAttachment(r('cinder-attachment-create-reserved.json', 'attachment')).connection).toBeUndefined();
  });

  it('image: custom properties separated from the schema fields', () => {
    const i = parseImage(r('glance-image-detail.json'));
    expect(i).toMatchObject({ status: 'active', diskFormat: 'qcow2', size: 196616, checksum: '41ce4d32ce22529a293044bc1eb4e734', hashAlgo: 'sha512', minDiskGb: 1 });
    expect(i.properties).toEqual({ hw_disk_bus: 'scsi', hw_scsi_model: 'virtio-scsi', os_distro: 'cirros' });
  });

  it('server create body: boot from volumes, no network, keypair, group hint', () => {
    expect(
      serverSpecBody({
        name: 'r',
        flavorId: 'f',
        networks: 'none',
        blockDevices: [{ uuid: 'v1', sourceType: 'volume', destinationType: 'volume', bootIndex: 0 }],
        keyName: 'k',
        serverGroupId: 'g',
      }),
    ).toEqual({
      server: {
        name: 'r',
        flavorRef: 'f',
        networks: 'none',
        key_name: 'k',
        block_device_mapping_v2: [{ uuid: 'v1', source_type: 'volume', destination_type: 'volume', boot_index: 0, delete_on_termination: false }],
      },
      'os:scheduler_hints': { group: 'g' },
    });
  });
});

describe('clients and waiters against a fake cloud', () => {
  let fake: FakeCloud;
  let cloud: Cloud;
  beforeEach(async () => {
    fake = await FakeCloud.start();
    fake.json('GET', /^\/compute\/v2\.1\/$/, { version: { id: 'v2.1', status: 'CURRENT', version: '2.93', min_version: '2.1' } });
    fake.json('GET', /^\/volume\/v3\/$/, { versions: [{ id: 'v3.0', status: 'CURRENT', version: '3.70', min_version: '3.0' }] });
    cloud = await Cloud.connect(
      { name: 't', source: 't', authUrl: fake.authUrl, auth: { kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'lab-backup-pass' }, project: { name: 'acme-prod', domain: { name: 'acme' } }, interface: 'public', insecure: false, endpointOverrides: {} },
      { log: recordingLogger(), retry: FAST_RETRY },
    );
  });
  afterEach(async () => {
    cloud.close();
    await fake.close();
  });

  it('negotiates microversions and sends them', async () => {
    fake.json('GET', /\/compute\/v2\.1\/servers\/detail$/, fixture('nova-server-list-detail.json'));
    const nova = await cloud.nova();
    expect(nova.microversion).toBe('2.89');
    await nova.listServers({ allProjects: true });
    const req = fake.requests.find((q) => q.path.endsWith('/servers/detail'))!;
    expect(req.headers['openstack-api-version']).toBe('compute 2.89');
    expect(req.headers['x-openstack-nova-api-version']).toBe('2.89');
    expect(req.query.get('all_tenants')).toBe('1');
    expect((await cloud.cinder()).microversion).toBe('3.70');
  });

  it('caps the microversion at an older server\'s maximum', async () => {
    fake.json('GET', /^\/compute\/v2\.1\/$/, { version: { id: 'v2.1', status: 'CURRENT', version: '2.79', min_version: '2.1' } });
    expect((await cloud.nova()).microversion).toBe('2.79');
  });

  it('waits for a volume through creating → available', async () => {
    let n = 0;
    fake.json('GET', /\/volume\/v3\/[0-9a-f]+\/volumes\/v1$/, () => {
      const v = fixture('cinder-volume-detail-in-use-via-nova-3.70.json');
      v.volume.status = ++n < 3 ? 'creating' : 'available';
      return v;
    });
    const v = await cloud.waitForVolume('v1', 'available', { intervalMs: 10 });
    expect(v.status).toBe('available');
    expect(n).toBe(3);
  });

  it('an error state ends the wait at once with the fault', async () => {
    fake.json('GET', /\/compute\/v2\.1\/servers\/s1$/, () => {
      const s = fixture('nova-server-detail-2.93-admin.json');
      s.server.status = 'ERROR';
      s.server.fault = { code: 500, message: 'No valid host was found. There are not enough hosts available.' };
      return s;
    });
    const err = await cloud.waitForServer('s1', 'ACTIVE', { intervalMs: 10 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OperationFailedError);
    expect((err as Error).message).toBe('server s1 went to status "ERROR" while waiting for ACTIVE: No valid host was found. There are not enough hosts available.');
    expect((err as OperationFailedError).exitCode).toBe(69);
  });

  it('times out with the last state', async () => {
    fake.json('GET', /\/volume\/v3\/[0-9a-f]+\/snapshots\/s1$/, () => {
      const s = fixture('cinder-snapshot-detail.json');
      s.snapshot.status = 'creating';
      return s;
    });
    await expect(cloud.waitForSnapshot('s1', 'available', { intervalMs: 10, timeoutMs: 100 })).rejects.toThrow('timed out after 0 s waiting for snapshot s1 to become available (still "creating")');
  });

  it('a snapshot that returns to available after delete (clones exist) fails clearly', async () => {
    let n = 0;
    fake.json('GET', /\/volume\/v3\/[0-9a-f]+\/snapshots\/s1$/, () => {
      const s = fixture('cinder-snapshot-detail.json');
      s.snapshot.status = ++n < 2 ? 'deleting' : 'available';
      return s;
    });
    await expect(cloud.waitForSnapshotDeleted('s1', { intervalMs: 10 })).rejects.toThrow(/went to status "available" while waiting for deleted: Cinder refused to delete it/);
  });

  it('deletion ends with 404', async () => {
    let n = 0;
    fake.route('GET', /\/volume\/v3\/[0-9a-f]+\/volumes\/v1$/, (q, res) => {
      if (!fake.authorised(q, res)) return;
      if (++n < 2) return send(res, 200, fixture('cinder-volume-detail-in-use-via-nova-3.70.json'));
      send(res, 404, { itemNotFound: { code: 404, message: 'Volume v1 could not be found.' } });
    });
    await cloud.waitForVolumeDeleted('v1', { intervalMs: 10 });
    expect(n).toBe(2);
  });
});

describe('uploads', () => {
  it('a stream upload answered 401 is not re-sent (the stream is spent), and the token is renewed for the next call', async () => {
    const fake = await FakeCloud.start();
    const { Readable } = await import('node:stream');
    try {
      let puts = 0;
      fake.route('PUT', /\/image\/v2\/images\/i1\/file$/, (_q, res) => (puts++, send(res, 401, { error: { message: 'expired' } })));
      const cloud = await Cloud.connect(
        { name: 't', source: 't', authUrl: fake.authUrl, auth: { kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'lab-backup-pass' }, project: { name: 'acme-prod', domain: { name: 'acme' } }, interface: 'public', insecure: false, endpointOverrides: {} },
        { log: recordingLogger(), retry: FAST_RETRY },
      );
      await expect(cloud.glance.upload('i1', Readable.from([Buffer.from('data')]))).rejects.toThrow(/HTTP 401/);
      expect(puts).toBe(1);
      expect(fake.count('POST', /auth\/tokens/)).toBe(2);
      cloud.close();
    } finally {
      await fake.close();
    }
  });
});
