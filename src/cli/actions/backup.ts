/**
 * `vprotect backup`: turns the command line into run items (target + strategy + repository),
 * runs them, prints one summary. Events stream as JSON lines with --json.
 */
import { UsageError } from '../../errors.js';
import type { BackupLevel, Inventory, PolicyConfig, StrategyName } from '../../inventory/types.js';
import { openRepository, type Repository } from '../../repository/repository.js';
import { layout } from '../../repository/layout.js';
import { access } from 'node:fs/promises';
import type { BackupTarget } from '../../strategy/contract.js';
import type { PolicyTargets } from '../../engine/cloud-targets.js';
import { runBackups, type RunItem, type RunReport } from '../../engine/run.js';
import { SshPool } from '../../transport/ssh.js';
import { loadStrategy } from '../../../strategies/index.js';
import type { CliContext } from '../context.js';
import type { Action } from '../main.js';
import { bytes } from '../format.js';
import { destinationRoot, processLockEnv } from './repository-common.js';

export const backup: Action = async (ctx, _args, opts) => {
  const inv = await ctx.loadInventory();
  const policy = findPolicy(inv, opts['policy'] as string | undefined);
  const level = opts['level'] as BackupLevel;
  const explicit = explicitTargets(inv, opts);
  if (explicit.length === 0 && !policy) {
    throw new UsageError('say what to back up', { hint: 'use --policy NAME [--vm ...] for cloud instances, or --domain NAME (libvirt-ssh) / --rbd POOL/IMAGE (ceph-rbd)' });
  }
  const destination = (opts['destination'] as string | undefined) ?? policy?.destination;
  // A dry run checks the destination but creates, mounts and locks nothing.
  const root = await destinationRoot(ctx, { destination }, { dryRun: ctx.dryRun });
  const repo: Repository | undefined = ctx.dryRun ? undefined : await openRepository(root, { create: true, log: ctx.log, lockEnv: processLockEnv() });

  const pool = new SshPool({ env: ctx.env, log: ctx.log, signal: ctx.signal, connectTimeoutMs: 15_000 });
  let cloudTargets: PolicyTargets | undefined;
  try {
    const planned: Omit<RunItem, 'repo'>[] = [];
    const optionsFor = (strategy: StrategyName) => (policy?.strategy === strategy ? (policy.strategyOptions ?? {}) : {});
    for (const { target, strategy } of explicit) {
      planned.push({ target, strategy: await loadStrategy(strategy), policy, options: optionsFor(strategy) });
    }
    if (policy && explicit.length === 0) {
      // The OpenStack client's modules load only for a policy's cloud instances: a backup of a
      // --domain or --rbd named directly never talks to a cloud.
      const [{ policyTargets }, { commandProbe }] = await Promise.all([import('../../engine/cloud-targets.js'), import('../../openstack/probe.js')]);
      const probe = commandProbe((hv, argv) => pool.withHost(hv, (c) => c.exec(argv, { timeoutMs: 30_000, signal: ctx.signal }), ctx.signal));
      const strategy = await loadStrategy(policy.strategy);
      cloudTargets = await policyTargets(inv, policy, { vms: opts['vm'] as string[] | undefined, env: ctx.env, cwd: process.cwd(), log: ctx.log, signal: ctx.signal, probe, discoversDisks: strategy.discoversDisks === true });
      for (const w of cloudTargets.warnings) ctx.log.warn(w);
      if (cloudTargets.targets.length === 0) ctx.log.warn(`policy ${policy.name} selects no instance (see \`vprotect sync\`)`);
      for (const t of cloudTargets.targets) {
        planned.push({ target: t.target, strategy, policy, options: optionsFor(policy.strategy), captureMetadata: t.captureMetadata, ...(t.refusal ? { refusal: t.refusal } : {}) });
      }
    }
    if (!repo) {
      const exists = await access(layout.repoFile(root)).then(() => true, () => false);
      ctx.out.result({ dryRun: true, destination: root, repositoryExists: exists, level, vms: planned.map((i) => ({ vmId: i.target.vmId, vmName: i.target.vmName, strategy: i.strategy.name, ...(i.refusal ? { refused: i.refusal.message } : {}) })) }, (d) =>
        [
          ...(d.repositoryExists ? [] : [`would create a repository in ${d.destination}`]),
          ...d.vms.map((v) => (v.refused ? `would skip ${v.vmName}: ${v.refused}` : `would back up ${v.vmName} (${v.strategy}, ${level}) to ${d.destination}`)),
        ].join('\n') || 'nothing to back up',
      );
      return;
    }
    const items: RunItem[] = planned.map((p) => ({ ...p, repo }));
    const report = await runBackups(items, { level, command: commandLine(opts), base: { log: ctx.log, events: ctx.events, signal: ctx.signal, dryRun: false, inventory: inv, env: ctx.env } });
    printSummary(ctx, report);
  } finally {
    cloudTargets?.close();
    await pool.close();
  }
};

function printSummary(ctx: CliContext, report: RunReport): void {
  if (ctx.out.json) {
    ctx.out.jsonLine({ type: 'summary', ok: report.ok, failed: report.failed });
    return;
  }
  ctx.out.result(report, (r, c) =>
    r.ok
      .map((v) => {
        const stored = v.disks.reduce((n, d) => n + d.storedBytes, 0);
        const disks = v.disks.map((d) => `${d.key} ${d.level} ${bytes(d.changedBytes)} changed, ${bytes(d.storedBytes)} stored`).join('; ');
        return `${c.green('ok')} ${v.vmName}: ${v.level} point ${v.pointId} (${v.consistency?.level ?? "crash"}-consistent) ${bytes(stored)} in ${v.seconds.toFixed(1)} s — ${disks}`;
      })
      .join('\n'),
  );
}

function findPolicy(inv: Inventory, name: string | undefined): PolicyConfig | undefined {
  if (name === undefined) return undefined;
  const p = inv.policies.find((x) => x.name === name);
  if (!p) throw new UsageError(`no policy "${name}" in ${inv.file}`, { hint: `policies: ${inv.policies.map((x) => x.name).join(', ') || 'none'}` });
  return p;
}

/** Targets named on the command line, outside any cloud. */
function explicitTargets(inv: Inventory, opts: Record<string, unknown>): { target: BackupTarget; strategy: StrategyName }[] {
  const out: { target: BackupTarget; strategy: StrategyName }[] = [];
  const domain = opts['domain'] as string | undefined;
  if (domain !== undefined) {
    const hvName = opts['hypervisor'] as string | undefined;
    const hv = hvName === undefined ? onlyOne(inv.hypervisors, 'hypervisor', '--hypervisor') : inv.hypervisors.find((h) => h.name === hvName);
    if (!hv) throw new UsageError(`no hypervisor "${hvName}" in ${inv.file}`, { hint: `hypervisors: ${inv.hypervisors.map((h) => h.name).join(', ') || 'none'}` });
    out.push({ target: { vmId: domain, vmName: domain, hypervisor: hv, domain }, strategy: 'libvirt-ssh' });
  }
  const rbd = opts['rbd'] as string | undefined;
  if (rbd !== undefined) {
    const m = /^([^/@]+)\/([^/@]+)$/.exec(rbd);
    if (!m) throw new UsageError(`--rbd ${rbd}: expected POOL/IMAGE`);
    const clusters = Object.keys(inv.cephClusters);
    const cluster = (opts['ceph'] as string | undefined) ?? onlyOne(clusters, 'Ceph cluster', '--ceph');
    if (!clusters.includes(cluster)) throw new UsageError(`no Ceph cluster "${cluster}" in ${inv.file}`, { hint: `cephClusters: ${clusters.join(', ') || 'none'}` });
    const [, pool, image] = m as unknown as [string, string, string];
    out.push({
      target: { vmId: `rbd.${pool}.${image}`, vmName: `${pool}/${image}`, disks: [{ key: image, kind: 'rbd', pool, image, cephCluster: cluster }] },
      strategy: 'ceph-rbd',
    });
  }
  return out;
}

function onlyOne<T>(items: T[], what: string, flag: string): T {
  if (items.length !== 1) throw new UsageError(`the inventory has ${items.length} ${what}s; choose one with ${flag}`);
  return items[0]!;
}

/** The command recorded in lock owner files (no secrets: only our own options). */
function commandLine(opts: Record<string, unknown>): string {
  const parts = ['vprotect backup'];
  for (const k of ['policy', 'vm', 'domain', 'rbd', 'level'] as const) if (opts[k] !== undefined) parts.push(`--${k} ${[opts[k]].flat().join(' ')}`);
  return parts.join(' ');
}
