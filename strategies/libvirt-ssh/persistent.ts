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
 *     `echo --split`/`--err` are checked once when virsh starts (probeVirsh, 10 s): a virsh
 *     without them would never print a marker, so the run then uses one exec per call.
 *   shell (`sh -s`): each script runs in a subshell `( … ) </dev/null`, so `exit` in it ends only
 *     the subshell and nothing in it can read the following scripts; then the subshell's status
 *     and a marker are printed on stdout and a marker on stderr.
 * Each request first prints a start marker (virsh: on stderr; its stdout markers are per command)
 * and is parsed from there on; output while no request waits is dropped: a background job or a
 * daemon holding the shell's stderr cannot slip text into another command's reply.
 *
 * Requests run one at a time per process (a queue). A timeout or an abort kills the process (the
 * reply could no longer be told from the next one); the next request starts a new one. A reply
 * is capped at 64 MiB like an exec's output.
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

/** The most output one reply may carry, as an exec's (ssh DEFAULT_MAX_OUTPUT): beyond it the process is stopped. */
const MAX_REPLY = 64 * 1024 * 1024;
/** How much earlier output complete() sees again with a new piece: more than any marker (a marker may straddle two pieces). */
const OVERLAP = 256;

/** The output of one stream of a request, kept in pieces (joined once, at the end). */
class Collected {
  private parts: string[] = [];
  length = 0;
  /** The last OVERLAP characters. */
  private tail = '';

  /** Adds a piece; returns the text where a marker completed by it lies (the tail before it and the piece). */
  add(text: string): string {
    this.parts.push(text);
    this.length += text.length;
    const window = this.tail + text;
    this.tail = window.slice(-OVERLAP);
    return window;
  }

  text(): string {
    return this.parts.join('');
  }
}

/** A running process and the output of its current request. */
interface Running {
  proc: RemoteProcess;
  out: Collected;
  err: Collected;
  /** The process has ended (or was stopped). */
  ended: boolean;
  /** Set while a request waits: gets each new piece of output (with the overlap before it; '' for the other stream), and is called with ('', '') when the process ends. */
  wake: ((out: string, err: string) => void) | undefined;
}

/**
 * Checks a reply for completeness, piece by piece: it is given only the new text of each stream
 * (with OVERLAP characters before it), so checking costs what arrived, not the whole reply again
 * — a 64 MiB reply in 32 KiB pieces would be rescanned 2,000 times. It remembers what it saw.
 */
export type Complete = (out: string, err: string) => boolean;

/** A process that reads requests on stdin and answers on stdout/stderr, one request at a time. */
class PersistentProcess {
  private running: Running | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  /** Why the process cannot serve this run (its start or probe failed): every request fails fast with it. */
  private unusable: ProcessStartError | undefined;

  constructor(
    private readonly conn: SshConnection,
    private readonly argv: string[],
    readonly what: string,
    private readonly log: Logger | undefined,
    /** Checks a new process understands the framing; throws if not (the process is then not used for the run). */
    private readonly probe?: (request: (input: string, complete: Complete, opts: RequestOptions) => Promise<{ out: string; err: string }>) => Promise<void>,
  ) {}

  /** Runs one request: writes `input`, resolves with its output once `complete` says it is there. */
  request(input: string, complete: Complete, opts: RequestOptions): Promise<{ out: string; err: string }> {
    const run = this.queue.then(() => this.requestNow(input, complete, opts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Lets the request in flight finish (within `graceMs`), then ends stdin (the process exits on
   * EOF) and kills it if it has not exited within `graceMs`. A request still pending then fails
   * with ProcessLostError: it never waits forever.
   */
  async close(graceMs = 2_000): Promise<void> {
    // Requests queued behind a hung one must not start a process nobody would close: they go to an exec.
    this.unusable ??= new ProcessStartError(`the persistent ${this.what} was closed`);
    if (!this.running) return;
    await raceTimeout(this.queue, graceMs);
    const run = this.running;
    if (!run) return;
    this.running = undefined;
    run.proc.stdin.end();
    const exited = await raceTimeout(run.proc.done.then(() => true, () => true), graceMs);
    if (!exited) run.proc.kill();
    this.lose(run);
  }

  /** Marks the process gone and wakes its request (which then fails as lost). */
  private lose(run: Running): void {
    if (this.running === run) this.running = undefined;
    if (run.ended) return;
    run.ended = true;
    this.log?.debug(`persistent ${this.what} ended`);
    run.wake?.('', '');
  }

  private async start(): Promise<Running> {
    if (this.unusable) throw this.unusable;
    let proc: RemoteProcess;
    try {
      // No signal: the process outlives a request that was interrupted (cleanup still needs it).
      proc = await this.conn.execStream(this.argv);
    } catch (err) {
      throw new ProcessStartError(`could not start the persistent ${this.what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    // close() ran while it was starting: nobody would end this process.
    if (this.unusable) {
      proc.kill();
      throw this.unusable;
    }
    const run: Running = { proc, out: new Collected(), err: new Collected(), ended: false, wake: undefined };
    const decoder = new StringDecoder('utf8');
    // The handlers keep filling `run` after it stopped being this.running (close, a timeout):
    // its pending request still learns that the process ended.
    // Output while no request waits (a background job's, a late warning) is dropped: it is no reply's.
    proc.stdout.on('data', (d: Buffer) => {
      const text = decoder.write(d);
      if (run.wake) run.wake(run.out.add(text), '');
    });
    proc.onStderr((text) => {
      if (run.wake) run.wake('', run.err.add(text));
    });
    proc.stdin.on('error', () => undefined);
    const ended = () => this.lose(run);
    proc.done.then(ended, ended);
    this.running = run;
    this.log?.debug(`persistent ${this.what} started`);
    if (this.probe) {
      try {
        await this.probe((input, complete, opts) => this.send(run, input, complete, opts));
      } catch (err) {
        this.stop(run);
        // Remembered: every later call of the run goes to one exec each without waiting again.
        this.unusable = new ProcessStartError(`the persistent ${this.what} does not answer as expected (${err instanceof Error ? err.message : String(err)})`, { cause: err });
        throw this.unusable;
      }
    }
    return run;
  }

  private stop(run: Running): void {
    if (this.running === run) this.running = undefined;
    if (!run.ended) run.proc.kill();
    this.lose(run);
  }

  private async requestNow(input: string, complete: Complete, opts: RequestOptions): Promise<{ out: string; err: string }> {
    if (opts.signal?.aborted) throw abortReason(opts.signal);
    const run = this.running ?? (await this.start());
    // Ctrl-C while the process started: nothing was sent yet, the process stays for cleanup.
    if (opts.signal?.aborted) throw abortReason(opts.signal);
    return this.send(run, input, complete, opts);
  }

  private send(run: Running, input: string, complete: Complete, opts: RequestOptions): Promise<{ out: string; err: string }> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (err: Error | undefined, reply?: { out: string; err: string }) => {
        run.wake = undefined;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(reply!);
      };
      // A timeout or an abort stops the process: its late reply could not be told from the next one's.
      const stop = (err: Error) => {
        finish(err);
        this.stop(run);
      };
      const onAbort = () => stop(abortReason(opts.signal!));
      if (opts.timeoutMs) timer = setTimeout(() => stop(new UnavailableError(`the persistent ${this.what} did not answer within ${opts.timeoutMs} ms and was stopped`)), opts.timeoutMs);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      // Output printed between requests (a background job, a late warning) is not this reply's:
      // the buffers start empty, and parsers read only after the request's own start marker.
      run.out = new Collected();
      run.err = new Collected();
      run.wake = (out, err) => {
        if (run.out.length + run.err.length > MAX_REPLY) return stop(new UnavailableError(`the persistent ${this.what} printed more than ${MAX_REPLY} bytes for one request and was stopped`));
        if (complete(out, err)) finish(undefined, { out: run.out.text(), err: run.err.text() });
        else if (run.ended) {
          const said = run.err.text().trim();
          finish(new ProcessLostError(`the persistent ${this.what} was lost before it answered: whether the command ran is unknown${said ? ` (${said.slice(-300)})` : ''}`));
        }
      };
      if (run.ended) return run.wake('', '');
      run.proc.stdin.write(input);
    });
  }
}

/** True when `p` settled within `ms`, false otherwise. */
async function raceTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const settled = await Promise.race([p.then(() => true, () => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return settled;
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
  // The first line marks where this request's stderr begins (anything before is not its own).
  const lines = [`echo --err ${boundary}-go`];
  lines.push(...commands.map((c, i) => `echo --err ${boundary}-s${i} ; echo --split ${boundary},,s${i} ; ${c.map(shellQuote).join(' ')} ; echo --split ${boundary},,e${i} ; echo --err ${boundary}-e${i}`));
  lines.push(`echo --split ${boundary},,done ; echo --err ${boundary}-done`);
  return `${lines.join('\n')}\n`;
}

/** A Complete for one virsh request: both final markers arrived (each remembered once seen). */
export function virshReplyComplete(boundary: string): Complete {
  let outDone = false;
  let errDone = false;
  return (out, err) => {
    outDone ||= out.includes(`${boundary},done\n`);
    errDone ||= err.includes(`error: ${boundary}-done\n`);
    return outDone && errDone;
  };
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
  let cursor = find(`error: ${boundary}-go\n`, 0)?.end ?? 0;
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

/** How long a new virsh may take to show it frames replies: a virsh without them would hang every request until its time limit. */
const PROBE_MS = 10_000;

/**
 * Checks that a new virsh has `echo --split` and `echo --err` (the framing; a virsh that lacks
 * them never prints the markers). Three lines, so that an option virsh rejects loses only its
 * own line; the last one (`echo` with adjacent quotes, so that the echoed input line does not
 * hold the text it prints) ends the reply in every virsh.
 */
async function probeVirsh(request: (input: string, complete: Complete, opts: RequestOptions) => Promise<{ out: string; err: string }>): Promise<void> {
  const b = newBoundary();
  const input = `echo --split ${b},,a\necho --err ${b}-x\necho '${b}-pro''bed'\n`;
  // Either the marker or virsh's complaint about the option comes on stderr: wait for a whole line of it.
  let outDone = false;
  let errLine = false;
  const complete: Complete = (o, e) => {
    // No newline: virsh's plain `echo` prints none when stdin is not a tty (measured, libvirt 10).
    outDone ||= o.includes(`${b}-probed`);
    errLine ||= e.includes('\n');
    return outDone && errLine;
  };
  const { out, err } = await request(input, complete, { timeoutMs: PROBE_MS });
  if (!out.includes(`${b},a\n`)) throw new UnavailableError(`no \`echo --split\` (libvirt older than the framing needs)${err.trim() ? `: ${err.trim().slice(-300)}` : ''}`);
  if (!err.includes(`error: ${b}-x\n`)) throw new UnavailableError(`no \`echo --err\`${err.trim() ? `: ${err.trim().slice(-300)}` : ''}`);
}

/** One `virsh -q [-c URI]` for the whole run. */
export class PersistentVirsh {
  private readonly process: PersistentProcess;

  constructor(conn: SshConnection, virshArgv: string[], log: Logger | undefined) {
    this.process = new PersistentProcess(conn, virshArgv, 'virsh', log, probeVirsh);
  }

  /** Runs the commands in order (virsh goes on after a failure); one result per command. */
  async run(commands: readonly string[][], opts: RequestOptions = {}): Promise<StepResult[]> {
    const boundary = newBoundary();
    const { out, err } = await this.process.request(virshRequest(commands, boundary), virshReplyComplete(boundary), opts);
    return parseVirshReply(out, err, boundary, commands.length);
  }

  /** Ends the process after the request in flight (each wait at most `graceMs`). */
  close(graceMs?: number): Promise<void> {
    return this.process.close(graceMs);
  }
}

/** The text written to the shell for one script (exported for unit tests). */
export function shellRequest(script: string, boundary: string): string {
  // The start markers: output printed before them (a background job of an earlier script) is not this reply's.
  return `printf '%s\\n' ${boundary}-go; printf '%s\\n' ${boundary}-go >&2\n(\n${script}\n) </dev/null\nprintf '\\n%s %s\\n' ${boundary}-end "$?"; printf '%s\\n' ${boundary}-end >&2\n`;
}

/** A Complete for one shell request: both end markers arrived (each remembered once seen). */
export function shellReplyComplete(boundary: string): Complete {
  const endOut = new RegExp(`\\n${boundary}-end \\d+\\n`);
  let outDone = false;
  let errDone = false;
  return (out, err) => {
    outDone ||= endOut.test(out);
    errDone ||= err.includes(`${boundary}-end\n`);
    return outDone && errDone;
  };
}

/** The script's stdout, stderr and status once both end markers arrived, else undefined (exported for unit tests). */
export function parseShellReply(out: string, err: string, boundary: string): StepResult | undefined {
  const go = `${boundary}-go\n`;
  const so = out.indexOf(go);
  const se = err.indexOf(go);
  if (so < 0 || se < 0) return undefined;
  const m = new RegExp(`\\n${boundary}-end (\\d+)\\n`, 'g');
  m.lastIndex = so;
  const end = m.exec(out);
  const e = err.indexOf(`${boundary}-end\n`, se);
  if (!end || e < 0) return undefined;
  return { code: Number(end[1]), stdout: out.slice(so + go.length, end.index), stderr: err.slice(se + go.length, e) };
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
    const { out, err } = await this.process.request(shellRequest(script, boundary), shellReplyComplete(boundary), opts);
    const r = parseShellReply(out, err, boundary);
    if (!r) throw new UnavailableError(`garbled output of the persistent shell (no start marker): ${err.trim().slice(-300)}`);
    return r;
  }

  /** Runs one command (argv, quoted: data never becomes code). */
  exec(argv: readonly string[], opts: RequestOptions = {}): Promise<StepResult> {
    return this.script(shellJoin(argv), opts);
  }

  /** Ends the process after the request in flight (each wait at most `graceMs`). */
  close(graceMs?: number): Promise<void> {
    return this.process.close(graceMs);
  }
}
