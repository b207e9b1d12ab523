/** `vprotect verify`: check points; exit 65 naming damaged files and every point that depends on them. */
import { DataCorruptError, UsageError } from '../../errors.js';
import { verifyRepository, type VerifyReport } from '../../repository/verify.js';
import type { Action } from '../main.js';
import { openRepo, selectVms } from './repository-common.js';

function percent(v: unknown): number | undefined {
  if (v === undefined || v === false) return undefined;
  if (v === true) return 100;
  const n = Number(String(v).replace(/%$/, ''));
  if (!(n > 0 && n <= 100)) throw new UsageError(`--read-data takes a percentage in (0, 100], not "${String(v)}"`);
  return n;
}

export function renderReport(r: VerifyReport): string {
  const lines = r.notes.map((n) => `note: ${n}`);
  if (r.damage.length === 0) {
    lines.push(`ok: ${r.checkedPoints.length} point(s) checked, no damage`);
    return lines.join('\n');
  }
  for (const d of r.damage) lines.push(`DAMAGED ${d.file}: ${d.problem}\n  points that cannot be restored: ${d.affectedPoints.join(', ')}`);
  return lines.join('\n');
}

export const verify: Action = async (ctx, args, opts) => {
  const point = args[0] as string | undefined;
  const selections = [point !== undefined, opts['all'] === true, opts['vm'] !== undefined].filter(Boolean).length;
  if (selections !== 1) throw new UsageError('say what to verify: a point id, --vm <id|name> or --all');
  const repo = await openRepo(ctx, opts);
  let vmIds: string[];
  let only: Set<string> | undefined;
  if (point !== undefined) {
    const p = await repo.findPoint(point);
    vmIds = [p.vmId];
    only = new Set([p.pointId]);
  } else {
    vmIds = await selectVms(repo, opts['vm']);
  }
  const report = await verifyRepository(repo, vmIds, only, {
    readData: percent(opts['readData']),
    rebuildMaps: opts['rebuildMaps'] === true,
    signal: ctx.signal,
    events: ctx.events,
  });
  const damagedFiles = [...new Set(report.damage.map((d) => d.file))];
  const affected = [...new Set(report.damage.flatMap((d) => d.affectedPoints))];
  if (report.damage.length && ctx.out.json) {
    throw new DataCorruptError(`${damagedFiles.length} damaged file(s); points that cannot be restored: ${affected.join(', ')}`, { data: { ...report } });
  }
  ctx.out.result(report, (r) => renderReport(r));
  if (report.damage.length) {
    throw new DataCorruptError(`${damagedFiles.length} damaged file(s); points that cannot be restored: ${affected.join(', ')}`, {
      hint: 'restore from another chain, or start a new chain with a full backup',
      data: { damagedFiles, affectedPoints: affected },
    });
  }
};
