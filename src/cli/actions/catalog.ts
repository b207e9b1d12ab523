/** `vprotect list` and `vprotect show`: what the repository holds. */
import type { ChainInfo, PointInfo, Repository } from '../../repository/repository.js';
import type { Action } from '../main.js';
import { age, bytes } from '../format.js';
import { openRepo, selectVms } from './repository-common.js';

export interface PointSummary {
  pointId: string;
  chainId: string;
  parentId: string | null;
  level: string;
  status: 'complete' | 'incomplete' | 'orphan' | 'merging' | 'damaged';
  finishedAt?: string;
  disks: number;
  logicalBytes: number;
  storedBytes: number;
  changedBytes: number;
}

function summarize(p: PointInfo, status: PointSummary['status']): PointSummary {
  const sum = (f: (d: PointInfo['manifest']['disks'][number]) => number) => p.manifest.disks.reduce((a, d) => a + f(d), 0);
  return {
    pointId: p.pointId,
    chainId: p.chainId,
    parentId: p.manifest.parentId,
    level: p.manifest.level,
    status,
    finishedAt: p.manifest.finishedAt,
    disks: p.manifest.disks.length,
    logicalBytes: sum((d) => d.size),
    storedBytes: sum((d) => d.storedBytes),
    changedBytes: sum((d) => d.changedBytes),
  };
}

export function chainSummary(c: ChainInfo) {
  const merging = new Set(c.merge ? [c.merge.base, ...c.merge.diffs] : []);
  return {
    chainId: c.chainId,
    ...(c.merge ? { merge: { target: c.merge.target, phase: c.merge.phase, startedAt: c.merge.startedAt } } : {}),
    points: [
      ...c.points.map((p) => summarize(p, merging.has(p.pointId) ? 'merging' : 'complete')),
      ...c.orphans.map((p) => summarize(p, 'orphan')),
      ...c.damaged.map((d): PointSummary => ({ pointId: d.pointId, chainId: c.chainId, parentId: null, level: '?', status: 'damaged', disks: 0, logicalBytes: 0, storedBytes: 0, changedBytes: 0 })),
      ...c.incomplete.map((id): PointSummary => ({ pointId: id, chainId: c.chainId, parentId: null, level: '?', status: 'incomplete', disks: 0, logicalBytes: 0, storedBytes: 0, changedBytes: 0 })),
    ],
  };
}

async function listing(repo: Repository, vmIds: string[]) {
  const vms = [];
  for (const vmId of vmIds) {
    const vm = await repo.readVm(vmId);
    const chains = (await repo.listChains(vmId)).map(chainSummary);
    vms.push({ vmId, vmName: vm.vmName, project: vm.project, cloud: vm.cloud, chains });
  }
  return { repository: repo.root, blockSize: repo.blockSize, vms };
}

export const list: Action = async (ctx, _args, opts) => {
  const repo = await openRepo(ctx, opts);
  const data = await listing(repo, await selectVms(repo, opts['vm']));
  ctx.out.result(data, (d, c) => {
    if (d.vms.length === 0) return `no backups in ${d.repository}`;
    const lines: string[] = [];
    for (const vm of d.vms) {
      lines.push(c.bold(`${vm.vmName ?? '(unnamed)'} ${c.dim(vm.vmId)}`));
      for (const chain of vm.chains) {
        lines.push(`  chain ${chain.chainId}${chain.merge ? c.yellow(` (merge into ${chain.merge.target} unfinished)`) : ''}`);
        for (const p of chain.points) {
          const status = p.status === 'complete' ? c.green(p.status) : c.yellow(p.status);
          lines.push(
            `    ${p.pointId}  ${p.level.padEnd(11)} ${status.padEnd(8)}  logical ${bytes(p.logicalBytes).padStart(9)}  stored ${bytes(p.storedBytes).padStart(9)}  changed ${bytes(p.changedBytes).padStart(9)}  ${p.finishedAt ? age(p.finishedAt) + ' ago' : ''}`,
          );
        }
      }
    }
    return lines.join('\n');
  });
};

export const show: Action = async (ctx, args, opts) => {
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(args[0]));
  const chains = await repo.listChains(point.vmId);
  const chain = chains.find((c) => c.chainId === point.chainId)!;
  const idx = chain.points.findIndex((p) => p.pointId === point.pointId);
  const data = {
    ...point.manifest,
    directory: point.dir,
    dependsOn: idx > 0 ? chain.points.slice(0, idx).map((p) => p.pointId) : [],
    dependents: idx >= 0 ? chain.points.slice(idx + 1).map((p) => p.pointId) : [],
  };
  ctx.out.result(data, (d, c) =>
    [
      `${c.bold(d.pointId)}  ${d.level}  VM ${d.vmName ?? ''} ${c.dim(d.vmId)}`,
      `  chain ${d.chainId}${d.parentId ? `, parent ${d.parentId}` : ''}`,
      `  finished ${d.finishedAt} (${age(d.finishedAt)} ago), vprotect ${d.tool.version}${d.strategy ? `, strategy ${d.strategy.name}` : ''}${d.consistency ? `, ${d.consistency.level}-consistent` : ''}`,
      `  depends on: ${d.dependsOn.join(', ') || 'nothing (full point)'}`,
      `  needed by: ${d.dependents.join(', ') || 'no other point'}`,
      `  metadata: ${d.metadata.join(', ') || 'none'}`,
      ...d.disks.map(
        (k) => `  disk ${k.key}: ${bytes(k.size)} logical, ${bytes(k.changedBytes)} changed, ${bytes(k.storedBytes)} stored as ${k.encoding}${k.records ? ` (${k.records} records)` : ''} in ${k.file}`,
      ),
      `  ${d.directory}`,
    ].join('\n'),
  );
};
