/**
 * vprotect's view of the lab cloud and the restore primitives, against the real Nova, Cinder
 * (RBD), Glance and Neutron: instances booted from image and from volume, with qcow2 and RBD
 * disks, in two projects (acme-prod by acme\backup, demo by alice with her own keypair).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseInventory } from '../../../src/inventory/load.js';
import type { Inventory } from '../../../src/inventory/types.js';
import { captureMetadata, writeMetadata, type CapturedMetadata } from '../../../src/openstack/capture.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { planRestore, readMetadata, serverSpecFor } from '../../../src/openstack/plan.js';
import { commandProbe } from '../../../src/openstack/probe.js';
import * as restore from '../../../src/openstack/restore.js';
import { settingsFromEnvironment, settingsFromInventory } from '../../../src/openstack/settings.js';
import { syncCloud, type SyncReport } from '../../../src/openstack/sync.js';
import { SshPool } from '../../../src/transport/ssh.js';
import { requireLab } from '../../helpers/lab.js';
import { recordingLogger } from '../../unit/openstack/fake-cloud.js';
import { labOpenStack } from './lab.js';
import { readFileSync } from 'node:fs';

requireLab('openstack', 'hypervisor', 'ceph');
const lab = labOpenStack();
const env = { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml };
const log = recordingLogger();
/** The shared lab restarts services while other suites run (≈50 s for nova-api under load): ride that out. */
const PATIENT = { attempts: 8, baseDelayMs: 1_000, maxDelayMs: 20_000 };
const tag = `vp-${Date.now().toString(36)}`;
const rbdAz = lab.computes.find((c) => c.imagesType === 'rbd')!;
const qcowAz = lab.computes.find((c) => c.imagesType === 'qcow2')!;

let backup: Cloud;
let alice: Cloud;
const created = { servers: [] as { cloud: Cloud; id: string }[], volumes: [] as string[], images: [] as string[] };
let imageVm: string; // acme-prod, image-booted, qcow2, with a data volume
let dataVolume: string;
let volumeVm: string; // acme-prod, booted from an RBD volume
let bootVolume: string;
let aliceVm: string; // demo, image-booted on the rbd compute, alice's keypair

const inventory: Inventory = parseInventory('/lab.yaml', readFileSync(new URL('../../../examples/lab.yaml', import.meta.url), 'utf8'), { env: {}, offline: true });

beforeAll(async () => {
  // The inventory's own cloud entry: its name ("lab") is what policies and cephClusters.usedBy refer to.
  backup = await Cloud.connect(settingsFromInventory('lab', inventory.clouds['lab']!, { env: {} }), { log, retry: PATIENT });
  alice = await Cloud.connect(settingsFromEnvironment({ env, osCloud: 'lab-alice' }), { log, retry: PATIENT });
  const flavor = lab.flavors['m1.tiny']!;
  dataVolume = (await restore.createVolume(backup, { sizeGb: 1, name: `${tag}-data`, volumeType: lab.volumeType.name })).id;
  created.volumes.push(dataVolume);
  bootVolume = (await restore.createVolume(backup, { sizeGb: 1, name: `${tag}-boot`, imageId: lab.image.id, volumeType: lab.volumeType.name })).id;
  created.volumes.push(bootVolume);

  const [a, b, c] = await Promise.all([
    restore.createServer(backup, { name: `${tag}-image`, flavorId: flavor, imageId: lab.image.id, networks: 'none', availabilityZone: qcowAz.availabilityZone, metadata: { backup: 'daily' }, tags: ['vprotect'] }),
    restore.createServer(backup, { name: `${tag}-volume`, flavorId: flavor, networks: 'none', availabilityZone: qcowAz.availabilityZone, blockDevices: [{ uuid: bootVolume, sourceType: 'volume', destinationType: 'volume', bootIndex: 0 }] }),
    restore.createServer(alice, { name: `${tag}-alice`, flavorId: flavor, imageId: lab.image.id, networks: 'none', availabilityZone: rbdAz.availabilityZone, keyName: lab.alice.keypair, userData: Buffer.from('#cloud-config\npassword: do-not-log\n').toString('base64') }),
  ]);
  imageVm = a.id;
  volumeVm = b.id;
  aliceVm = c.id;
  created.servers.push({ cloud: backup, id: a.id }, { cloud: backup, id: b.id }, { cloud: alice, id: c.id });
  await restore.attachVolume(backup, imageVm, dataVolume);
}, 600_000);

afterAll(async () => {
  for (const s of created.servers) await restore.deleteServer(s.cloud, s.id).catch((e: unknown) => console.error(`cleanup server ${s.id}: ${String(e)}`));
  for (const v of created.volumes) await restore.deleteVolume(backup, v).catch((e: unknown) => console.error(`cleanup volume ${v}: ${String(e)}`));
  for (const i of created.images) await backup.glance.deleteImage(i).catch(() => undefined);
  backup?.close();
  alice?.close();
}, 600_000);

describe('sync against the lab', () => {
  let report: SyncReport;
  beforeAll(async () => {
    const pool = new SshPool({ env: {}, log, connectTimeoutMs: 10_000 });
    try {
      report = await syncCloud(backup, inventory, { probe: commandProbe((hv, argv) => pool.withHost(hv, (c) => c.exec(argv, { timeoutMs: 30_000 }))), log });
    } finally {
      await pool.close();
    }
  }, 300_000);

  it('sees both projects (admin), with hypervisor, libvirt domain, zone and power state', () => {
    expect(report.admin).toBe(true);
    expect(report.scope).toBe('all-projects');
    const mine = report.instances.filter((i) => i.name.startsWith(tag));
    expect(mine.map((i) => i.project.name).sort()).toEqual(['acme-prod', 'acme-prod', 'demo']);
    const a = mine.find((i) => i.id === imageVm)!;
    expect(a).toMatchObject({ hypervisorHostname: qcowAz.hypervisorHostname, hypervisor: qcowAz.hypervisorHostname, availabilityZone: 'nova', powerState: 'running', boot: { kind: 'image', imageId: lab.image.id } });
    expect(a.libvirtDomain).toMatch(/^instance-[0-9a-f]{8}$/);
    expect(a.policy).toBe('lab-kvm');
    expect(a.strategy).toBe('libvirt-ssh');
  });

  it('image-booted on the qcow2 compute: root is a qcow2 file, the data volume an RBD image', () => {
    const a = report.instances.find((i) => i.id === imageVm)!;
    const root = a.disks.find((d) => d.key === 'root')!;
    expect(root).toMatchObject({ role: 'root', bootIndex: 0, evidence: 'libvirt', backend: { kind: 'file', format: 'qcow2', path: `${qcowAz.instancesPath}/${imageVm}/disk` } });
    const data = a.disks.find((d) => d.volumeId === dataVolume)!;
    expect(data).toMatchObject({ key: `volume-${dataVolume}`, volumeType: 'ceph', sizeGb: 1, backend: { kind: 'rbd', pool: lab.volumeType.rbdPool, image: `volume-${dataVolume}`, cephCluster: 'lab' } });
    expect(data.bootIndex).toBeUndefined();
  });

  it('volume-booted: the boot volume is an RBD image with boot index 0', () => {
    const b = report.instances.find((i) => i.id === volumeVm)!;
    expect(b.boot).toEqual({ kind: 'volume', volumeId: bootVolume });
    expect(b.disks).toHaveLength(1);
    expect(b.disks[0]).toMatchObject({ bootIndex: 0, backend: { kind: 'rbd', pool: 'volumes', image: `volume-${bootVolume}` } });
  });

  it('image-booted on the rbd compute: root is vms/<uuid>_disk', () => {
    const c = report.instances.find((i) => i.id === aliceVm)!;
    expect(c.hypervisor).toBe(rbdAz.hypervisorHostname);
    expect(c.disks.find((d) => d.key === 'root')!.backend).toMatchObject({ kind: 'rbd', pool: rbdAz.rbdPool, image: `${aliceVm}_disk`, cephCluster: 'lab' });
    expect(c.keyName).toBe(lab.alice.keypair);
  });

  it('hypervisors are reachable over SSH; Ceph pools seen as hypervisor storage', () => {
    for (const h of [qcowAz.hypervisorHostname, rbdAz.hypervisorHostname]) {
      expect(report.hypervisors.find((x) => x.name === h)).toMatchObject({ inInventory: true, reachability: { reachable: true, method: 'ssh' } });
    }
    expect(report.cephPools.find((p) => p.pool === 'vms')).toMatchObject({ cephCluster: 'lab', usedFor: ['ephemeral'] });
    expect(report.cephPools.find((p) => p.pool === 'volumes')).toMatchObject({ cephCluster: 'lab', usedFor: ['volumes'] });
  });

  it('a non-admin user sees only their project, and is told why', async () => {
    const r = await syncCloud(alice, inventory, { probe: commandProbe(async () => ({ code: 1, stdout: '', stderr: 'unused' })), log });
    expect(r.admin).toBe(false);
    expect(r.instances.every((i) => i.project.id === lab.alice.projectId)).toBe(true);
    expect(r.instances.find((i) => i.id === aliceVm)?.hypervisorHostname).toBeUndefined();
    expect(r.warnings.map((w) => w.code)).toContain('not-admin');
  });
});

describe('metadata capture against the lab', () => {
  const captured = new Map<string, CapturedMetadata>();
  beforeAll(async () => {
    for (const id of [imageVm, volumeVm, aliceVm]) captured.set(id, await captureMetadata(backup, id));
  }, 120_000);

  it('image-booted: server with embedded flavor, flavor, image with properties, volumes, types, attachments, ports', () => {
    const m = captured.get(imageVm)!;
    expect(m.issues).toEqual([]);
    const server = (m.files['server.json'] as any).server;
    expect(server.flavor.original_name).toBe('m1.tiny');
    expect(server.tags).toEqual(['vprotect']);
    expect(server.metadata).toEqual({ backup: 'daily' });
    expect((m.files['flavor.json'] as any).flavor).toMatchObject({ id: lab.flavors['m1.tiny'], extra_specs: {} });
    expect((m.files['image.json'] as any).hw_disk_bus).toBe('scsi');
    expect((m.files['volumes.json'] as any).volumes.map((v: any) => v.id)).toEqual([dataVolume]);
    expect((m.files['volume_types.json'] as any).volume_types.map((t: any) => t.name)).toEqual(['ceph']);
    expect((m.files['volume_attachments.json'] as any).volumeAttachments[0]).toMatchObject({ volumeId: dataVolume, attachment_id: expect.any(String) });
    expect((m.files['ports.json'] as any).ports).toEqual([]);
  });

  it('volume-booted: the boot volume and the image it came from', () => {
    const m = captured.get(volumeVm)!;
    expect((m.files['volumes.json'] as any).volumes[0]).toMatchObject({ id: bootVolume, bootable: 'true' });
    expect((m.files['image.json'] as any).id).toBe(lab.image.id);
  });

  it("another user's keypair (alice's, read as admin with user_id) and user_data as returned", () => {
    const m = captured.get(aliceVm)!;
    const kp = (m.files['keypair.json'] as any).keypair;
    expect(kp).toMatchObject({ name: lab.alice.keypair, user_id: lab.alice.userId });
    expect(kp.public_key).toBe(readFileSync(`${lab.alice.privateKeyFile}.pub`, 'utf8').trim());
    expect(kp).not.toHaveProperty('private_key');
    const server = (m.files['server.json'] as any).server;
    expect(Buffer.from(server['OS-EXT-SRV-ATTR:user_data'], 'base64').toString()).toContain('#cloud-config');
    expect(log.lines.join('\n')).not.toContain('do-not-log');
    expect(log.lines.join('\n')).not.toContain(server['OS-EXT-SRV-ATTR:user_data']);
  });

  it('writes metadata/ files that readMetadata types back; plans and runs a restore into another project', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'vprotect-meta-')), 'metadata');
    await writeMetadata(dir, captured.get(aliceVm)!);
    const meta = await readMetadata(dir);
    expect(meta.server.id).toBe(aliceVm);
    expect(meta.keypair?.userId).toBe(lab.alice.userId);
    const plan = await planRestore(meta, backup, { project: 'acme-prod', name: `${tag}-restored` });
    expect(plan.problems).toEqual([]);
    // alice's keypair exists for alice; backup (who creates the server) gets the same key.
    expect(plan.steps.map((s) => s.action)).toEqual(['upload-image', 'create-keypair', 'create-server']);
    expect(plan.steps[1]).toMatchObject({ name: lab.alice.keypair, userId: lab.backup.userId });
    expect(plan.steps.at(-1)).toMatchObject({ action: 'create-server', name: `${tag}-restored`, project: { name: 'acme-prod' }, flavor: { name: 'm1.tiny' }, boot: 'image', networks: 'none', keyName: lab.alice.keypair });

    // Execute it with the primitives: the root disk's data here is the lab image (what alice booted).
    const chunks: Buffer[] = [];
    await restore.downloadImage(backup, lab.image.id, new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(c), cb()) }));
    const upload = plan.steps[0] as Extract<(typeof plan.steps)[number], { action: 'upload-image' }>;
    const { image } = await restore.uploadImage(backup, { name: `${tag}-${upload.name}`, diskFormat: upload.diskFormat, properties: upload.properties }, Readable.from(chunks));
    created.images.push(image.id);
    const kp = plan.steps[1] as Extract<(typeof plan.steps)[number], { action: 'create-keypair' }>;
    expect((await restore.ensureKeypair(backup, { name: kp.name, publicKey: kp.publicKey, userId: kp.userId })).created).toBe(true);
    try {
      const target = await backup.forProject(plan.target.project.id);
      const server = await restore.createServer(target, serverSpecFor(plan, { volumes: {}, imageId: image.id }, meta));
      created.servers.push({ cloud: target, id: server.id });
      expect(server).toMatchObject({ status: 'ACTIVE', projectId: lab.backup.projectId, keyName: lab.alice.keypair, availabilityZone: rbdAz.availabilityZone, imageId: image.id });
      expect(server.userData).toBe(meta.server.userData);
    } finally {
      await (await backup.nova()).deleteKeypair(lab.alice.keypair); // backup's copy only; alice's stays
    }
    const bad = await planRestore(meta, backup, { flavor: 'no-such-flavor', network: 'no-such-net' });
    expect(bad.problems.join('\n')).toMatch(/flavor no-such-flavor does not exist[\s\S]*network no-such-net does not exist/);
  }, 300_000);
});

describe('restore primitives against the lab', () => {
  it("recreates a missing keypair for its owner (alice) from the captured public key", async () => {
    const m = await captureMetadata(backup, aliceVm);
    const kp = (m.files['keypair.json'] as any).keypair;
    const aliceNova = await alice.nova();
    await aliceNova.deleteKeypair(lab.alice.keypair);
    try {
      const r = await restore.ensureKeypair(backup, { name: kp.name, publicKey: kp.public_key, userId: kp.user_id, type: kp.type });
      expect(r.created).toBe(true);
      const again = await aliceNova.getKeypair(lab.alice.keypair);
      expect(again.publicKey.trim()).toBe(kp.public_key.trim());
      expect((await restore.ensureKeypair(backup, { name: kp.name, publicKey: kp.public_key, userId: kp.user_id })).created).toBe(false);
    } finally {
      // Leave the lab as it was, whatever happened.
      await aliceNova.getKeypair(lab.alice.keypair).catch(() => aliceNova.createKeypair({ name: kp.name, publicKey: kp.public_key }));
    }
  });

  it('a volume uploaded to Glance downloads bit-identical (checksums verified)', async () => {
    // The boot volume holds the lab image (64 MiB, known sha256) followed by zeros up to 1 GiB.
    const spare = (await restore.createVolume(backup, { sizeGb: 1, name: `${tag}-upload`, imageId: lab.image.id })).id;
    created.volumes.push(spare);
    const image = await restore.volumeToImage(backup, spare, `${tag}-from-volume`, { diskFormat: 'raw' });
    created.images.push(image.id);
    const head = createHash('sha256');
    let offset = 0;
    let nonZeroTail = false;
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        const inHead = Math.max(0, Math.min(chunk.length, lab.image.size - offset));
        head.update(chunk.subarray(0, inHead));
        if (inHead < chunk.length && chunk.subarray(inHead).some((b) => b !== 0)) nonZeroTail = true;
        offset += chunk.length;
        cb();
      },
    });
    const { digests } = await restore.downloadImage(backup, image.id, sink);
    expect(digests.bytes).toBe(1024 ** 3);
    expect(head.digest('hex')).toBe(lab.image.sha256);
    expect(nonZeroTail).toBe(false);
  }, 300_000);

  it('a stream uploaded to Glance downloads bit-identical', async () => {
    const data = randomBytes(8 * 1024 * 1024 + 123);
    const { image, digests } = await restore.uploadImage(backup, { name: `${tag}-stream`, diskFormat: 'raw' }, Readable.from([data.subarray(0, 1_000_000), data.subarray(1_000_000)]), { size: data.length });
    created.images.push(image.id);
    expect(digests.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    const chunks: Buffer[] = [];
    await restore.downloadImage(backup, image.id, new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(c), cb()) }));
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
  });

  it('volume (size, type, AZ) → attach to a server → detach → snapshot of it → cleanup', async () => {
    const v = await restore.createVolume(backup, { sizeGb: 1, name: `${tag}-scratch`, volumeType: 'ceph', availabilityZone: 'nova' });
    created.volumes.push(v.id);
    expect(v).toMatchObject({ status: 'available', sizeGb: 1, volumeType: 'ceph', availabilityZone: 'nova' });
    const att = await restore.attachVolume(backup, volumeVm, v.id);
    expect(att.volumeId).toBe(v.id);
    const snap = await restore.snapshotVolume(backup, v.id, { name: `${tag}-snap`, inUse: true });
    expect(snap.status).toBe('available');
    await restore.detachVolume(backup, volumeVm, v.id);
    await restore.deleteSnapshot(backup, snap.id);
    await restore.deleteVolume(backup, v.id);
  }, 300_000);

  it('a server that cannot be scheduled fails with Nova\'s fault, not a timeout', async () => {
    const err = await restore.createServer(backup, { name: `${tag}-nohost`, flavorId: lab.flavors['m1.tiny']!, imageId: lab.image.id, networks: 'none', availabilityZone: 'nova:no-such-host' }).catch((e: unknown) => e);
    // Nova answers 400 for an unknown host on create, or the server goes ERROR: both are clear.
    expect(String((err as Error).message)).toMatch(/no-such-host|No valid host|ERROR/);
    const leftover = (await (await backup.nova()).listServers({ name: `${tag}-nohost` }))[0];
    if (leftover) created.servers.push({ cloud: backup, id: leftover.id });
  }, 300_000);
});
