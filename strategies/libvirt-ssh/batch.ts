/**
 * Several hypervisor commands in ONE round trip: one script for the run's persistent shell
 * (persistent.ts; each step framed inline with shell builtins), or, without one, for one SSH
 * exec (each step's output in temporary files). Each exec costs a channel, a login shell and a
 * round trip (0.1–0.4 s under the lab's load); a small incremental used to spend most of its
 * time in ~30 of them.
 *
 * The script is built only from argv arrays joined with shellJoin (src/transport/quote.ts) —
 * data (journal JSON, XML, paths, names) never becomes code. Each command's exit status,
 * stdout and stderr come back separately, framed by a random boundary no output can forge.
 * Steps run one after the other; the first failure that is not `mayFail` stops the rest (a
 * journal write that failed must stop the change it announces).
 */
import { randomBytes } from 'node:crypto';
import { UnavailableError } from '../../src/errors.js';
import { shellJoin, shellQuote } from '../../src/transport/quote.js';
import { SHELL_TIMEOUT_MS, type Hypervisor } from './hypervisor.js';

export interface Step {
  argv: string[];
  /** A non-zero exit does not stop a sequence (the caller reads the result). */
  mayFail?: boolean;
}

export interface StepResult {
  /** undefined: the step did not run (an earlier one failed). */
  code: number | undefined;
  stdout: string;
  stderr: string;
}

/** The remote shell's -c argument is one argv string: Linux caps it at 128 KiB (MAX_ARG_STRLEN). */
const MAX_SCRIPT = 100_000;

/**
 * A command that writes `content` to `path` atomically (temporary file, then rename), with
 * `mode` (0600 or 0644: set through the umask, which saves a chmod process per file).
 */
export function writeFileStep(path: string, content: string, mode: '0600' | '0644' = '0600'): Step {
  return { argv: ['sh', '-c', 'umask "$2" && printf %s "$3" > "$1.tmp" && mv -f "$1.tmp" "$1"', 'sh', path, mode === '0644' ? '022' : '077', content] };
}

/** The script; exported for unit tests. */
export function batchScript(steps: readonly Step[], boundary: string): string {
  const lines = ['t=$(mktemp -d) || exit 111', "trap 'rm -rf \"$t\"' EXIT"];
  steps.forEach((s, i) => {
    lines.push(`${shellJoin(s.argv)} >"$t/${i}.o" 2>"$t/${i}.e" </dev/null; c=$?`);
    lines.push(`printf '\\n${boundary} ${i} %s\\n' "$c"; cat "$t/${i}.o"; printf '\\n${boundary} e\\n'; cat "$t/${i}.e"`);
    if (!s.mayFail) lines.push('[ "$c" -eq 0 ] || exit 0');
  });
  return lines.join('\n');
}

/**
 * The script of a sequence for the persistent shell: each step writes straight to the shell's
 * stdout and stderr between markers (shell builtins only: no temporary files, no `cat`
 * processes); exported for unit tests.
 */
export function inlineBatchScript(steps: readonly Step[], boundary: string): string {
  const lines: string[] = [];
  steps.forEach((s, i) => {
    lines.push(`printf '${boundary} ${i} s\\n'; printf '${boundary} ${i} s\\n' >&2`);
    lines.push(`${inlineCommand(s.argv)} </dev/null; c=$?`);
    lines.push(`printf '\\n${boundary} ${i} c %s\\n' "$c"; printf '\\n${boundary} ${i} e\\n' >&2`);
    if (!s.mayFail) lines.push('[ "$c" -eq 0 ] || exit 0');
  });
  return lines.join('\n');
}

/**
 * A step's command for the inline script. `sh -c CODE NAME ARGS…` runs as `(set -- ARGS…; CODE)`:
 * the same code and arguments in a subshell of the persistent shell (a fork, no exec). Every
 * journal and file write is such a step, and under load each exec of sh cost ~10 ms. Unlike a
 * real `sh -c`, CODE sees the persistent shell's variables (`c`, the last status) and `$0` is
 * the shell's: step code must set every variable it reads and not use `$0`.
 */
export function inlineCommand(argv: readonly string[]): string {
  if (argv.length < 4 || argv[0] !== 'sh' || argv[1] !== '-c') return shellJoin(argv);
  const args = argv.slice(4);
  return `(set --${args.length ? ` ${shellJoin(args)}` : ''}\n${argv[2]}\n)`;
}

/** The results of an inlineBatchScript from the shell's stdout and stderr (exported for unit tests). */
export function parseInlineBatch(out: string, err: string, boundary: string, count: number): StepResult[] {
  const results: StepResult[] = [];
  for (let i = 0; i < count; i++) {
    const start = `${boundary} ${i} s\n`;
    const so = out.indexOf(start);
    if (so < 0) {
      results.push({ code: undefined, stdout: '', stderr: '' });
      continue;
    }
    const end = new RegExp(`\\n${boundary} ${i} c (\\d+)\\n`).exec(out.slice(so));
    const se = err.indexOf(start);
    const ee = se < 0 ? -1 : err.indexOf(`\n${boundary} ${i} e\n`, se);
    if (!end || se < 0 || ee < 0) throw new UnavailableError('garbled output of a hypervisor command batch');
    results.push({ code: Number(end[1]), stdout: out.slice(so + start.length, so + end.index), stderr: err.slice(se + start.length, ee) });
  }
  return results;
}

/** Splits the framed output into results: per step "\nB i code\n<stdout>\nB e\n<stderr>" (exported for unit tests). */
export function parseBatch(out: string, boundary: string, count: number): StepResult[] {
  const results: StepResult[] = Array.from({ length: count }, () => ({ code: undefined, stdout: '', stderr: '' }));
  const parts = out.split(`\n${boundary} `);
  for (let k = 1; k + 1 < parts.length; k += 2) {
    const head = parts[k]!;
    const nl = head.indexOf('\n');
    const [index, code] = (nl < 0 ? head : head.slice(0, nl)).split(' ');
    const i = Number(index);
    if (!Number.isInteger(i) || i < 0 || i >= count || !parts[k + 1]!.startsWith('e\n') || code === undefined || !/^\d+$/.test(code)) {
      throw new UnavailableError('garbled output of a hypervisor command batch');
    }
    results[i] = { code: Number(code), stdout: nl < 0 ? '' : head.slice(nl + 1), stderr: parts[k + 1]!.slice(2) };
  }
  return results;
}

/**
 * Runs the steps in one round trip: the hypervisor's persistent shell when it keeps one, else
 * one exec. A batch too large for one command line (it never is for journals and checkpoint
 * XML) runs step by step there, with the same semantics.
 */
export async function runBatch(hv: Hypervisor, steps: readonly Step[], opts: { timeoutMs?: number; signal?: AbortSignal | null } = {}): Promise<StepResult[]> {
  if (steps.length === 0) return [];
  const boundary = newBoundary();
  const execOpts = { timeoutMs: opts.timeoutMs ?? SHELL_TIMEOUT_MS, ...(opts.signal !== undefined ? { signal: opts.signal } : {}) };
  const inline = await hv.shellScript(inlineBatchScript(steps, boundary), execOpts);
  if (inline) {
    if (inline.code !== 0) throw new UnavailableError(`a command batch on ${hv.name} failed${inline.code === undefined ? ' (no exit status)' : ` with exit status ${inline.code}`}: ${inline.stderr.trim().slice(-500)}`);
    return parseInlineBatch(inline.stdout, inline.stderr, boundary, steps.length);
  }
  const script = batchScript(steps, boundary);
  if (script.length > MAX_SCRIPT) {
    const out: StepResult[] = steps.map(() => ({ code: undefined, stdout: '', stderr: '' }));
    for (const [i, s] of steps.entries()) {
      const r = await hv.exec(s.argv, execOpts);
      out[i] = { code: r.code, stdout: r.stdout, stderr: r.stderr };
      if (r.code !== 0 && !s.mayFail) break;
    }
    return out;
  }
  const r = await hv.exec(['sh', '-c', script], execOpts);
  if (r.code !== 0) throw new UnavailableError(`a command batch on ${hv.name} failed${r.code === undefined ? ` (${r.signal ?? 'no exit status'})` : ` with exit status ${r.code}`}: ${r.stderr.trim().slice(-500)}`);
  return parseBatch(r.stdout, boundary, steps.length);
}

/**
 * Several virsh commands in ONE virsh process — one process start and one libvirt connection
 * instead of one each (0.1–0.5 s apiece under load). virsh's command-string parser takes the
 * same quoting as a POSIX shell (single quotes literal, `\'` outside them), so every argument is
 * quoted with shellQuote. virsh goes on after a failing command and prints errors to stderr
 * without saying whose: a caller that needs to know runs the commands separately when
 * `clean` is false. Each command's output ends at its own `echo <boundary>-<i>`.
 */
export function virshMultiArgv(hv: Hypervisor, commands: readonly string[][], boundary: string): string[] {
  return hv.virshArgv([commands.map((c, i) => `${c.map(shellQuote).join(' ')} ; echo ${boundary}-${i}`).join(' ; ')]);
}

export function splitVirshMulti(stdout: string, boundary: string, count: number): string[] | undefined {
  const out: string[] = [];
  let from = 0;
  for (let i = 0; i < count; i++) {
    const mark = `${boundary}-${i}`;
    const at = stdout.indexOf(mark, from);
    if (at < 0) return undefined;
    out.push(stdout.slice(from, at).replace(/^\n/, ''));
    from = at + mark.length;
  }
  return out;
}

export function newBoundary(): string {
  return `@@vprotect-${randomBytes(12).toString('hex')}`;
}
