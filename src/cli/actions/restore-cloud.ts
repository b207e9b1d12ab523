/**
 * `vprotect restore --point ID --to-cloud [CLOUD]`: the point's instance recreated in OpenStack
 * (src/restore-cloud/run.ts), with the mapping options of `restore --plan`. Prints the new
 * server, volume and image ids; on failure everything the run made is removed again, or the
 * error names what is left and the commands that remove it.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../../errors.js';
import { Cloud } from '../../openstack/cloud.js';
import { readMetadata } from '../../openstack/plan.js';
import { settingsFromInventory } from '../../openstack/settings.js';
import { restoreToCloud, type RestoreCloudResult } from '../../restore-cloud/run.js';
import type { Action } from '../main.js';
import { bytes } from '../format.js';
import { openRepo } from './repository-common.js';
import { restoreCloudName, restoreMapping } from './restore-plan.js';

export const restoreCloud: Action = async (ctx, _args, opts) => {
  for (const [option, flag] of [['disk', '--disk'], ['overwrite', '--overwrite'], ['ceph', '--ceph']] as const) {
    if (opts[option] !== undefined && opts[option] !== false) throw new UsageError(`${flag} does not apply to --to-cloud, which restores every disk of the instance`);
  }
  if (opts['format'] !== undefined && opts['format'] !== 'raw') throw new UsageError('--format applies to --to-file');
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(opts['point']));
  const inv = await ctx.loadInventory();
  const asked = typeof opts['toCloud'] === 'string' ? opts['toCloud'] : undefined;
  if (asked && typeof opts['cloud'] === 'string' && opts['cloud'] !== asked) throw new UsageError(`--to-cloud ${asked} and --cloud ${String(opts['cloud'])} name different clouds`);
  const cloudName = restoreCloudName(inv, point, asked ?? (opts['cloud'] as string | undefined), '--to-cloud CLOUD');

  const metaDir = join(point.dir, 'metadata');
  if (!(await stat(join(metaDir, 'server.json')).catch(() => undefined))) {
    throw new UsageError(`point ${point.pointId} holds no cloud description of an instance (it was backed up as a libvirt domain or an RBD image, not from a cloud policy), so there is nothing to recreate in OpenStack`, {
      hint: 'restore its disks with --to-file or --to-rbd, or the domain with restore-vm',
    });
  }
  const meta = await readMetadata(metaDir);
  const domainXml = await readFile(join(metaDir, 'domain.xml'), 'utf8').catch(() => undefined);
  const settings = settingsFromInventory(cloudName, inv.clouds[cloudName]!, { env: ctx.env, cwd: process.cwd() });
  const cloud = await Cloud.connect(settings, { log: ctx.log, signal: ctx.signal });
  let result: RestoreCloudResult;
  try {
    result = await restoreToCloud({
      repo,
      point,
      meta,
      domainXml,
      cloud,
      // Not bound to the run's signal: after Ctrl-C this session removes what the run made.
      reconnect: () => Cloud.connect(settings, { log: ctx.log }),
      inventory: inv,
      mapping: restoreMapping(opts),
      deleteImage: opts['deleteImage'] === true,
      log: ctx.log,
      // With --json stdout carries the one result document, not progress lines.
      events: ctx.out.json ? undefined : ctx.events,
      signal: ctx.signal,
    });
  } finally {
    cloud.close();
  }
  ctx.out.result(result, (r, c) =>
    [
      `${c.green('restored')} point ${r.point} into cloud ${r.cloud}, project ${r.project.name ?? r.project.id}, in ${r.seconds.toFixed(1)} s:`,
      `  server ${r.server.name} ${r.server.id}: ${r.server.status}${r.server.host ? ` on ${r.server.host}` : ''}${r.server.availabilityZone ? `, zone ${r.server.availabilityZone}` : ''}`,
      ...r.volumes.map((v) => `  volume ${v.name} ${v.id}: ${v.sizeGb} GiB${v.boot ? ' (boot)' : ''} from disk ${v.sourceDisk}, ${bytes(v.dataBytes)} data written to rbd ${v.rbd}`),
      ...(r.image ? [`  image ${r.image.name} ${r.image.id}: disk ${r.image.sourceDisk} (${bytes(r.image.dataBytes)} data), sha256 ${r.image.sha256}${r.image.kept ? '' : ', deleted after the boot'}`] : []),
      ...r.keypairs.map((k) => `  keypair ${k.name} created for user ${k.userId}`),
      ...r.notRestored.map((d) => `  ${c.yellow('not restored:')} disk ${d.key}: ${d.why}`),
      ...r.notes.map((n) => `  ${c.yellow('note:')} ${n}`),
    ].join('\n'),
  );
};
