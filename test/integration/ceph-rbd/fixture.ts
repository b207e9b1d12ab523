/**
 * The lab's Ceph as the ceph-rbd tests use it: small scratch images (unique names, removed
 * afterwards), guest-like writes through qemu-io on `rbd:`, references made with `rbd export`
 * of a snapshot, and a StrategyContext built from the lab's cluster. Fails (never skips) with
 * "…start it with `npm run lab:up`" when Ceph is down.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Inventory } from '../../../src/inventory/types.js';
import { silentLogger, type Logger } from '../../../src/log.js';
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import type { Repository } from '../../../src/repository/repository.js';
import { restoreToRawFile } from '../../../src/repository/restore.js';
import type { BackupTarget, StrategyContext } from '../../../src/strategy/contract.js';
import { runCommand } from '../../../src/transport/command.js';
import { requireLab } from '../../helpers/lab.js';

export const POOL = 'volumes';

export interface CephLab {
  conf: string;
  keyring: string;
  user: string;
}

export function requireCeph(): CephLab {
  const lab = requireLab('ceph');
  const c = lab.ceph!;
  return { conf: c.conf, keyring: c.keyring, user: c.user };
}

export function rbdArgs(ceph: CephLab): string[] {
  return ['--id', ceph.user, '--conf', ceph.conf, '--keyring', ceph.keyring];
}

export async function rbd(ceph: CephLab, ...args: string[]): Promise<string> {
  return (await runCommand(['rbd', ...rbdArgs(ceph), ...args], { timeoutMs: 120_000 })).stdout;
}

export function inventoryFor(ceph: CephLab, pools: string[] = [POOL]): Inventory {
  return {
    file: '/dev/null',
    version: 1,
    clouds: {},
    hypervisors: [],
    cephClusters: { lab: { conf: { path: ceph.conf }, keyring: { path: ceph.keyring }, user: ceph.user, pools } },
    destinations: {},
    proxies: [],
    policies: [],
  };
}

/** Logs kept for assertions (warnings of a run). */
export function recordingLogger(): Logger & { lines: { level: string; message: string }[] } {
  const lines: { level: string; message: string }[] = [];
  const add = (level: string) => (message: string) => void lines.push({ level, message });
  return { lines, debug: add('debug'), info: add('info'), warn: add('warn'), error: add('error') };
}

export function contextFor(ceph: CephLab, over: Partial<StrategyContext> = {}): StrategyContext {
  return {
    log: silentLogger,
    events: () => {},
    signal: new AbortController().signal,
    dryRun: false,
    inventory: inventoryFor(ceph),
    policy: undefined,
    options: {},
    env: {},
    ...over,
  };
}

/** A scratch image of `size` bytes; remove() purges its snapshots (unprotecting) and deletes it. */
export class ScratchImage {
  readonly name = `vpt-${randomBytes(4).toString('hex')}`;
  constructor(
    readonly ceph: CephLab,
    readonly pool = POOL,
  ) {}

  get spec(): string {
    return `${this.pool}/${this.name}`;
  }

  target(vmId = `vm-${this.name}`, key = 'vda'): BackupTarget {
    return { vmId, vmName: vmId, disks: [{ key, kind: 'rbd', pool: this.pool, image: this.name }] };
  }

  async create(size: number): Promise<void> {
    await rbd(this.ceph, 'create', '--size', `${size}B`, this.spec);
  }

  /** qemu-io commands on the image (`write -P 0x11 0 4M`, `write -z …`, `discard …`). */
  async io(...commands: string[]): Promise<void> {
    const file = `rbd:${this.spec}:id=${this.ceph.user}:conf=${this.ceph.conf}:keyring=${this.ceph.keyring}`;
    await runCommand(['qemu-io', '-f', 'raw', file, ...commands.flatMap((c) => ['-c', c])], { timeoutMs: 120_000 });
  }

  async snapshots(): Promise<{ id: number; name: string; protected: string }[]> {
    return JSON.parse(await rbd(this.ceph, 'snap', 'ls', '--format', 'json', this.spec)) as { id: number; name: string; protected: string }[];
  }

  async vprotectSnapshots(): Promise<string[]> {
    return (await this.snapshots()).map((s) => s.name).filter((n) => /^vprotect-\d{8}T\d{6}Z-[0-9a-f]{4}$/.test(n));
  }

  /** sha256 of `rbd export` of a snapshot (the reference a restore must match). */
  async exportSha(snap?: string): Promise<string> {
    return exportSha(this.ceph, `${this.spec}${snap ? `@${snap}` : ''}`);
  }

  async remove(): Promise<void> {
    await removeImage(this.ceph, this.pool, this.name);
  }
}

export async function exportSha(ceph: CephLab, spec: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vpt-export-'));
  try {
    const file = join(dir, 'export.raw');
    await runCommand(['rbd', ...rbdArgs(ceph), 'export', '--no-progress', spec, file], { timeoutMs: 300_000 });
    return await fileSha(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function removeImage(ceph: CephLab, pool: string, image: string): Promise<void> {
  const spec = `${pool}/${image}`;
  try {
    const snaps = JSON.parse(await rbd(ceph, 'snap', 'ls', '--format', 'json', spec)) as { name: string; protected: string }[];
    for (const s of snaps) if (s.protected === 'true') await rbd(ceph, 'snap', 'unprotect', `${spec}@${s.name}`).catch(() => {});
    if (snaps.length) await rbd(ceph, 'snap', 'purge', '--no-progress', spec);
    await rbd(ceph, 'rm', '--no-progress', spec);
  } catch {
    // Already gone (or never made): nothing to clean.
  }
}

export async function fileSha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Restores disk `key` of a point to a raw file and returns its sha256. */
export async function restoredSha(repo: Repository, pointId: string, key: string, dir: string): Promise<string> {
  const point = await repo.findPoint(pointId);
  const reader = await openDiskReader(repo, point, key);
  try {
    const out = join(dir, `restore-${pointId}-${key}.raw`);
    await restoreToRawFile(reader, out, {});
    const sha = await fileSha(out);
    await rm(out, { force: true });
    return sha;
  } finally {
    await reader.close();
  }
}

export async function tempDir(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), 'vpt-ceph-rbd-'));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}
