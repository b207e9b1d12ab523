import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backupVm, unifyLevels } from '../../../src/engine/backup-vm.js';
import { runBackups } from '../../../src/engine/run.js';
import { PartialFailureError, UnavailableError } from '../../../src/errors.js';
import type { Inventory, PolicyConfig } from '../../../src/inventory/types.js';
import { silentLogger, type ProgressEvent } from '../../../src/log.js';
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import type { Extent } from '../../../src/repository/extents.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { BackupSession, DiskPlan, PreviousPoint, Strategy, StrategyContext } from '../../../src/strategy/contract.js';

/**
 * A strategy over an in-memory disk: the engine's own logic (ordering, abort, levels) is what is
 * under test here; the real strategies run the same engine against the lab in their own tests.
 */
class MemoryDiskStrategy implements Strategy {
  readonly name = 'libvirt-ssh' as const;
  calls: string[] = [];
  disk = Buffer.alloc(1 << 20);
  /** Ranges written since the last committed backup. */
  dirty: [number, number][] = [];
  failRead = false;
  failCommit = false;

  write(offset: number, data: Buffer): void {
    data.copy(this.disk, offset);
    this.dirty.push([offset, data.length]);
  }

  async open(): Promise<BackupSession> {
    const s = this;
    let previous: PreviousPoint | undefined;
    let frozen: Buffer | undefined;
    let frozenDirty: [number, number][] = [];
    return {
      async plan({ level, previous: prev }): Promise<DiskPlan[]> {
        s.calls.push(`plan:${level}`);
        previous = prev;
        const incremental = level !== 'full' && prev !== undefined;
        return [{ key: 'vda', size: s.disk.length, sourceFormat: 'raw', level: incremental ? 'incremental' : 'full', reason: incremental ? 'anchor matches' : 'no previous point' }];
      },
      async snapshot() {
        s.calls.push('snapshot');
        frozen = Buffer.from(s.disk);
        frozenDirty = s.dirty.splice(0);
        return { level: 'crash' as const };
      },
      read(plan: DiskPlan): AsyncIterable<Extent> {
        s.calls.push(`read:${plan.level}`);
        const disk = frozen!;
        const ranges = plan.level === 'full' || !previous ? [[0, disk.length] as [number, number]] : frozenDirty;
        return (async function* () {
          for (const [offset, length] of ranges) {
            if (s.failRead) throw new UnavailableError('link lost while reading');
            yield { offset, length, data: Buffer.from(disk.subarray(offset, offset + length)) };
          }
        })();
      },
      sourceAnchor: () => ({ generation: s.calls.length }),
      async metadata() {
        return [{ name: 'domain.xml', content: '<domain/>' }];
      },
      async commit() {
        s.calls.push('commit');
        if (s.failCommit) throw new UnavailableError('could not remove the old snapshot');
      },
      async abort() {
        s.calls.push('abort');
      },
      async close() {
        s.calls.push('close');
      },
    };
  }
}

function context(policy?: PolicyConfig, events: ProgressEvent[] = []): StrategyContext {
  return {
    log: silentLogger,
    events: (e) => events.push(e),
    signal: new AbortController().signal,
    dryRun: false,
    inventory: {} as Inventory,
    policy,
    options: {},
    env: {},
  };
}

async function restoreBytes(repo: Repository, pointId: string): Promise<Buffer> {
  const point = await repo.findPoint(pointId);
  const reader = await openDiskReader(repo, point, 'vda');
  const out = Buffer.alloc(reader.size);
  for await (const e of reader.extents()) if (e.data) e.data.copy(out, e.offset);
  await reader.close();
  return out;
}

const target = { vmId: 'vm-1', vmName: 'web-1' };

describe('backupVm', () => {
  it('writes a full then an incremental that restore to the disk at each snapshot, and commits the source last', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const strategy = new MemoryDiskStrategy();
    strategy.write(4096, Buffer.alloc(8192, 0x41));
    const full = await backupVm({ repo, strategy, target, level: 'auto', ctx: context(), command: 'test' });
    expect(full.level).toBe('full');
    const atFull = Buffer.from(strategy.disk);
    strategy.write(65536, Buffer.alloc(4096, 0x42));
    const inc = await backupVm({ repo, strategy, target, level: 'auto', ctx: context(), command: 'test' });
    expect(inc.level).toBe('incremental');
    expect(inc.disks[0]!.dataBytes).toBe(4096);
    expect(strategy.calls).toEqual(['plan:auto', 'snapshot', 'read:full', 'commit', 'close', 'plan:auto', 'snapshot', 'read:incremental', 'commit', 'close']);
    // Buffer.equals, not toEqual: vitest's deep equality walks a MiB byte by byte for seconds.
    expect((await restoreBytes(repo, full.pointId)).equals(atFull)).toBe(true);
    expect((await restoreBytes(repo, inc.pointId)).equals(strategy.disk)).toBe(true);
    expect(atFull.equals(strategy.disk)).toBe(false);
  });

  it('aborts both sides when reading fails: no point appears, the source is cleaned, the lock is free', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const strategy = new MemoryDiskStrategy();
    strategy.failRead = true;
    await expect(backupVm({ repo, strategy, target, level: 'full', ctx: context(), command: 'test' })).rejects.toThrow('link lost');
    expect(strategy.calls).toEqual(['plan:full', 'snapshot', 'read:full', 'abort', 'close']);
    expect(await repo.lastCompletePoint('vm-1')).toBeUndefined();
    strategy.failRead = false;
    const again = await backupVm({ repo, strategy, target, level: 'full', ctx: context(), command: 'test' });
    expect(again.level).toBe('full');
  });

  it('keeps a durable point when only tidying the source fails, and says so', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const strategy = new MemoryDiskStrategy();
    strategy.failCommit = true;
    const r = await backupVm({ repo, strategy, target, level: 'full', ctx: context(), command: 'test' });
    expect(r.warnings).toEqual(['the backup is complete, but the source was not tidied: could not remove the old snapshot']);
    expect((await repo.lastCompletePoint('vm-1'))?.pointId).toBe(r.pointId);
  });

  it('starts a new chain when the policy says so', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const strategy = new MemoryDiskStrategy();
    const policy: PolicyConfig = { name: 'p', strategy: 'libvirt-ssh', destination: 'd', retention: { newChainAfter: { incrementals: 1 } } };
    const levels: string[] = [];
    for (let i = 0; i < 4; i++) {
      strategy.write(i * 4096, Buffer.alloc(4096, i + 1));
      levels.push((await backupVm({ repo, strategy, target, level: 'auto', ctx: context(policy), command: 'test' })).level);
    }
    expect(levels).toEqual(['full', 'incremental', 'full', 'incremental']);
  });

  it('reports progress events that end at the disk size', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const events: ProgressEvent[] = [];
    await backupVm({ repo, strategy: new MemoryDiskStrategy(), target, level: 'full', ctx: context(undefined, events), command: 'test' });
    const progress = events.filter((e) => e.type === 'progress');
    expect(progress.at(-1)).toMatchObject({ done: 1 << 20, total: 1 << 20 });
    expect(events.at(-1)).toEqual({ type: 'progress-end', id: 'vm-1/vda' });
  });
});

describe('unifyLevels', () => {
  const inc = (key: string): DiskPlan => ({ key, size: 1, sourceFormat: 'qcow2', level: 'incremental', reason: 'checkpoint ok' });
  it('makes every disk full when one needs a full', () => {
    const plans = unifyLevels([inc('vda'), { ...inc('vdb'), level: 'full', reason: 'disk was resized' }]);
    expect(plans.map((p) => [p.key, p.level])).toEqual([['vda', 'full'], ['vdb', 'full']]);
    expect(plans[0]!.reason).toBe('disk vdb needs a full (disk was resized), so the whole point is full');
  });
  it('leaves an all-incremental plan alone', () => {
    expect(unifyLevels([inc('vda'), inc('vdb')]).every((p) => p.level === 'incremental')).toBe(true);
  });
});

describe('runBackups', () => {
  it('exits partial (3) when some VMs fail, and with the real cause when all fail', async () => {
    const repo = await openRepository(mkdtempSync(join(tmpdir(), 'vprotect-engine-')), { create: true });
    const good = new MemoryDiskStrategy();
    const bad = new MemoryDiskStrategy();
    bad.failRead = true;
    const base = { log: silentLogger, events: () => {}, signal: new AbortController().signal, dryRun: false, inventory: {} as Inventory, env: {} };
    const item = (s: Strategy, id: string) => ({ target: { vmId: id, vmName: id }, strategy: s, repo, policy: undefined, options: {} });
    const partial = runBackups([item(good, 'a'), item(bad, 'b')], { level: 'full', command: 't', base });
    await expect(partial).rejects.toBeInstanceOf(PartialFailureError);
    await expect(partial).rejects.toMatchObject({ exitCode: 3 });
    await expect(runBackups([item(bad, 'c')], { level: 'full', command: 't', base })).rejects.toMatchObject({ exitCode: 69 });
  });
});
