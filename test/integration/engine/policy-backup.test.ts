/**
 * The main job end to end, as a user runs it: a real Nova instance of the lab, backed up by
 * `vprotect backup --policy lab-kvm` (sync → libvirt-ssh → repository) with a guest write
 * between a full and an incremental; the incremental chain must restore bit-identical to a
 * full backup of the same moment; the point carries the cloud metadata; and `restore --plan`
 * checks a restore into the cloud without creating anything.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseInventory } from '../../../src/inventory/load.js';
import { silentLogger } from '../../../src/log.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { createServer, deleteServer } from '../../../src/openstack/restore.js';
import { settingsFromInventory } from '../../../src/openstack/settings.js';
import { runCli } from '../../helpers/cli.js';
import { LAB_DIR, requireLab, requireLabSsh } from '../../helpers/lab.js';

const INVENTORY = new URL('../../../examples/lab.yaml', import.meta.url).pathname;
const name = `vp-it-policy-${randomBytes(3).toString('hex')}`;
const repo = mkdtempSync(join(tmpdir(), 'vprotect-policy-'));
let cloud: Cloud;
let serverId: string | undefined;
let domain: string;

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Runs vprotect with --json; returns the summary line of a backup. */
async function backup(level: 'full' | 'auto'): Promise<{ pointId: string; level: string; disks: { key: string; dataBytes: number; changedBytes: number }[] }> {
  const r = await runCli(['--json', '-c', INVENTORY, 'backup', '--policy', 'lab-kvm', '--vm', name, '--level', level, '-d', repo], { timeoutMs: 300_000 });
  expect(r.code, r.stderr).toBe(0);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const summary = lines.find((l) => l['type'] === 'summary') as { ok: { pointId: string; level: string; disks: { key: string; dataBytes: number; changedBytes: number }[] }[] };
  expect(summary.ok).toHaveLength(1);
  return summary.ok[0]!;
}

function guestIo(command: string): void {
  const ssh = requireLabSsh();
  execFileSync('ssh', ['-F', ssh.configFile!, ssh.hostAlias!, 'virsh', 'qemu-monitor-command', domain, '--hmp', `'qemu-io -d scsi0-0-0-0 "${command}"'`], { stdio: 'pipe' });
}

beforeAll(async () => {
  requireLab('hypervisor', 'openstack');
  const os = JSON.parse(readFileSync(join(LAB_DIR, 'openstack.json'), 'utf8')) as { image: { id: string }; flavors: Record<string, string> };
  const inv = parseInventory(INVENTORY, readFileSync(INVENTORY, 'utf8'), { env: {} });
  cloud = await Cloud.connect(settingsFromInventory('lab', inv.clouds['lab']!, { env: {} }), { log: silentLogger });
  const server = await createServer(cloud, { name, flavorId: os.flavors['m1.tiny']!, imageId: os.image.id, networks: 'none', availabilityZone: 'nova' }, { timeoutMs: 300_000 });
  serverId = server.id;
  domain = server.instanceName!;
}, 360_000);

afterAll(async () => {
  if (serverId) await deleteServer(cloud, serverId, { timeoutMs: 180_000 });
  cloud?.close();
});

describe('backup --policy of a Nova instance', () => {
  it('full, guest writes, incremental: the chain restores bit-identical to the disk at the snapshot', async () => {
    const full = await backup('full');
    expect(full.level).toBe('full');

    guestIo('write -P 0x61 16M 64k');
    guestIo('write -z 1M 64k');
    const inc = await backup('auto');
    expect(inc.level).toBe('incremental');
    // Only what the guest changed: 64 KiB of data (the zeroed 64 KiB is stored as a zero record).
    expect(inc.disks[0]!.dataBytes).toBe(64 * 1024);
    expect(inc.disks[0]!.changedBytes).toBe(128 * 1024);

    // Nothing writes between these two: a full read through qemu is the disk at that moment.
    const ref = await backup('full');
    const out = mkdtempSync(join(tmpdir(), 'vprotect-policy-restore-'));
    for (const [point, file] of [[inc.pointId, 'inc.raw'], [ref.pointId, 'ref.raw']] as const) {
      const r = await runCli(['-c', INVENTORY, 'restore', '--point', point, '--to-file', join(out, file), '-d', repo], { timeoutMs: 300_000 });
      expect(r.code, r.stderr).toBe(0);
    }
    expect(await sha256(join(out, 'inc.raw'))).toBe(await sha256(join(out, 'ref.raw')));
    const at16M = readFileSync(join(out, 'inc.raw')).subarray(16 << 20, (16 << 20) + 65536);
    expect(at16M.equals(Buffer.alloc(65536, 0x61))).toBe(true);

    // The point keeps the cloud's description of the instance.
    const show = await runCli(['--json', '-c', INVENTORY, 'show', inc.pointId, '-d', repo]);
    expect(show.code, show.stderr).toBe(0);
    const pointDir = (JSON.parse(show.stdout) as { dir?: string; point?: { dir?: string } }).dir ?? '';
    for (const f of ['server.json', 'flavor.json', 'disks.json']) {
      const found = pointDir ? existsSync(join(pointDir, 'metadata', f)) : show.stdout.includes(f);
      expect(found, `${f} in the point's metadata`).toBe(true);
    }
  }, 900_000);

  it('restore --plan lists what a restore into the cloud would create, and creates nothing', async () => {
    const list = await runCli(['--json', '-c', INVENTORY, 'list', '-d', repo]);
    const ids: string[] = [];
    JSON.stringify(JSON.parse(list.stdout), (_k, v: unknown) => {
      if (v && typeof v === 'object' && 'pointId' in v) ids.push(String((v as { pointId: string }).pointId));
      return v;
    });
    const r = await runCli(['--json', '-c', INVENTORY, 'restore', '--point', ids.sort().at(-1)!, '--plan', '--name', `${name}-restored`, '-d', repo]);
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as { steps: { action: string; name?: string }[]; problems: string[] };
    expect(plan.problems).toEqual([]);
    expect(plan.steps.at(-1)).toMatchObject({ action: 'create-server', name: `${name}-restored` });
    const nova = await cloud.nova();
    expect((await nova.listServers({ allProjects: true })).some((s) => s.name === `${name}-restored`)).toBe(false);
  }, 300_000);
});
