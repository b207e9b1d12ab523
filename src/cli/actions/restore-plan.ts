/**
 * `vprotect restore --point ID --plan`: what restoring the point's instance into OpenStack would
 * create (volumes, image, keypair, server) and where, checked against the target cloud, without
 * creating anything. Exit 0 when the plan is feasible, 64 when a mapping is impossible.
 */
import { join } from 'node:path';
import { UsageError } from '../../errors.js';
import type { Inventory } from '../../inventory/types.js';
import { Cloud } from '../../openstack/cloud.js';
import { planRestore, readMetadata, type RestoreMapping, type RestorePlan, type RestoreStep } from '../../openstack/plan.js';
import { settingsFromInventory } from '../../openstack/settings.js';
import type { PointInfo } from '../../repository/repository.js';
import type { Action } from '../main.js';
import { openRepo } from './repository-common.js';

export const restorePlan: Action = async (ctx, _args, opts) => {
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(opts['point']));
  const inv = await ctx.loadInventory();
  const cloudName = restoreCloudName(inv, point, opts['cloud'] as string | undefined, '--cloud');

  const meta = await readMetadata(join(point.dir, 'metadata'));
  const cloud = await Cloud.connect(settingsFromInventory(cloudName, inv.clouds[cloudName]!, { env: ctx.env, cwd: process.cwd() }), { log: ctx.log, signal: ctx.signal });
  let plan: RestorePlan;
  try {
    plan = await planRestore(meta, cloud, restoreMapping(opts));
  } finally {
    cloud.close();
  }
  ctx.out.result({ point: point.pointId, ...plan }, (p, c) =>
    [
      `restore of ${p.source.name} (${p.source.serverId}) from point ${p.point} into cloud ${p.target.cloud}, project ${p.target.project.name ?? p.target.project.id}:`,
      ...p.steps.map((step, i) => `  ${i + 1}. ${describeStep(step)}`),
      ...p.notes.map((n) => `  ${c.yellow('note:')} ${n}`),
      ...p.problems.map((n) => `  ${c.red('problem:')} ${n}`),
      p.problems.length ? c.red('the restore cannot be done as asked') : c.green('nothing was created (plan only)'),
    ].join('\n'),
  );
  if (plan.problems.length) throw new UsageError(`the restore plan has ${plan.problems.length} problem(s): ${plan.problems.join('; ')}`);
};

function describeStep(s: RestoreStep): string {
  switch (s.action) {
    case 'create-volume':
      return `create volume ${s.name} for disk ${s.disk}: ${s.sizeGb} GiB${s.volumeType ? `, type ${s.volumeType}` : ''}${s.availabilityZone ? `, zone ${s.availabilityZone}` : ''}${s.bootIndex === 0 ? ' (boot)' : ''}, then write the disk into it`;
    case 'upload-image':
      return `upload disk ${s.disk} to Glance as image ${s.name} (${s.diskFormat})`;
    case 'create-keypair':
      return `create keypair ${s.name} for user ${s.userId}`;
    case 'create-server': {
      const nets = s.networks === 'none' ? 'no network' : s.networks.map((n) => `${n.networkName}${n.fixedIp ? ` ${n.fixedIp}` : ''}`).join(', ');
      return `create server ${s.name} in project ${s.project.name ?? s.project.id}: flavor ${s.flavor.name}, boot from ${s.boot}${s.imageId ? ` ${s.imageId}` : ''}, ${nets}${s.availabilityZone ? `, zone ${s.availabilityZone}` : ''}${s.keyName ? `, keypair ${s.keyName}` : ''}${s.securityGroups.length ? `, security groups ${s.securityGroups.join(', ')}` : ''}`;
    }
  }
}

/** The mapping flags of `restore --plan` and `restore --to-cloud` (--name, --project, ...). */
export function restoreMapping(opts: Record<string, unknown>): RestoreMapping {
  return {
    name: opts['name'] as string | undefined,
    project: opts['project'] as string | undefined,
    flavor: opts['flavor'] as string | undefined,
    network: opts['network'] as string | undefined,
    availabilityZone: opts['availabilityZone'] as string | undefined,
    volumeType: opts['volumeType'] as string | undefined,
  };
}

/**
 * The cloud of `restore --plan` and `restore --to-cloud`: the one asked for, else the point's own
 * when the inventory has it, else the inventory's only cloud.
 */
export function restoreCloudName(inv: Pick<Inventory, 'clouds'>, point: PointInfo, asked: string | undefined, flag: string): string {
  const clouds = Object.keys(inv.clouds);
  const source = point.manifest.source as { cloud?: unknown } | undefined;
  const name = asked ?? (typeof source?.cloud === 'string' && clouds.includes(source.cloud) ? source.cloud : clouds.length === 1 ? clouds[0] : undefined);
  if (!name || !inv.clouds[name]) throw new UsageError(`say which cloud to restore into with ${flag} (the inventory has: ${clouds.join(', ') || 'none'})`);
  return name;
}
