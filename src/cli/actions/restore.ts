/**
 * `vprotect restore`: one disk of one point to a target. Targets are a table: each entry knows
 * its option and builds a RestoreTarget; adding a target (hypervisor, RBD, Cinder) is one entry.
 */
import { UsageError } from '../../errors.js';
import { openDiskReader } from '../../repository/chain-reader.js';
import { FileTarget, StreamTarget, type RestoreTarget } from '../../repository/restore.js';
import type { CliContext } from '../context.js';
import { dataStdout } from '../data-stdout.js';
import type { Action } from '../main.js';
import { bytes } from '../format.js';
import { openRepo } from './repository-common.js';
import { rbdRestoreTarget } from './restore-rbd.js';

interface TargetEntry {
  option: string;
  flag: string;
  /** Whether the target uses stdout (then results go to stderr). */
  stdout?: boolean;
  make?(opts: Record<string, unknown>, ctx: CliContext): RestoreTarget;
  /** A target that restores the whole instance, not one disk, runs its own action. */
  run?: () => Promise<Action>;
}

const targets: TargetEntry[] = [
  { option: 'toFile', flag: '--to-file', make: (o) => new FileTarget(String(o['toFile']), o['format'] as 'raw' | 'qcow2') },
  { option: 'toStdout', flag: '--to-stdout', stdout: true, make: () => new StreamTarget(dataStdout(), 'stdout') },
  { option: 'toRbd', flag: '--to-rbd', make: (o, ctx) => rbdRestoreTarget(o, ctx) },
  { option: 'toCloud', flag: '--to-cloud', run: async () => (await import('./restore-cloud.js')).restoreCloud },
];

export const restore: Action = async (ctx, args, opts) => {
  // `--plan --to-cloud X` plans for cloud X.
  if (opts['plan'] && typeof opts['toCloud'] === 'string') opts = { ...opts, cloud: opts['cloud'] ?? opts['toCloud'] };
  if (opts['plan']) return (await import('./restore-plan.js')).restorePlan(ctx, args, opts);
  const chosen = targets.filter((t) => opts[t.option] !== undefined && opts[t.option] !== false);
  if (chosen.length !== 1) {
    throw new UsageError(chosen.length === 0 ? 'say where to restore to' : `choose one of ${chosen.map((t) => t.flag).join(', ')}`, { hint: `one of ${targets.map((t) => t.flag).join(', ')}` });
  }
  const entry = chosen[0]!;
  if (entry.run) return (await entry.run())(ctx, args, opts);
  if (entry.stdout && ctx.out.json) throw new UsageError('--to-stdout writes the disk to stdout; it cannot be combined with --json');
  if (opts['format'] !== 'raw' && entry.option !== 'toFile') throw new UsageError('--format applies to --to-file');
  if ((opts['overwrite'] === true || opts['ceph'] !== undefined) && entry.option !== 'toRbd') throw new UsageError('--overwrite and --ceph apply to --to-rbd');
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(opts['point']));
  let key = opts['disk'] as string | undefined;
  if (key === undefined) {
    const keys = point.manifest.disks.map((d) => d.key);
    if (keys.length !== 1) throw new UsageError(`point ${point.pointId} has ${keys.length} disks; choose one with --disk`, { hint: `disks: ${keys.join(', ')}` });
    key = keys[0]!;
  }
  const target = entry.make!(opts, ctx);
  const reader = await openDiskReader(repo, point, key);
  const started = Date.now();
  try {
    ctx.log.info(`restoring ${key} of point ${point.pointId} to ${target.describe()}`);
    const r = await target.restore(reader, { signal: ctx.signal, events: ctx.events });
    const result = { point: point.pointId, vm: point.vmId, disk: key, target: target.describe(), size: r.size, dataBytes: r.dataBytes, seconds: (Date.now() - started) / 1000 };
    if (entry.stdout) ctx.log.info(`restored ${bytes(r.size)} (${bytes(r.dataBytes)} data) in ${result.seconds.toFixed(1)} s`);
    else ctx.out.result(result, (d, c) => `${c.green('restored')} ${d.disk} of ${d.point} to ${d.target}: ${bytes(d.size)} (${bytes(d.dataBytes)} data) in ${d.seconds.toFixed(1)} s`);
  } finally {
    await reader.close();
  }
};
