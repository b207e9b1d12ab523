/**
 * `restore --to-cloud` against the lab's OpenStack: two real Nova instances are backed up —
 * an image-booted one on the qcow2 compute (`vm`, libvirt-ssh) and a volume-booted one on the
 * rbd compute (`vm-rbd`, its boot volume in Ceph, ceph-rbd) — after a guest write, restored
 * into the cloud under a new name, and the new server's disk is proved bit-identical to the
 * point restored to a file: the qcow2 instance's disk read on the hypervisor and the Glance
 * image downloaded (checked against Glance's hashes), the new Cinder volume read with `rbd
 * export`. Then failures: a fault after the server is ACTIVE, Ctrl-C during the upload, and a
 * Cinder backend vprotect cannot write (no Ceph cluster in the inventory) each leave nothing.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseInventory } from '../../../src/inventory/load.js';
import type { Inventory } from '../../../src/inventory/types.js';
import { silentLogger } from '../../../src/log.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { readMetadata } from '../../../src/openstack/plan.js';
import { attachVolume, createServer, createVolume, deleteImage, deleteServer, deleteVolume, downloadImage } from '../../../src/openstack/restore.js';
import { settingsFromInventory } from '../../../src/openstack/settings.js';
import { openRepository } from '../../../src/repository/repository.js';
import { RestoreCloudError, restoreToCloud, type RestoreCloudRequest } from '../../../src/restore-cloud/run.js';
import { runCommand } from '../../../src/transport/command.js';
import { BIN, runCli } from '../../helpers/cli.js';
import { requireLab, requireLabSsh } from '../../helpers/lab.js';
import { labOpenStack, type LabOpenStack } from '../openstack/lab.js';

const INVENTORY = new URL('../../../examples/lab.yaml', import.meta.url).pathname;
const tag = `vp-it-rc-${randomBytes(3).toString('hex')}`;
const work = mkdtempSync(join(tmpdir(), 'vprotect-restore-cloud-'));
const repoDir = join(work, 'repo');
let lab: LabOpenStack;
let inventory: Inventory;
let cloud: Cloud;

/** Everything the tests create, removed in afterAll whatever happened. */
const created = { servers: new Set<string>(), volumes: new Set<string>(), images: new Set<string>() };
/** The source instances. */
let imageBooted: { id: string; domain: string; dataVolumeId: string; point?: string };
let volumeBooted: { id: string; domain: string; volumeId: string; point?: string };
/** The volume the successful volume-booted restore made. */
let restoredVolume: string | undefined;

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A write inside the running guest, to its first (scsi0-0-0-0) or second (scsi0-0-0-1) disk. */
function guestIo(domain: string, command: string, device = 'scsi0-0-0-0'): void {
  const ssh = requireLabSsh();
  execFileSync('ssh', ['-F', ssh.configFile!, ssh.hostAlias!, 'virsh', 'qemu-monitor-command', domain, '--hmp', `'qemu-io -d ${device} "${command}"'`], { stdio: 'pipe' });
}

async function backup(policy: string, vm: string): Promise<string> {
  const r = await runCli(['--json', '-c', INVENTORY, 'backup', '--policy', policy, '--vm', vm, '--level', 'full', '-d', repoDir], { timeoutMs: 300_000 });
  expect(r.code, r.stderr).toBe(0);
  const summary = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type?: string; ok?: { pointId: string }[] }).find((l) => l.type === 'summary');
  expect(summary?.ok).toHaveLength(1);
  return summary!.ok![0]!.pointId;
}

/** A disk of the point restored to a file: its sha256, and `length` bytes at `offset`. */
async function pointSha(point: string, at: { offset: number; length: number }, disk?: string): Promise<{ sha: string; bytes: Buffer }> {
  const file = join(work, `${point}.raw`);
  const r = await runCli(['-c', INVENTORY, 'restore', '--point', point, ...(disk ? ['--disk', disk] : []), '--to-file', file, '-d', repoDir], { timeoutMs: 300_000 });
  expect(r.code, r.stderr).toBe(0);
  try {
    const bytes = Buffer.alloc(at.length);
    const fd = openSync(file, 'r');
    try {
      readSync(fd, bytes, 0, at.length, at.offset);
    } finally {
      closeSync(fd);
    }
    return { sha: await sha256File(file), bytes };
  } finally {
    rmSync(file, { force: true });
  }
}

const cephArgs = () => {
  const c = requireLab('ceph').ceph!;
  return ['--id', c.user, '--conf', c.conf, '--keyring', c.keyring];
};

async function rbdExportSha(spec: string): Promise<string> {
  const file = join(work, 'rbd-export.raw');
  await runCommand(['rbd', ...cephArgs(), 'export', '--no-progress', spec, file], { timeoutMs: 300_000 });
  try {
    return await sha256File(file);
  } finally {
    rmSync(file, { force: true });
  }
}

/** A request for the engine, as the CLI builds it (tests call the engine for fault injection). */
async function request(point: string, over: Partial<RestoreCloudRequest>): Promise<RestoreCloudRequest> {
  const repo = await openRepository(repoDir);
  const p = await repo.findPoint(point);
  const dir = join(p.dir, 'metadata');
  const domainXml = (() => {
    try {
      return readFileSync(join(dir, 'domain.xml'), 'utf8');
    } catch {
      return undefined;
    }
  })();
  const settings = settingsFromInventory('lab', inventory.clouds['lab']!, { env: {} });
  return { repo, point: p, meta: await readMetadata(dir), domainXml, cloud, reconnect: () => Cloud.connect(settings, { log: silentLogger }), inventory, mapping: {}, log: silentLogger, ...over };
}

/** Nothing named `name` (server, image, volume) exists any more. */
async function nothingNamed(name: string): Promise<void> {
  const nova = await cloud.nova();
  expect((await nova.listServers({ allProjects: true })).filter((s) => s.name === name).map((s) => `${s.id} ${s.status}`)).toEqual([]);
  expect((await cloud.glance.listImages({ name: `vprotect-restore-${name}` })).map((i) => i.id)).toEqual([]);
  const cinder = await cloud.cinder();
  expect((await cinder.listVolumes({ allProjects: true })).filter((v) => v.metadata['vprotect_server'] === name).map((v) => `${v.id} ${v.status}`)).toEqual([]);
}

/** Volumes that restores of `point` made (they carry the point id in their metadata). */
async function volumesOfPoint(point: string): Promise<string[]> {
  const cinder = await cloud.cinder();
  return (await cinder.listVolumes({ allProjects: true })).filter((v) => v.metadata['vprotect_point'] === point).map((v) => v.id);
}

beforeAll(async () => {
  requireLab('hypervisor', 'openstack', 'ceph');
  lab = labOpenStack();
  inventory = parseInventory(INVENTORY, readFileSync(INVENTORY, 'utf8'), { env: {}, offline: true });
  cloud = await Cloud.connect(settingsFromInventory('lab', inventory.clouds['lab']!, { env: {} }), { log: silentLogger });
  const flavorId = lab.flavors['m1.tiny']!;
  const wait = { timeoutMs: 300_000 };
  // Both sources at once: TCG guests take ~40 s each to become ACTIVE.
  const [a, b] = await Promise.all([
    (async () => {
      // With an empty data volume attached: a libvirt-ssh point holding a Cinder (RBD) volume.
      const [s, data] = await Promise.all([
        createServer(cloud, { name: `${tag}-img`, flavorId, imageId: lab.image.id, networks: 'none', availabilityZone: 'nova' }, wait, { onCreated: (id) => created.servers.add(id) }),
        createVolume(cloud, { sizeGb: 1, name: `${tag}-data`, volumeType: lab.volumeType.name }, wait, { onCreated: (id) => created.volumes.add(id) }),
      ]);
      await attachVolume(cloud, s.id, data.id, {}, wait);
      return { id: s.id, domain: s.instanceName!, dataVolumeId: data.id };
    })(),
    (async () => {
      const v = await createVolume(cloud, { sizeGb: 1, name: `${tag}-boot`, imageId: lab.image.id, volumeType: lab.volumeType.name }, wait, { onCreated: (id) => created.volumes.add(id) });
      const s = await createServer(
        cloud,
        { name: `${tag}-vol`, flavorId, networks: 'none', availabilityZone: 'rbd', blockDevices: [{ uuid: v.id, sourceType: 'volume', destinationType: 'volume', bootIndex: 0, deleteOnTermination: false }] },
        wait,
        { onCreated: (id) => created.servers.add(id) },
      );
      return { id: s.id, domain: s.instanceName!, volumeId: v.id };
    })(),
  ]);
  imageBooted = a;
  volumeBooted = b;
}, 420_000);

afterAll(async () => {
  const problems: string[] = [];
  const attempt = (what: string, p: Promise<unknown>) => p.catch((e: unknown) => void problems.push(`${what}: ${String(e)}`));
  await Promise.all([...created.servers].map((id) => attempt(`server ${id}`, deleteServer(cloud, id, { timeoutMs: 300_000 }))));
  for (const id of created.images) await attempt(`image ${id}`, deleteImage(cloud, id));
  for (const id of created.volumes) {
    // ceph-rbd keeps its newest snapshot on the source volume's image; Cinder refuses to delete it then.
    const snaps = await runCommand(['rbd', ...cephArgs(), 'snap', 'ls', '--format', 'json', `${lab.volumeType.rbdPool}/volume-${id}`], { timeoutMs: 60_000 }).then((r) => JSON.parse(r.stdout) as { name: string }[], () => []);
    for (const s of snaps.filter((x) => x.name.startsWith('vprotect-'))) await attempt(`snapshot ${s.name}`, runCommand(['rbd', ...cephArgs(), 'snap', 'rm', '--no-progress', `${lab.volumeType.rbdPool}/volume-${id}@${s.name}`], { timeoutMs: 60_000 }));
    await attempt(`volume ${id}`, deleteVolume(cloud, id, { timeoutMs: 300_000 }));
  }
  cloud?.close();
  rmSync(work, { recursive: true, force: true });
  if (problems.length) throw new Error(`cleanup left: ${problems.join('; ')}`);
}, 900_000);

interface CliResult {
  server: { id: string; name: string; status: string; host: string };
  volumes: { id: string; boot: boolean; rbd: string; disk: string; sourceDisk: string }[];
  image?: { id: string; sha256: string; kept: boolean };
  notes: string[];
}

describe('restore --to-cloud', () => {
  it('an image-booted instance of the qcow2 compute with a Cinder volume (libvirt-ssh point): root disk to Glance, volume through RBD, server ACTIVE, both disks bit-identical', async () => {
    guestIo(imageBooted.domain, 'write -P 0x6b 40M 256k');
    guestIo(imageBooted.domain, 'write -P 0x77 300M 128k', 'scsi0-0-0-1');
    const point = (imageBooted.point = await backup('lab-kvm', imageBooted.id));
    // libvirt-ssh keys disks by target: sda (root), sdb (the volume, tied to it by <serial>).
    const ref = await pointSha(point, { offset: 40 << 20, length: 256 << 10 }, 'sda');
    // The guest's write is in the point (so the comparison is not just with the lab image).
    expect(ref.bytes.equals(Buffer.alloc(256 << 10, 0x6b))).toBe(true);
    const expected = ref.sha;
    const dataRef = await pointSha(point, { offset: 300 << 20, length: 128 << 10 }, 'sdb');
    expect(dataRef.bytes.equals(Buffer.alloc(128 << 10, 0x77))).toBe(true);

    const name = `${tag}-img-restored`;
    const r = await runCli(['--json', '-c', INVENTORY, 'restore', '--point', point, '--to-cloud', 'lab', '--name', name, '-d', repoDir], { timeoutMs: 900_000 });
    const doc = JSON.parse(r.stdout || '{}') as CliResult;
    if (doc.server?.id) created.servers.add(doc.server.id);
    if (doc.image?.id) created.images.add(doc.image.id);
    for (const v of doc.volumes ?? []) created.volumes.add(v.id);
    expect(r.code, r.stderr).toBe(0);
    expect(doc.server).toMatchObject({ name, status: 'ACTIVE', host: lab.computes.find((c) => c.imagesType === 'qcow2')!.host });
    expect(doc.volumes).toHaveLength(1);
    const vol = doc.volumes[0]!;
    expect(vol).toMatchObject({ boot: false, disk: `volume-${imageBooted.dataVolumeId}`, sourceDisk: 'sdb' });
    expect(await rbdExportSha(`${lab.volumeType.rbdPool}/volume-${vol.id}`)).toBe(dataRef.sha);
    const server = await (await cloud.nova()).getServer(doc.server.id);
    expect(server.volumesAttached.map((a) => a.id)).toEqual([vol.id]);
    expect(doc.image).toMatchObject({ kept: true, sha256: expected });
    expect(doc.notes.join('\n')).toMatch(/holds the restored root disk and is kept.*openstack image delete/);

    // What Nova booted: the new instance's disk on the hypervisor (qcow2 over _base).
    const instanceDisk = join(lab.computes.find((c) => c.imagesType === 'qcow2')!.instancesPath, doc.server.id, 'disk');
    const flat = join(work, 'instance.raw');
    execFileSync('qemu-img', ['convert', '-U', '-O', 'raw', instanceDisk, flat]);
    expect(await sha256File(flat)).toBe(expected);
    rmSync(flat);
    // The kept image, downloaded and checked against Glance's own md5/sha512.
    const h = createHash('sha256');
    await downloadImage(cloud, doc.image!.id, new Writable({ write: (c: Buffer, _e, cb) => (h.update(c), cb()) }));
    expect(h.digest('hex')).toBe(expected);
  }, 1_200_000);

  it('a volume-booted instance of the rbd compute: new bootable Cinder volume written through RBD, server ACTIVE from it, bit-identical', async () => {
    guestIo(volumeBooted.domain, 'write -P 0x3c 48M 192k');
    const point = (volumeBooted.point = await backup('lab-rbd', volumeBooted.id));
    const ref = await pointSha(point, { offset: 48 << 20, length: 192 << 10 }, `volume-${volumeBooted.volumeId}`);
    expect(ref.bytes.equals(Buffer.alloc(192 << 10, 0x3c))).toBe(true);
    const expected = ref.sha;

    const name = `${tag}-vol-restored`;
    const r = await runCli(['--json', '-c', INVENTORY, 'restore', '--point', point, '--to-cloud', '--name', name, '--availability-zone', 'rbd', '-d', repoDir], { timeoutMs: 900_000 });
    const doc = JSON.parse(r.stdout || '{}') as CliResult;
    if (doc.server?.id) created.servers.add(doc.server.id);
    for (const v of doc.volumes ?? []) created.volumes.add(v.id);
    expect(r.code, r.stderr).toBe(0);
    expect(doc.server).toMatchObject({ name, status: 'ACTIVE', host: lab.computes.find((c) => c.imagesType === 'rbd')!.host });
    expect(doc.image).toBeUndefined();
    expect(doc.volumes).toHaveLength(1);
    const vol = doc.volumes[0]!;
    restoredVolume = vol.id;
    expect(vol).toMatchObject({ boot: true, disk: `volume-${volumeBooted.volumeId}`, rbd: `lab:${lab.volumeType.rbdPool}/volume-${vol.id}` });
    expect(await rbdExportSha(`${lab.volumeType.rbdPool}/volume-${vol.id}`)).toBe(expected);

    // Nova booted from it, with the original's virtual hardware (image metadata → scsi bus).
    const cinder = await cloud.cinder();
    const v = await cinder.getVolume(vol.id);
    expect(v).toMatchObject({ bootable: true, status: 'in-use' });
    expect(v.imageMetadata).toMatchObject({ hw_disk_bus: 'scsi', hw_scsi_model: 'virtio-scsi' });
    expect(v.attachments.map((a) => a.serverId)).toEqual([doc.server.id]);
    const server = await (await cloud.nova()).getServer(doc.server.id);
    expect(server.imageId).toBeUndefined();
    expect(server.volumesAttached.map((a) => a.id)).toEqual([vol.id]);
  }, 1_200_000);

  it('a failure after the server is ACTIVE removes the server, its volume and nothing else is left', async () => {
    expect(volumeBooted.point, 'the volume-booted point of the test before').toBeDefined();
    const name = `${tag}-fault`;
    const req = await request(volumeBooted.point!, {
      mapping: { name, availabilityZone: 'rbd' },
      afterStep: (step) => {
        if (step === 'server') throw new Error('injected fault after the server step');
      },
    });
    const err = await restoreToCloud(req).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RestoreCloudError);
    const e = err as RestoreCloudError;
    expect(e.message).toMatch(/injected fault/);
    expect(e.message).toMatch(/removed what it had made \(server .*, volume .*\); nothing is left/);
    expect(e.left).toEqual([]);
    await nothingNamed(name);
    // Of the volumes ever made from this point, only the successful restore's is there.
    expect(await volumesOfPoint(volumeBooted.point!)).toEqual([restoredVolume]);
  }, 900_000);

  it('Ctrl-C during the Glance upload: the half-made image is removed, exit status 130', async () => {
    expect(imageBooted.point, 'the image-booted point of the first test').toBeDefined();
    const name = `${tag}-int`;
    const ac = new AbortController();
    const req = await request(imageBooted.point!, {
      mapping: { name },
      signal: ac.signal,
      // Interrupt once the upload has moved 64 MiB.
      events: (ev) => {
        if (ev.type === 'progress' && String(ev['id']).startsWith('upload:')) ac.abort();
      },
    });
    // The run's own session is cut by the signal, as the CLI's is.
    req.cloud = await Cloud.connect(settingsFromInventory('lab', inventory.clouds['lab']!, { env: {} }), { log: silentLogger, signal: ac.signal });
    try {
      const err = await restoreToCloud(req).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(err).toBeInstanceOf(RestoreCloudError);
      expect((err as RestoreCloudError).exitCode).toBe(130);
      expect((err as RestoreCloudError).left).toEqual([]);
    } finally {
      req.cloud.close();
    }
    await nothingNamed(name);
  }, 900_000);

  it('SIGINT to the CLI while Nova builds the server: server, volume and image removed through a new session, exit 130', async () => {
    expect(imageBooted.point, 'the image-booted point of the first test').toBeDefined();
    const name = `${tag}-sigint`;
    const child = spawn(process.execPath, [BIN, '-c', INVENTORY, 'restore', '--point', imageBooted.point!, '--to-cloud', '--name', name, '-d', repoDir], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/root' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const nova = await cloud.nova();
    // Interrupt as soon as Nova has the server (it is then still building: TCG boots take tens of seconds).
    const deadline = Date.now() + 600_000;
    let seen: string | undefined;
    while (!seen && Date.now() < deadline && child.exitCode === null) {
      seen = (await nova.listServers({ allProjects: true })).find((x) => x.name === name)?.id;
      if (!seen) await new Promise((r) => setTimeout(r, 300));
    }
    if (seen) created.servers.add(seen);
    expect(seen, `the restore never created its server: ${stderr}`).toBeDefined();
    child.kill('SIGINT');
    const code = await exited;
    expect(code, stderr).toBe(130);
    // Newest first: the server, then the image, then the volume it held.
    expect(stderr).toMatch(/removed what it had made \(server .*, image .*, volume .*\); nothing is left/);
    await nothingNamed(name);
  }, 900_000);

  it('a Cinder volume that no Ceph cluster of the inventory holds: clear error naming the fix, the new volume removed', async () => {
    const name = `${tag}-norbd`;
    const req = await request(volumeBooted.point!, { mapping: { name, availabilityZone: 'rbd' }, inventory: { cephClusters: {} } });
    const err = await restoreToCloud(req).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(RestoreCloudError);
    const e = err as RestoreCloudError;
    expect(e.exitCode).toBe(64);
    expect(e.message).toMatch(/is not an RBD image in any Ceph cluster of the inventory/);
    expect(e.hint).toMatch(/--volume-type.*cephClusters.*cinder-attach/);
    expect(e.message).toMatch(/nothing is left/);
    await nothingNamed(name);
  }, 600_000);

  it('an impossible mapping is refused before anything is made (exit 64)', async () => {
    const r = await runCli(['--json', '-c', INVENTORY, 'restore', '--point', imageBooted.point!, '--to-cloud', '--name', `${tag}-bad`, '--flavor', 'no-such-flavor', '-d', repoDir], { timeoutMs: 300_000 });
    expect(r.code, r.stderr).toBe(64);
    expect(JSON.parse(r.stdout).error.message).toMatch(/flavor no-such-flavor does not exist/);
    await nothingNamed(`${tag}-bad`);
  }, 300_000);
});
