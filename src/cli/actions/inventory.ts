import { stringify } from 'yaml';
import { redactInventory } from '../../inventory/redact.js';
import type { Action } from '../main.js';

export const validate: Action = async (ctx, _args, opts) => {
  const inv = await ctx.loadInventory({ offline: opts['offline'] === true });
  const summary = {
    file: inv.file,
    valid: true,
    offline: opts['offline'] === true,
    clouds: Object.keys(inv.clouds).length,
    hypervisors: inv.hypervisors.length,
    cephClusters: Object.keys(inv.cephClusters).length,
    destinations: Object.keys(inv.destinations).length,
    policies: inv.policies.length,
  };
  ctx.out.result(summary, (s, c) =>
    `${c.green('ok')} ${s.file}: ${s.clouds} cloud(s), ${s.hypervisors} hypervisor(s), ${s.cephClusters} Ceph cluster(s), ${s.destinations} destination(s), ${s.policies} polic${s.policies === 1 ? 'y' : 'ies'}`,
  );
};

export const show: Action = async (ctx) => {
  const inv = redactInventory(await ctx.loadInventory());
  ctx.out.result(inv, (data) => stringify(data));
};
