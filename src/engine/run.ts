/**
 * A backup run over several VMs: each VM on its own (one failing VM does not stop the others),
 * then one verdict: all good → ok; some failed → PartialFailureError (exit 3); all failed → the
 * error of the first (so a single-VM run exits with its real cause: 69, 75, 77, ...).
 */
import { errorMessage, PartialFailureError, throwIfAborted, VprotectError, InterruptedError } from '../errors.js';
import type { BackupLevel, PolicyConfig } from '../inventory/types.js';
import type { Repository } from '../repository/repository.js';
import type { BackupTarget, MetadataFile, Strategy, StrategyContext } from '../strategy/contract.js';
import { backupVm, type BackupVmResult } from './backup-vm.js';

export interface RunItem {
  target: BackupTarget;
  strategy: Strategy;
  repo: Repository;
  policy: PolicyConfig | undefined;
  options: Record<string, unknown>;
  forceFullReason?: string;
  captureMetadata?: () => Promise<MetadataFile[]>;
  /** Known before the run that this VM cannot be backed up (reported as its failure). */
  refusal?: VprotectError;
}

export interface VmFailure {
  vmId: string;
  vmName: string;
  error: { code: string; exitCode: number; message: string; hint?: string };
}

export interface RunReport {
  ok: BackupVmResult[];
  failed: VmFailure[];
}

export async function runBackups(
  items: RunItem[],
  opts: { level: BackupLevel; command: string; base: Omit<StrategyContext, 'policy' | 'options'> },
): Promise<RunReport> {
  const report: RunReport = { ok: [], failed: [] };
  const errors: unknown[] = [];
  for (const item of items) {
    throwIfAborted(opts.base.signal);
    const { target } = item;
    opts.base.events({ type: 'vm-start', vmId: target.vmId, vmName: target.vmName, strategy: item.strategy.name, message: `backing up ${target.vmName} (${item.strategy.name})` });
    try {
      if (item.refusal) throw item.refusal;
      const result = await backupVm({
        repo: item.repo,
        strategy: item.strategy,
        target,
        level: opts.level,
        ctx: { ...opts.base, policy: item.policy, options: item.options },
        command: opts.command,
        ...(item.forceFullReason ? { forceFullReason: item.forceFullReason } : {}),
        ...(item.captureMetadata ? { captureMetadata: item.captureMetadata } : {}),
      });
      report.ok.push(result);
      for (const w of result.warnings) opts.base.log.warn(`${target.vmName}: ${w}`);
      opts.base.events({ type: 'vm-done', ...result, message: `${target.vmName}: ${result.level} point ${result.pointId} (${result.seconds.toFixed(1)} s)` });
    } catch (err) {
      if (err instanceof InterruptedError || opts.base.signal.aborted) throw err;
      errors.push(err);
      const failure: VmFailure = { vmId: target.vmId, vmName: target.vmName, error: describe(err) };
      report.failed.push(failure);
      opts.base.events({ type: 'vm-failed', ...failure, level: 'error', message: `${target.vmName}: ${failure.error.message}` });
    }
  }
  if (report.failed.length && report.ok.length === 0) throw errors[0];
  if (report.failed.length) {
    throw new PartialFailureError(`${report.failed.length} of ${items.length} VMs failed: ${report.failed.map((f) => f.vmName).join(', ')}`, { data: { report } });
  }
  return report;
}

function describe(err: unknown): VmFailure['error'] {
  if (err instanceof VprotectError) return { code: err.code, exitCode: err.exitCode, message: err.message, ...(err.hint ? { hint: err.hint } : {}) };
  return { code: 'internal', exitCode: 1, message: errorMessage(err) };
}
