/**
 * Consistency around the snapshot: pre/post snapshot hooks (on the hypervisor, in the guest
 * through the guest agent, or on the backup node) and guest-agent filesystem freeze. What was
 * reached is reported, never assumed: no agent → crash-consistent with the reason, or an error
 * when the policy requires quiesce.
 */
import { UnavailableError, UsageError, errorMessage } from '../../src/errors.js';
import type { HookConfig, PolicyConfig } from '../../src/inventory/types.js';
import type { Logger } from '../../src/log.js';
import type { ConsistencyReport } from '../../src/strategy/contract.js';
import { runCommand } from '../../src/transport/command.js';
import type { Hypervisor } from './hypervisor.js';
import { VirshError } from './hypervisor.js';

type HookResult = NonNullable<ConsistencyReport['hooks']>[number];

/** A hook with onFailure: abort failed: the backup stops before (or right after) the snapshot. */
export class HookFailedError extends UnavailableError {}

function hookArgv(run: string | string[]): string[] {
  return typeof run === 'string' ? ['sh', '-c', run] : run;
}

function describeHook(run: string | string[]): string {
  return typeof run === 'string' ? run : run.join(' ');
}

/** Runs a command inside the guest with guest-exec and polls guest-exec-status until it ends. */
async function runInGuest(hv: Hypervisor, domain: string, argv: string[], timeoutMs: number): Promise<{ exitCode: number | null; output: string }> {
  const [path, ...arg] = argv;
  const start = JSON.stringify({ execute: 'guest-exec', arguments: { path, arg, 'capture-output': true } });
  const started = JSON.parse(await hv.virsh(['qemu-agent-command', domain, start, '--timeout', '10'])) as { return: { pid: number } };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = JSON.parse(await hv.virsh(['qemu-agent-command', domain, JSON.stringify({ execute: 'guest-exec-status', arguments: { pid: started.return.pid } }), '--timeout', '10'])) as {
      return: { exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string };
    };
    if (status.return.exited) {
      const out = Buffer.from(status.return['err-data'] ?? status.return['out-data'] ?? '', 'base64').toString('utf8');
      return { exitCode: status.return.exitcode ?? null, output: out };
    }
    if (Date.now() > deadline) return { exitCode: null, output: `did not finish within ${timeoutMs / 1000} s` };
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function runHook(hv: Hypervisor, domain: string, hook: HookConfig, phase: 'pre' | 'post', log: Logger): Promise<HookResult> {
  const where = hook.where ?? 'hypervisor';
  const timeoutMs = (hook.timeoutSeconds ?? 60) * 1000;
  const argv = hookArgv(hook.run);
  const command = describeHook(hook.run);
  let exitCode: number | null = null;
  let message: string | undefined;
  try {
    if (where === 'hypervisor') {
      const r = await hv.exec(argv, { timeoutMs, signal: null });
      exitCode = r.code ?? null;
      if (r.code !== 0) message = r.stderr.trim().slice(-500) || (r.code === undefined ? `killed by ${r.signal ?? 'a signal'}` : undefined);
    } else if (where === 'guest') {
      const r = await runInGuest(hv, domain, argv, timeoutMs);
      exitCode = r.exitCode;
      if (r.exitCode !== 0) message = r.output.trim().slice(-500);
    } else {
      const r = await runCommand(argv, { timeoutMs, okExitCodes: Array.from({ length: 256 }, (_, i) => i) });
      exitCode = r.exitCode;
      if (r.exitCode !== 0) message = r.stderr.trim().slice(-500);
    }
  } catch (err) {
    message = errorMessage(err);
  }
  const ok = exitCode === 0;
  const result: HookResult = { phase, command, where, exitCode, ok, ...(message ? { message } : {}) };
  if (!ok) {
    const text = `${phase}-snapshot hook "${command}" (${where}) failed${exitCode !== null ? ` with exit status ${exitCode}` : ''}${message ? `: ${message}` : ''}`;
    if ((hook.onFailure ?? 'abort') === 'abort') throw new HookFailedError(text, { data: { hook: result } });
    log.warn(`${text} (onFailure: continue)`);
  }
  return result;
}

export interface FreezeOutcome {
  frozen: boolean;
  level: 'crash' | 'quiesced';
  note?: string;
}

/** Freezes the guest's filesystems when the policy asks; a missing agent is reported or refused. */
export async function freezeGuest(hv: Hypervisor, domain: string, hasChannel: boolean, quiesce: PolicyConfig['quiesce']): Promise<FreezeOutcome> {
  const mode = quiesce ?? 'off';
  if (mode === 'off') return { frozen: false, level: 'crash', note: 'quiesce is off in the policy' };
  const refuse = (why: string): never => {
    throw new UnavailableError(`cannot quiesce ${domain}: ${why}`, { hint: 'install and start qemu-guest-agent in the guest (with a org.qemu.guest_agent.0 channel), or set quiesce: try' });
  };
  if (!hasChannel) {
    if (mode === 'require') refuse('the domain has no guest-agent channel');
    return { frozen: false, level: 'crash', note: 'no guest-agent channel: crash-consistent' };
  }
  try {
    await hv.virsh(['domfsfreeze', domain], { timeoutMs: 60_000 });
    return { frozen: true, level: 'quiesced' };
  } catch (err) {
    const why = err instanceof VirshError ? err.message.replace(/^virsh domfsfreeze on \S+ failed: /, '') : errorMessage(err);
    if (mode === 'require') refuse(why);
    return { frozen: false, level: 'crash', note: `guest agent did not freeze the filesystems (${why}): crash-consistent` };
  }
}

export async function thawGuest(hv: Hypervisor, domain: string): Promise<void> {
  await hv.virsh(['domfsthaw', domain], { signal: null, timeoutMs: 60_000 });
}

export function checkHooks(hooks: HookConfig[] | undefined): HookConfig[] {
  for (const h of hooks ?? []) if (Array.isArray(h.run) && h.run.length === 0) throw new UsageError('a snapshot hook has an empty command');
  return hooks ?? [];
}
