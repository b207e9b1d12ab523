/**
 * The one-way data stream as the libvirt-ssh strategy uses it, against the lab's sshd, libvirtd
 * and qemu: a libvirt backup job (qcow2, checkpoint mode) and qemu-nbd (raw, kept overlay) as
 * the helper's NBD servers. Every point restores bit-identical; an incremental with enough
 * data goes through the stream; without the interpreter the backup reads through NBD and the
 * disk's reason says so.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/log.js';
import libvirtSsh from '../../../strategies/libvirt-ssh/index.js';
import { withRead } from '../../helpers/strategy.js';
import { createDomain, destroyDomain, diskDigest, guestWrites, harness, labEnv, MiB, scatteredWrites, type LabEnv } from '../libvirt-ssh/fixture.js';

let env: LabEnv;
const name = `vpt-stream-${process.pid}`;
const leaky = `vpt-stream-leak-${process.pid}`;

beforeAll(() => {
  env = labEnv();
});
afterAll(() => {
  if (env) destroyDomain(env, name);
  if (env) destroyDomain(env, leaky);
});

/** Stream helpers reading `socket` (remote python3 and the local ssh: the lab's sshd is this machine) still running. */
function streamProcesses(socket: string): string[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes('vprotect-stream') && l.includes(socket));
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Debug lines of one backup, and what each disk's reader said about its carriers. */
function capture() {
  const lines: string[] = [];
  const reads = new Map<string, { next: number; nextBytes: number; first: number; firstBytes: number }>();
  const log: Logger = {
    debug: (m, f) => {
      lines.push(`${m} ${JSON.stringify(f ?? {})}`);
      const disk = / (vd[a-z]): read$/.exec(m)?.[1];
      if (disk && f && 'via' in f) reads.set(disk, f['via'] as { next: number; nextBytes: number; first: number; firstBytes: number });
    },
    info() {},
    warn: (m, f) => void lines.push(`WARN ${m} ${JSON.stringify(f ?? {})}`),
    error: (m) => void lines.push(`ERROR ${m}`),
  };
  return { log, lines, reads };
}

describe('libvirt-ssh reads through the one-way data stream', () => {
  it('full and a 40 MiB incremental (backup job and qemu-nbd) restore bit-identical; the incremental went through the stream', async () => {
    createDomain(env, name, [
      { target: 'vda', format: 'qcow2' },
      { target: 'vdb', format: 'raw' },
    ]);
    const h = await harness(env, name);

    const c0 = capture();
    const full = await h.backup('full', { log: c0.log });
    expect(full.level).toBe('full');
    for (const d of full.disks) expect(d.reason).not.toMatch(/read through NBD/);
    // A full starts the stream at once, for each disk.
    expect(c0.lines.filter((l) => l.startsWith('data stream started'))).toHaveLength(2);
    expect(await h.restoredDigest(full.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    expect(await h.restoredDigest(full.pointId, 'vdb')).toBe(diskDigest(env, name, 'vdb'));

    // 40 × 1 MiB per disk (of 64 MiB): above the 32 MiB after which an incremental switches to the stream.
    guestWrites(name, 0, scatteredWrites(40, MiB, 11, 8 * MiB, 60 * MiB));
    guestWrites(name, 1, scatteredWrites(40, MiB, 12, 8 * MiB, 60 * MiB));
    const c1 = capture();
    const inc = await h.backup('auto', { log: c1.log });
    expect(inc.level, JSON.stringify(inc.disks.map((d) => d.reason))).toBe('incremental');
    for (const d of inc.disks) {
      expect(d.dataBytes, d.key).toBe(40 * MiB);
      const via = c1.reads.get(d.key);
      expect(via, `${d.key}: ${c1.lines.join('\n')}`).toBeDefined();
      expect(via!.nextBytes + via!.firstBytes, d.key).toBe(40 * MiB);
      expect(via!.nextBytes, d.key).toBeGreaterThan(0);
    }
    expect(c1.lines.filter((l) => l.startsWith('WARN'))).toEqual([]);
    expect(await h.restoredDigest(inc.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    expect(await h.restoredDigest(inc.pointId, 'vdb')).toBe(diskDigest(env, name, 'vdb'));

    // A small incremental never starts the stream (no second SSH handshake).
    guestWrites(name, 0, scatteredWrites(4, 64 * 1024, 13, 8 * MiB, 60 * MiB));
    const c2 = capture();
    const small = await h.backup('auto', { log: c2.log });
    expect(small.level).toBe('incremental');
    expect(c2.lines.filter((l) => l.startsWith('data stream started'))).toEqual([]);
    expect(await h.restoredDigest(small.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));

    // Without the interpreter (a host without python3): NBD carries the data, the reason says why.
    // Both disks ask for enough to start the stream; the first finds no interpreter, and the
    // second knows it from the connection: it reads through NBD without starting ssh again.
    guestWrites(name, 0, scatteredWrites(36, MiB, 14, 8 * MiB, 60 * MiB));
    guestWrites(name, 1, scatteredWrites(36, MiB, 15, 8 * MiB, 60 * MiB));
    const c3 = capture();
    const fallback = await h.backup('auto', { log: c3.log, options: { python: 'python3-not-installed' } });
    expect(fallback.level).toBe('incremental');
    for (const d of fallback.disks) expect(d.reason, d.key).toMatch(/; read through NBD: python3-not-installed is not installed on hv1: the one-way data stream needs it$/);
    expect(c3.lines.filter((l) => l.startsWith('data stream started'))).toHaveLength(1);
    expect(c3.reads.get('vda')?.nextBytes).toBe(0);
    // The second disk read through the NBD session itself (no switching source to report carriers).
    expect(c3.reads.get('vdb')).toBeUndefined();
    expect(c3.lines.filter((l) => l.startsWith('WARN'))).toEqual([]);
    expect(await h.restoredDigest(fallback.pointId, 'vda')).toBe(diskDigest(env, name, 'vda'));
    expect(await h.restoredDigest(fallback.pointId, 'vdb')).toBe(diskDigest(env, name, 'vdb'));
  }, 600_000);

  it('a full whose NBD export does not match the plan fails the disk and leaves no stream helper or ssh behind', async () => {
    createDomain(env, leaky, [{ target: 'vda', format: 'raw' }]);
    const h = await harness(env, leaky);
    // The plan says 512 bytes more than the export: the size check after NbdSession.open throws,
    // after the full has already started its stream.
    const lying = withRead(libvirtSsh, (s, plan) => s.read({ ...plan, size: plan.size + 512 }));
    const c = capture();
    await expect(h.backup('full', { log: c.log, strategy: lying })).rejects.toThrow(/the NBD export is \d+ bytes, libvirt said/);
    // The debug line of each started stream names its NBD socket (a path in this run's directory)
    // and its private directory (known_hosts), which only closing the stream removes.
    const started = c.lines.filter((l) => l.startsWith('data stream started')).map((l) => JSON.parse(l.slice('data stream started '.length)) as { socket: string; dir: string });
    expect(started.length).toBeGreaterThan(0);
    for (const s of started) expect(existsSync(s.dir), `${s.dir} was left behind`).toBe(false);
    const left = () => started.flatMap((s) => streamProcesses(s.socket));
    await waitFor(() => left().length === 0).catch(() => {
      throw new Error(`left running: ${left().map((l) => l.slice(0, 120)).join(' | ')}`);
    });
  }, 300_000);
});
