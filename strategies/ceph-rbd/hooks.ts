/**
 * Pre- and post-snapshot commands of a policy (inventory `hooks`), as the ceph-rbd strategy can
 * run them: on the backup node, or on the VM's hypervisor over SSH. It has no way into the guest
 * (no guest agent channel): a `where: guest` hook fails and says so, and its onFailure decides.
 */
import { errorMessage, UnavailableError } from '../../src/errors.js';
import type { HookConfig } from '../../src/inventory/types.js';
import type { ConsistencyReport } from '../../src/strategy/contract.js';
import type { CommandExec } from './exec.js';

export type HookResult = NonNullable<ConsistencyReport['hooks']>[number];

export interface HookRunners {
  local: CommandExec;
  /** Present when the VM's hypervisor is reachable over SSH. */
  hypervisor?: CommandExec;
  signal?: AbortSignal;
}

/** A hook's argv: an array is run as is; a string is a shell command line the user wrote. */
export function hookArgv(run: string | string[]): string[] {
  return typeof run === 'string' ? ['sh', '-c', run] : run;
}

/**
 * Runs the hooks of one phase in order. Returns their results; throws after the first failing
 * hook whose onFailure is 'abort' (the default), with the results so far attached.
 */
export async function runHooks(phase: 'pre' | 'post', hooks: HookConfig[] | undefined, runners: HookRunners): Promise<HookResult[]> {
  const results: HookResult[] = [];
  for (const h of hooks ?? []) {
    const where = h.where ?? 'local';
    const argv = hookArgv(h.run);
    const command = typeof h.run === 'string' ? h.run : h.run.join(' ');
    const exec = where === 'local' ? runners.local : where === 'hypervisor' ? runners.hypervisor : undefined;
    let result: HookResult;
    if (!exec) {
      result = { phase, command, where, exitCode: null, ok: false, message: where === 'guest' ? 'the ceph-rbd strategy cannot run commands in the guest (use libvirt-ssh for guest hooks)' : 'the VM has no hypervisor this run can reach' };
    } else {
      try {
        await exec.run(argv, { timeoutMs: (h.timeoutSeconds ?? 300) * 1000, ...(runners.signal ? { signal: runners.signal } : {}) });
        result = { phase, command, where, exitCode: 0, ok: true };
      } catch (err) {
        const status = (err as { status?: unknown }).status;
        result = { phase, command, where, exitCode: typeof status === 'number' ? status : null, ok: false, message: errorMessage(err) };
      }
    }
    results.push(result);
    if (!result.ok && (h.onFailure ?? 'abort') === 'abort') {
      throw new HookFailedError(`${phase}-snapshot hook "${command}" (${where}) failed: ${result.message ?? `exit status ${result.exitCode}`}`, results);
    }
  }
  return results;
}

export class HookFailedError extends UnavailableError {
  constructor(
    message: string,
    readonly results: HookResult[],
  ) {
    super(message, { hint: 'fix the hook, or set its onFailure to continue' });
  }
}
