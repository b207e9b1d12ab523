/**
 * The ceph-rbd strategy (DESIGN.md §5, strategies/ceph-rbd/README.md): VMs and volumes whose
 * disks are RBD images. The default export is what the strategy table (strategies/index.ts)
 * loads; createCephRbdStrategy() takes fault hooks for crash tests, openCephRbdSession() lets
 * libvirt-ssh hand its RBD disks over on its own SSH connection, restoreToRbd() and
 * cephRbdLeftovers() serve `vprotect restore --to-rbd` and `vprotect cleanup`.
 */
import { ConfigError, UsageError } from '../../src/errors.js';
import type { BackupSession, BackupTarget, KnownAnchors, Leftover, Strategy, StrategyContext } from '../../src/strategy/contract.js';
import { localExec, sshExec, type CommandExec } from './exec.js';
import { cephRbdLeftovers } from './leftovers.js';
import { chooseCluster, Rbd } from './rbd.js';
import { CephRbdSession, type FaultHooks, type RbdTargetDisk } from './session.js';

export { restoreToRbd, RbdRestoreTarget, type RestoreToRbdRequest } from './restore.js';
export { cephRbdLeftovers } from './leftovers.js';
export { CephRbdSession, type FaultHooks, type RbdTargetDisk } from './session.js';
export { Rbd, chooseCluster } from './rbd.js';
export { localExec, sshExec, type CommandExec } from './exec.js';

export interface CephRbdOptions {
  cluster?: string;
  runOn: 'backup-node' | 'hypervisor';
  reader: 'export-diff' | 'nbd';
}

export function parseOptions(options: Record<string, unknown>): CephRbdOptions {
  const runOn = options['runOn'] ?? 'backup-node';
  const reader = options['reader'] ?? 'export-diff';
  if (runOn !== 'backup-node' && runOn !== 'hypervisor') throw new ConfigError(`ceph-rbd: runOn must be backup-node or hypervisor, not ${JSON.stringify(runOn)}`);
  if (reader !== 'export-diff' && reader !== 'nbd') throw new ConfigError(`ceph-rbd: reader must be export-diff or nbd, not ${JSON.stringify(reader)}`);
  if (reader === 'nbd') {
    throw new ConfigError('ceph-rbd: reader "nbd" is not available yet', [], { hint: 'use reader: export-diff (the default); it reads the same extents and is the faster path here' });
  }
  const cluster = options['cluster'];
  return { runOn, reader, ...(typeof cluster === 'string' ? { cluster } : {}) };
}

/** The RBD disks of a target; any other disk is an error (this strategy cannot read it). */
export function rbdDisksOf(target: BackupTarget): RbdTargetDisk[] {
  if (!target.disks?.length) {
    throw new UsageError(`${target.vmName}: no disks are known for the ceph-rbd strategy`, { hint: 'the OpenStack client resolves Nova servers into their RBD disks; check that the VM has RBD-backed disks' });
  }
  const other = target.disks.filter((d) => d.kind !== 'rbd');
  if (other.length) {
    throw new UsageError(`${target.vmName}: disk(s) ${other.map((d) => `${d.key} (${d.kind})`).join(', ')} are not RBD images; the ceph-rbd strategy cannot read them`, { hint: 'use the libvirt-ssh or cinder-attach strategy for this VM' });
  }
  return target.disks as RbdTargetDisk[];
}

export interface CephRbdDeps {
  faults?: FaultHooks;
  /** Run rbd here instead of choosing from runOn (libvirt-ssh passes its SSH connection). */
  exec?: CommandExec;
}

/** A session on given disks and a given exec (what libvirt-ssh uses for a domain's RBD disks). */
export async function openCephRbdSession(target: BackupTarget, ctx: StrategyContext, deps: CephRbdDeps = {}): Promise<BackupSession> {
  const opts = parseOptions(ctx.options);
  const disks = rbdDisksOf(target);
  const clusterName = opts.cluster ?? disks.find((d) => d.cephCluster)?.cephCluster;
  const { name, config } = chooseCluster(ctx.inventory, clusterName);
  const local = localExec();
  let exec = deps.exec;
  let hypervisorExec: CommandExec | undefined;
  let onClose: (() => Promise<void>) | undefined;
  const hooks = [...(ctx.policy?.hooks?.preSnapshot ?? []), ...(ctx.policy?.hooks?.postSnapshot ?? [])];
  const needHypervisor = (opts.runOn === 'hypervisor' && !exec) || hooks.some((h) => h.where === 'hypervisor');
  if (target.hypervisor && needHypervisor) {
    // Loaded only when a hypervisor is involved: ssh2 is not needed for runOn backup-node.
    const { SshPool } = await import('../../src/transport/ssh.js');
    const pool = new SshPool({ env: ctx.env, log: ctx.log, signal: ctx.signal });
    onClose = () => pool.close();
    try {
      hypervisorExec = sshExec(await pool.connection(target.hypervisor));
    } catch (err) {
      await pool.close();
      if (opts.runOn === 'hypervisor' && !exec) throw err;
      ctx.log.warn(`${target.vmName}: hypervisor ${target.hypervisor.name} is not reachable; hooks there will fail`);
      onClose = undefined;
    }
  }
  if (!exec) {
    if (opts.runOn === 'hypervisor') {
      if (!target.hypervisor) throw new ConfigError(`${target.vmName}: runOn hypervisor, but the VM has no hypervisor in the inventory`);
      exec = hypervisorExec!;
    } else exec = local;
  }
  const rbd = await Rbd.open(exec, name, config, { remote: exec !== local, log: ctx.log });
  return new CephRbdSession(target, disks, ctx, { rbd, localExec: local, ...(hypervisorExec ? { hypervisorExec } : {}), ...(deps.faults ? { faults: deps.faults } : {}), ...(onClose ? { onClose } : {}) });
}

export function createCephRbdStrategy(deps: CephRbdDeps = {}): Strategy {
  return {
    name: 'ceph-rbd',
    open: (target, ctx) => openCephRbdSession(target, ctx, deps),
    leftovers: (ctx: StrategyContext, known?: KnownAnchors): Promise<Leftover[]> => cephRbdLeftovers(ctx, known, deps.exec),
  };
}

const cephRbd: Strategy = createCephRbdStrategy();
export default cephRbd;
