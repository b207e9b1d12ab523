/**
 * A libvirt incremental pull backup read through the SSH-forwarded NBD socket: checkpoint,
 * guest writes (qemu-io through the monitor, which really dirty the bitmap), backup-begin
 * with <incremental>, then the dirty-bitmap reader — compared byte for byte with the disk.
 * Uses its own throw-away domain so the lab's sample domains keep no checkpoints.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import type { Extent } from '../../../src/repository/extents.js';
import { dirtyReadContexts, FULL_READ_CONTEXTS, NbdSession, readDirty, readFull } from '../../../src/transport/nbd/index.js';
import { SshPool, type SshConnection } from '../../../src/transport/ssh.js';
import { requireLab, type Lab } from '../../helpers/lab.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let lab: Lab;
let pool: SshPool;
let conn: SshConnection;
let local: string;
const name = `vp-transport-${process.pid}`;
let vms: string;
let disk: string;

beforeAll(async () => {
  lab = requireLab('hypervisor');
  const ssh = lab.ssh!;
  const hv: HypervisorConfig = { name: 'hv1', address: ssh.host, port: ssh.port, user: ssh.user, keyFile: ssh.keyFile, hostKey: { knownHostsFile: ssh.knownHostsFile } };
  pool = new SshPool({ env: {} });
  conn = await pool.connection(hv);
  local = mkdtempSync(join(tmpdir(), 'vp-libvirt-inc-'));
  vms = lab.vmsDir!;
  disk = join(vms, `${name}.qcow2`);
  await conn.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk, '64M']);
  await conn.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 1M 2M', disk]);
  const type = lab.libvirt?.accel === 'kvm' ? 'kvm' : 'qemu';
  const xml = `<domain type='${type}'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
    <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
    <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>`;
  await conn.run(['virsh', 'define', '/dev/stdin'], { stdin: xml });
  await conn.run(['virsh', 'start', name]);
}, 120_000);

afterAll(async () => {
  if (conn) {
    await conn.exec(['virsh', 'domjobabort', name]);
    await conn.exec(['virsh', 'destroy', name]);
    await conn.exec(['virsh', 'undefine', name, '--checkpoints-metadata']);
    await conn.exec(['sh', '-c', 'rm -f "$1".*', 'sh', join(vms, name)]);
  }
  await pool?.close();
  if (local) rmSync(local, { recursive: true, force: true });
});

async function guestWrite(command: string): Promise<void> {
  await conn.run(['virsh', 'qemu-monitor-command', name, '--hmp', `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "${command}"`]);
}

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

function merged(ranges: Array<{ offset: number; length: number }>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last[1] === r.offset) last[1] += r.length;
    else out.push([r.offset, r.offset + r.length]);
  }
  return out;
}

describe('libvirt incremental pull backup through SSH', () => {
  it('reads exactly the dirty ranges, dirty ∧ zero as zero extents, bit-identical', async () => {
    const cp = `<domaincheckpoint><name>cp1</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`;
    await conn.run(['virsh', 'checkpoint-create', name, '/dev/stdin'], { stdin: cp });
    await guestWrite('write -P 0x61 16M 64k');
    await guestWrite('write -P 0x62 40M 100k'); // unaligned to the 64 KiB bitmap granularity
    await guestWrite('write -z 2M 512k'); // zeroes over data written before the checkpoint

    const sock = join(vms, `${name}.backup.sock`);
    const backup = `<domainbackup mode='pull'><incremental>cp1</incremental><server transport='unix' socket='${sock}'/>
      <disks><disk name='vda' backup='yes' type='file'><scratch file='${join(vms, `${name}.vda.scratch`)}'/></disk></disks></domainbackup>`;
    await conn.run(['virsh', 'backup-begin', name, '/dev/stdin'], { stdin: backup });
    try {
      const info = (await conn.run(['virsh', 'backup-dumpxml', name])).stdout;
      const bitmap = /exportbitmap='([^']+)'/.exec(info)?.[1];
      expect(bitmap).toBeDefined();
      const session = await NbdSession.open(conn.nbdDialer({ path: sock }), { exportName: 'vda', metaContexts: dirtyReadContexts(bitmap!) });
      const dirty = await collect(readDirty(session, bitmap!));
      await session.close();

      // The guest does nothing by itself, so the live disk is the reference.
      const ref = join(local, 'ref.raw');
      execFileSync('qemu-img', ['convert', '-U', '-O', 'raw', disk, ref]);
      const reference = readFileSync(ref);
      for (const e of dirty) {
        const want = reference.subarray(e.offset, e.offset + e.length);
        if (e.data) expect(e.data.equals(want)).toBe(true);
        else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
      }
      expect(merged(dirty)).toEqual([
        [2 * MiB, 2 * MiB + 512 * KiB],
        [16 * MiB, 16 * MiB + 64 * KiB],
        [40 * MiB, 40 * MiB + 128 * KiB],
      ]);
      expect(dirty.filter((e) => e.offset < 3 * MiB).every((e) => !e.data)).toBe(true);

      // The same job's export also serves a full read (the point-in-time disk), bit-identical.
      const full = await NbdSession.open(conn.nbdDialer({ path: sock }), { exportName: 'vda', metaContexts: FULL_READ_CONTEXTS });
      let at = 0;
      for await (const e of readFull(full)) {
        const want = reference.subarray(e.offset, e.offset + e.length);
        if (e.data) expect(e.data.equals(want)).toBe(true);
        else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
        at += e.length;
      }
      await full.close();
      expect(at).toBe(reference.length);
    } finally {
      await conn.exec(['virsh', 'domjobabort', name]);
    }
  });
});
