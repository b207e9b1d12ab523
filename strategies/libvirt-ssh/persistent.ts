/**
 * ONE virsh and ONE POSIX shell per run, kept running on the run's SSH connection (ssh2 exec
 * with stdin) and used by every phase. A new SSH exec costs a channel and a process start
 * (25 ms for `true`), and each virsh process opens its own libvirt connection (`virsh domstate`
 * alone: 85 ms here); the same libvirt work through one running virsh costs only libvirt's and
 * qemu's own time. See README "Fixed cost of an incremental".
 *
 * Framing. Each request is written to the process's stdin; its reply ends at markers made of a
 * random boundary, so no output (XML, journals, libvirt's messages quoting names) can forge one:
 *   virsh (`virsh -q -c URI`, stdin not a tty): it echoes every input line after its prompt on
 *     stdout, runs each line like the `virsh 'a ; b'` command string (POSIX quoting: shellQuote),
 *     goes on after errors and prints them as `error: …` on stderr. Each command is one line
 *       echo --err B-sI ; echo --split B,,sI ; COMMAND ; echo --split B,,eI ; echo --err B-eI
 *     `echo --split B,,sI` prints `B,sI` — never equal to the echoed input line, which holds
 *     `B,,sI` — so the command's stdout is what lies between `B,sI\n` and `B,eI\n`, and its stderr
 *     what lies between `error: B-sI` and `error: B-eI`. A command failed when its stderr holds
 *     an `error:` line. A final line of markers ends the request: a line virsh
 *     could not parse (nothing of it ran) loses only its own markers, it cannot hang the reply.
 *     virsh flushes stdout after each command (measured: replies arrive while stdin stays open).
 *   shell (`sh -s`): each script runs in a subshell `( … ) </dev/null`, so `exit` in it ends only
 *     the subshell and nothing in it can read the following scripts; then the subshell's status
 *     and a marker are printed on stdout and a marker on stderr.
 *
 * Requests run one at a time per process (a queue). A timeout or an abort kills the process (the
 * reply could no longer be told from the next one); the next request starts a new one.
 */
import { StringDecoder } from 'node:string_decoder';
import { InterruptedError, UnavailableError, VprotectError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { shellJoin, shellQuote } from '../../src/transport/quote.js';
import type { RemoteProcess, SshConnection } from '../../src/transport/ssh.js';
import { newBoundary, type StepResult } from './batch.js';

export interface RequestOptions {
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

/** The process ended before it answered: whether the request ran is unknown. */
export class ProcessLostError extends UnavailableError {}

/** The process could not be started: nothing of the request was sent. */
export class ProcessStartError extends UnavailableError {}

/** A process that reads requests on stdin and answers on stdout/stderr, one request at a time. */
class PersistentProcess {
  private proc: RemoteProcess | undefined;
  private out = '';
  private err = '';
  /** Called on every piece of output and when the process ends. */
  private wake: (() => void) | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly conn: SshConnection,
    private readonly argv: string[],
    readonly what: string,
    private readonly log: Logger | undefined,
  ) {}

  /** Runs one request: writes `input`, resolves with all output once `complete` says it is there. */
  request(input: string, complete: (out: string, err: string) => boolean, opts: RequestOptions): Promise<{ out: string; err: string }> {
    const run = this.queue.then(() => this.requestNow(input, complete, opts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Ends stdin (the process exits on EOF); kills it if it has not exited within `graceMs`. */
  async close(graceMs = 2_000): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = undefined;
    proc.stdin.end();
    let timer: NodeJS.Timeout | undefined;
    const exited = await Promise.race([proc.done.then(() => true, () => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs)))]);
    clearTimeout(timer);
    if (!exited) proc.kill();
  }

  private async start(): Promise<RemoteProcess> {
    let proc: RemoteProcess;
    try {
      // No signal: the process outlives a request that was interrupted (cleanup still needs it).
      proc = await this.conn.execStream(this.argv);
    } catch (err) {
      throw new ProcessStartError(`could not start the persistent ${this.what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    this.out = '';
    this.err = '';
    const decoder = new StringDecoder('utf8');
    proc.stdout.on('data', (d: Buffer) => {
      if (this.proc !== proc) return;
      this.out += decoder.write(d);
      this.wake?.();
    });
    proc.onStderr((text) => {
      if (this.proc !== proc) return;
      this.err += text;
      this.wake?.();
    });
    proc.stdin.on('error', () => undefined);
    const ended = () => {
      if (this.proc !== proc) return;
      this.proc = undefined;
      this.log?.debug(`persistent ${this.what} ended`);
      this.wake?.();
    };
    proc.done.then(ended, ended);
    this.proc = proc;
    this.log?.debug(`persistent ${this.what} started`);
    return proc;
  }

  private async requestNow(input: string, complete: (out: string, err: string) => boolean, opts: RequestOptions): Promise<{ out: string; err: string }> {
    if (opts.signal?.aborted) throw abortReason(opts.signal);
    const proc = this.proc ?? (await this.start());
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (err: Error | undefined, reply?: { out: string; err: string }) => {
        this.wake = undefined;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(reply!);
      };
      const stop = (err: Error) => {
        if (this.proc === proc) this.proc = undefined;
        proc.kill();
        finish(err);
      };
      const onAbort = () => stop(abortReason(opts.signal!));
      if (opts.timeoutMs) timer = setTimeout(() => stop(new UnavailableError(`the persistent ${this.what} did not answer within ${opts.timeoutMs} ms and was stopped`)), opts.timeoutMs);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.wake = () => {
        if (complete(this.out, this.err)) {
          const reply = { out: this.out, err: this.err };
          this.out = '';
          this.err = '';
          finish(undefined, reply);
        } else if (this.proc !== proc) {
          finish(new ProcessLostError(`the persistent ${this.what} ended before it answered${this.err.trim() ? `: ${this.err.trim().slice(-300)}` : ''}`));
        }
      };
      proc.stdin.write(input);
    });
  }
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof VprotectError ? reason : new InterruptedError();
}

/** Whether virsh's line reader can carry these arguments (a newline would end the command line). */
export function virshCanCarry(commands: readonly string[][]): boolean {
  return commands.every((c) => c.every((a) => !/[\r\n]/.test(a)));
}

/** The input lines of one virsh request (exported for unit tests). */
export function virshRequest(commands: readonly string[][], boundary: string): string {
  const lines = commands.map((c, i) => `echo --err ${boundary}-s${i} ; echo --split ${boundary},,s${i} ; ${c.map(shellQuote).join(' ')} ; echo --split ${boundary},,e${i} ; echo --err ${boundary}-e${i}`);
  lines.push(`echo --split ${boundary},,done ; echo --err ${boundary}-done`);
  return `${lines.join('\n')}\n`;
}

export function virshReplyComplete(out: string, err: string, boundary: string): boolean {
  return out.includes(`${boundary},done\n`) && err.includes(`error: ${boundary}-done\n`);
}

/**
 * Splits a virsh reply into one result per command (exported for unit tests): code 0, 1 (an
 * `error:` line between its own stderr markers) or undefined (virsh did not run its line — an
 * unknown command or option — so its markers are absent; its stderr is what virsh said between
 * the commands around it).
 */
export function parseVirshReply(out: string, err: string, boundary: string, count: number): StepResult[] {
  const find = (mark: string, from: number) => {
    const at = err.indexOf(mark, from);
    return at < 0 ? undefined : { at, end: at + mark.length };
  };
  const results: StepResult[] = [];
  let cursor = 0;
  for (let i = 0; i < count; i++) {
    const begin = find(`error: ${boundary}-s${i}\n`, cursor);
    const end = begin && find(`error: ${boundary}-e${i}\n`, begin.end);
    const startMark = `${boundary},s${i}\n`;
    const s = out.indexOf(startMark);
    const e = s < 0 ? -1 : out.indexOf(`${boundary},e${i}\n`, s + startMark.length);
    if (!begin || !end || s < 0 || e < 0) {
      // Not run: what virsh said up to the next command that ran (or the end of the request).
      let next: number | undefined;
      for (let j = i + 1; j < count && next === undefined; j++) next = find(`error: ${boundary}-s${j}\n`, cursor)?.at;
      const said = err.slice(cursor, next ?? find(`error: ${boundary}-done\n`, cursor)?.at ?? err.length);
      results.push({ code: undefined, stdout: '', stderr: said || 'virsh did not run the command' });
      continue;
    }
    const stderr = err.slice(begin.end, end.at);
    cursor = end.end;
    results.push({ code: /^error:/m.test(stderr) ? 1 : 0, stdout: out.slice(s + startMark.length, e), stderr });
  }
  return results;
}

/** One `virsh -q [-c URI]` for the whole run. */
export class PersistentVirsh {
  private readonly process: PersistentProcess;

  constructor(conn: SshConnection, virshArgv: string[], log: Logger | undefined) {
    this.process = new PersistentProcess(conn, virshArgv, 'virsh', log);
  }

  /** Runs the commands in order (virsh goes on after a failure); one result per command. */
  async run(commands: readonly string[][], opts: RequestOptions = {}): Promise<StepResult[]> {
    const boundary = newBoundary();
    const { out, err } = await this.process.request(virshRequest(commands, boundary), (o, e) => virshReplyComplete(o, e, boundary), opts);
    return parseVirshReply(out, err, boundary, commands.length);
  }

  close(): Promise<void> {
    return this.process.close();
  }
}

/** The text written to the shell for one script (exported for unit tests). */
export function shellRequest(script: string, boundary: string): string {
  return `(\n${script}\n) </dev/null\nprintf '\\n%s %s\\n' ${boundary}-end "$?"; printf '%s\\n' ${boundary}-end >&2\n`;
}

/** The script's stdout, stderr and status once both end markers arrived, else undefined (exported for unit tests). */
export function parseShellReply(out: string, err: string, boundary: string): StepResult | undefined {
  const m = new RegExp(`\\n${boundary}-end (\\d+)\\n`).exec(out);
  const e = err.indexOf(`${boundary}-end\n`);
  if (!m || e < 0) return undefined;
  return { code: Number(m[1]), stdout: out.slice(0, m.index), stderr: err.slice(0, e) };
}

/** One `sh -s` for the whole run: scripts and single commands. */
export class PersistentShell {
  private readonly process: PersistentProcess;

  constructor(conn: SshConnection, log: Logger | undefined) {
    this.process = new PersistentProcess(conn, ['sh', '-s'], 'shell', log);
  }

  /** Runs a script (built from shellJoin'd argv only) in a subshell; its status, stdout and stderr. */
  async script(script: string, opts: RequestOptions = {}): Promise<StepResult> {
    const boundary = newBoundary();
    const { out, err } = await this.process.request(shellRequest(script, boundary), (o, e) => parseShellReply(o, e, boundary) !== undefined, opts);
    return parseShellReply(out, err, boundary)!;
  }

  /** Runs one command (argv, quoted: data never becomes code). */
  exec(argv: readonly string[], opts: RequestOptions = {}): Promise<StepResult> {
    return this.script(shellJoin(argv), opts);
  }

  close(): Promise<void> {
    return this.process.close();
  }
}
