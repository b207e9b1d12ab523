/**
 * `vprotect restore-vm`: a whole libvirt domain from a libvirt-ssh point — every disk written to
 * a hypervisor over SSH, the saved domain XML defined under a new name (new UUID, paths
 * rewritten), optionally started. The work is done by strategies/libvirt-ssh/restore.ts.
 */
import { UsageError } from '../../errors.js';
import type { Action } from '../main.js';
import { bytes } from '../format.js';
import { openRepo } from './repository-common.js';

export const restoreVm: Action = async (ctx, _args, opts) => {
  const inv = await ctx.loadInventory();
  const hvName = String(opts['toHypervisor']);
  const hypervisor = inv.hypervisors.find((h) => h.name === hvName);
  if (!hypervisor) throw new UsageError(`no hypervisor "${hvName}" in ${inv.file}`, { hint: `hypervisors: ${inv.hypervisors.map((h) => h.name).join(', ') || 'none'}` });
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(opts['point']));
  const name = String(opts['defineAs']);
  const dir = opts['dir'] !== undefined ? String(opts['dir']) : undefined;
  if (!dir) throw new UsageError('say where the disks go on the hypervisor with --dir');
  const { restoreDomain } = await import('../../../strategies/libvirt-ssh/restore.js');
  const started = Date.now();
  const r = await restoreDomain({
    repo,
    point,
    hypervisor,
    env: ctx.env,
    name,
    dir,
    format: opts['format'] as 'raw' | 'qcow2',
    start: opts['start'] === true,
    ...(opts['disk'] ? { disks: opts['disk'] as string[] } : {}),
    log: ctx.log,
    events: ctx.events,
    signal: ctx.signal,
  });
  const result = { point: point.pointId, ...r, seconds: (Date.now() - started) / 1000 };
  ctx.out.result(result, (d, c) =>
    [
      `${c.green('restored')} ${d.point} as domain ${d.domain} (${d.uuid}) on ${d.hypervisor}${d.started ? ', started' : ''} in ${d.seconds.toFixed(1)} s`,
      ...d.disks.map((x) => `  ${x.key}: ${x.path} (${bytes(x.size)}, ${bytes(x.dataBytes)} data)`),
    ].join('\n'),
  );
};
