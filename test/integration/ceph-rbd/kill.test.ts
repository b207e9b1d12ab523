/**
 * Killed at each step: whatever step a run dies at (a fault that also makes the session behave
 * like a killed process: its abort/close touch nothing), the snapshot the next incremental needs
 * is still there, at most one stale snapshot exists, and the next run succeeds — incrementally —
 * leaving exactly one vprotect snapshot, the anchor of its point, which restores bit-identical.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupVm } from '../../../src/engine/backup-vm.js';
import { knownAnchors } from '../../../src/engine/known-anchors.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { Strategy } from '../../../src/strategy/contract.js';
import { createCephRbdStrategy, localExec, type CommandExec } from '../../../strategies/ceph-rbd/index.js';
import { parseAnchor } from '../../../strategies/ceph-rbd/snapshots.js';
import { contextFor, recordingLogger, requireCeph, restoredSha, ScratchImage, tempDir, type CephLab } from './fixture.js';

const MiB = 1 << 20;
const VM = 'vm-kill';

class SimulatedKill extends Error {}

/** Session steps (FaultHooks) and point-writer steps (onStep), in the order a run passes them. */
const STEPS = [
  'plan',
  'snapshot:before',
  'snapshot:created:vda',
  'snapshot:after',
  'metadata:ceph-rbd.json',
  'read:vda',
  'data:vda',
  'index:vda',
  'sums',
  'manifest',
  'commit:before',
  'commit:removed:vda:',
];

describe('ceph-rbd: killed at each step, the next run succeeds', () => {
  let ceph: CephLab;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let repo: Repository;
  let img: ScratchImage;
  let killAt: string | undefined;
  let crashed = false;
  const hit = (step: string) => {
    if (killAt !== undefined && step.startsWith(killAt)) {
      crashed = true;
      killAt = undefined;
      throw new SimulatedKill(`killed at ${step}`);
    }
  };
  const strategy: Strategy = createCephRbdStrategy({ faults: { step: hit, crashed: () => crashed } });
  let pattern = 0x20;

  beforeAll(async () => {
    ceph = requireCeph();
    dir = await tempDir();
    repo = await openRepository(join(dir.path, 'repo'), { create: true });
    img = new ScratchImage(ceph);
    await img.create(24 * MiB);
    await img.io('write -P 0x11 0 2M', 'write -P 0x12 12M 1M');
    const first = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' });
    expect(first.level).toBe('full');
  });

  afterAll(async () => {
    await img?.remove();
    await dir?.cleanup();
  });

  /** The anchor of the newest complete point: it must be on the image, with its id. */
  async function expectAnchorPresent(): Promise<string> {
    const last = await repo.lastCompletePoint(VM);
    const anchor = parseAnchor(last!.manifest.disks[0]!.sourceAnchor)!;
    const snap = (await img.snapshots()).find((s) => s.name === anchor.snapName);
    expect(snap, `anchor ${anchor.snapName} of ${last!.pointId}`).toBeDefined();
    expect(snap!.id).toBe(anchor.snapId);
    return anchor.snapName;
  }

  it.each(STEPS)('killed at %s', async (step) => {
    await img.io(`write -P 0x${(pattern++).toString(16)} ${(pattern % 20) * MiB} 64k`, `discard ${((pattern + 7) % 20) * MiB} 64k`);
    killAt = step;
    crashed = false;
    const before = await repo.lastCompletePoint(VM);
    const outcome = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test', onStep: hit }).then(
      (r) => ({ ok: true as const, r }),
      (e: unknown) => ({ ok: false as const, e }),
    );
    expect(killAt, `step ${step} was reached`).toBeUndefined();
    if (step.startsWith('commit:')) {
      // The point was durable before the kill: the run reports success with a warning.
      expect(outcome.ok).toBe(true);
    } else {
      expect(outcome.ok).toBe(false);
      if (!outcome.ok) expect(outcome.e).toBeInstanceOf(SimulatedKill);
    }
    const after = await repo.lastCompletePoint(VM);
    const durable = step === 'manifest' || step.startsWith('commit:');
    expect(after!.pointId === before!.pointId).toBe(!durable);

    // Nothing the next incremental needs is lost; at most one stale snapshot is left.
    await expectAnchorPresent();
    expect((await img.vprotectSnapshots()).length).toBeLessThanOrEqual(2);

    // The next run: an incremental from the anchor, and afterwards exactly one vprotect snapshot.
    crashed = false;
    const log = recordingLogger();
    const next = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph, { log }), command: 'test' });
    expect(next.level, next.disks[0]!.reason).toBe('incremental');
    expect(next.warnings).toEqual([]);
    expect(await img.vprotectSnapshots()).toEqual([`vprotect-${next.pointId}`]);
    expect(await expectAnchorPresent()).toBe(`vprotect-${next.pointId}`);
    expect(await restoredSha(repo, next.pointId, 'vda', dir.path)).toBe(await img.exportSha(`vprotect-${next.pointId}`));
  });

  it('a killed run\'s snapshot is listed by cleanup (never the anchor), and removed', async () => {
    await img.io('write -P 0x7a 3M 64k');
    killAt = 'data:vda';
    crashed = false;
    await expect(backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test', onStep: hit })).rejects.toThrow(SimulatedKill);
    crashed = false;
    const anchor = await expectAnchorPresent();
    const stale = (await img.vprotectSnapshots()).filter((s) => s !== anchor);
    expect(stale).toHaveLength(1);

    const known = await knownAnchors([{ name: 'repo', open: async () => repo }]);
    const leftovers = (await strategy.leftovers!(contextFor(ceph), known)).filter((l) => l.where.includes(img.name));
    expect(leftovers.map((l) => l.what.split(':')[0])).toEqual([`snapshot ${stale[0]}`]);
    expect(leftovers[0]!.removeWith).toContain(`snap rm volumes/${img.name}@${stale[0]}`);
    await leftovers[0]!.remove();
    expect(await img.vprotectSnapshots()).toEqual([anchor]);

    // Without knowing the repositories, cleanup keeps the newest snapshot rather than guess.
    expect((await strategy.leftovers!(contextFor(ceph))).filter((l) => l.where.includes(img.name))).toEqual([]);
    const next = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' });
    expect(next.level).toBe('incremental');
  });

  it('rbd export-diff cut mid-stream: a clear error, no point, and the next run is exact', async () => {
    await img.io('write -P 0x7b 0 8M');
    const real = localExec();
    // An exec whose export-diff stdout stops after 1 MiB (rbd killed under us).
    const cutting: CommandExec = {
      where: real.where,
      run: (argv, o) => real.run(argv, o),
      async stream(argv, o) {
        const s = await real.stream(argv, o);
        return {
          ...s,
          stdout: (async function* () {
            let n = 0;
            for await (const chunk of s.stdout) {
              if (n + chunk.length > MiB) {
                s.kill();
                return;
              }
              n += chunk.length;
              yield chunk;
            }
          })(),
        };
      },
    };
    const before = await repo.lastCompletePoint(VM);
    await expect(backupVm({ repo, strategy: createCephRbdStrategy({ exec: cutting }), target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' })).rejects.toThrow(
      /export-diff .* (was killed|truncated)/,
    );
    expect((await repo.lastCompletePoint(VM))!.pointId).toBe(before!.pointId);
    // The failed run removed its own snapshot (abort), so only the anchor is there.
    expect(await img.vprotectSnapshots()).toEqual([await expectAnchorPresent()]);
    const next = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' });
    expect(next.level).toBe('incremental');
    expect(await restoredSha(repo, next.pointId, 'vda', dir.path)).toBe(await img.exportSha(`vprotect-${next.pointId}`));
  });

  it('rbd killed while it writes the incremental into the point: its error, no point, nothing left, and the next run is exact', async () => {
    await img.io('write -P 0x7c 0 8M');
    const real = localExec();
    // rbd runs here, so it writes the diff into the point itself (tool-diff.ts). Killed after
    // 1 MiB, as by the OOM killer: the real rbd writes beside the file, then a shell puts the
    // first MiB of it in place and dies by SIGKILL (racing a kill against rbd is not
    // deterministic: it writes 8 MiB in a few ms).
    let cut = false;
    const killing: CommandExec = {
      where: real.where,
      local: true,
      stream: (argv, o) => real.stream(argv, o),
      async run(argv, o) {
        if (!argv.includes('export-diff')) return real.run(argv, o);
        const file = argv.at(-1)!;
        await real.run([...argv.slice(0, -1), `${file}.whole`], o);
        cut = true;
        return real.run(['sh', '-c', 'head -c 1048576 "$1" > "$2"; kill -KILL $$', 'sh', `${file}.whole`, file], o);
      },
    };
    const before = await repo.lastCompletePoint(VM);
    await expect(backupVm({ repo, strategy: createCephRbdStrategy({ exec: killing }), target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' })).rejects.toThrow(
      /was killed by SIGKILL/,
    );
    expect(cut).toBe(true);
    expect((await repo.lastCompletePoint(VM))!.pointId).toBe(before!.pointId);
    expect(await img.vprotectSnapshots()).toEqual([await expectAnchorPresent()]);
    // No point directory of the failed run, no partial file anywhere.
    const partials = spawnSync('find', [repo.root, '-name', '*.partial'], { encoding: 'utf8' }).stdout.trim();
    expect(partials).toBe('');
    const next = await backupVm({ repo, strategy, target: img.target(VM), level: 'auto', ctx: contextFor(ceph), command: 'test' });
    expect(next.level).toBe('incremental');
    expect(await restoredSha(repo, next.pointId, 'vda', dir.path)).toBe(await img.exportSha(`vprotect-${next.pointId}`));
  });
});
