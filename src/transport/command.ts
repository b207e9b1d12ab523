/**
 * Runs local programs (qemu-img, rbd, ssh …) from an argv array — never a shell string, so no
 * argument can be reinterpreted. Failures become VprotectErrors whose message carries the tail
 * of stderr, because that is where every one of those tools explains itself.
 */
import type { Readable, Writable } from 'node:stream';
import type { ResultPromise } from 'execa';
import { InterruptedError, UnavailableError, VprotectError, type ErrorDetails } from '../errors.js';
import type { Logger } from '../log.js';
import { describeArgv } from './quote.js';

export interface CommandOptions {
  /** Kill the program (SIGTERM, then SIGKILL after 5 s) when it runs longer than this. */
  timeoutMs?: number;
  /** Kill the program when this fires; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Bytes or text written to the program's stdin, which is then closed; a Readable is piped in
   * with backpressure (`rbd import-diff -` fed from the chain reader). Default: no stdin.
   */
  input?: string | Buffer | Readable;
  cwd?: string;
  /** Extra environment variables, added to the inherited environment. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Exit codes that count as success (default [0]); e.g. [0, 1] for `cmp`-like tools. */
  okExitCodes?: readonly number[];
  /** Refuse (and kill) when stdout grows beyond this many bytes; default 64 MiB. */
  maxOutputBytes?: number;
  log?: Logger;
}

export interface CommandResult<Out = string> {
  argv: readonly string[];
  exitCode: number;
  stdout: Out;
  stderr: string;
}

/** A program exited with a status not in okExitCodes, or was killed. */
export class CommandFailedError extends VprotectError {
  override readonly code: string = 'command-failed';
  readonly argv: readonly string[];
  readonly status: number | undefined;
  readonly stderr: string;

  constructor(message: string, argv: readonly string[], status: number | undefined, stderr: string, details: ErrorDetails = {}) {
    super(message, details);
    this.argv = argv;
    this.status = status;
    this.stderr = stderr;
  }
}

const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;
const STDERR_TAIL = 2000;

/** Runs argv to completion and returns its stdout as text. */
export async function runCommand(argv: readonly string[], options: CommandOptions = {}): Promise<CommandResult<string>> {
  const result = await run(argv, options);
  return { ...result, stdout: result.stdout.toString('utf8') };
}

/** Runs argv to completion and returns its stdout as bytes (for binary output). */
export async function runCommandBuffer(argv: readonly string[], options: CommandOptions = {}): Promise<CommandResult<Buffer>> {
  return run(argv, options);
}

/** A program started by spawnWithStdout. */
export interface SpawnedCommand {
  /** Settles when the program has exited: rejects like runCommand (stdout is '' here). */
  done: Promise<CommandResult<''>>;
  /** Stops the program (SIGTERM). */
  kill(): void;
}

/**
 * execa and its dependencies are ~120 modules (~0.2 s of CPU to load here): loaded by the first
 * command run, not by every module that merely imports CommandFailedError (a backup over SSH
 * runs none).
 */
let execaModule: Promise<typeof import('execa')> | undefined;
function loadExeca(): Promise<typeof import('execa')> {
  execaModule ??= import('execa');
  return execaModule;
}

/**
 * Starts argv with its stdout connected to `stdout`, a stream with a file descriptor (a Unix
 * socket whose other end the caller reads with its own reused buffers: strategies/ceph-rbd/
 * socket-stream.ts). The descriptor is duplicated into the child by the time this resolves; the
 * caller may close its copy then. stderr is captured for the error message; `done` settles like
 * runCommand.
 */
export async function spawnWithStdout(argv: readonly string[], stdout: Writable, options: CommandOptions = {}): Promise<SpawnedCommand> {
  const [file, args] = split(argv);
  const { execa } = await loadExeca();
  options.log?.debug('run (stdout to a descriptor)', { command: describeArgv(argv) });
  const child = execa(file, args, { ...common(options), stdout, buffer: { stdout: false, stderr: true } });
  const done = settle(child, argv, options).then((r) => ({ ...r, stdout: '' as const }));
  // The caller observes failures through `done`; keep an unobserved rejection from crashing.
  done.catch(() => {});
  return {
    done,
    kill: () => {
      child.kill();
    },
  };
}

async function run(argv: readonly string[], options: CommandOptions): Promise<CommandResult<Buffer>> {
  const [file, args] = split(argv);
  const { execa } = await loadExeca();
  options.log?.debug('run', { command: describeArgv(argv) });
  const child = execa(file, args, {
    ...common(options),
    encoding: 'buffer',
    maxBuffer: { stdout: options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT, stderr: 1024 * 1024 },
  });
  return settle(child, argv, options);
}

function split(argv: readonly string[]): [string, string[]] {
  const [file, ...args] = argv;
  if (file === undefined || file === '') throw new VprotectError('cannot run an empty command');
  return [file, args];
}

function common(options: CommandOptions) {
  return {
    reject: false,
    timeout: options.timeoutMs ?? 0,
    cancelSignal: options.signal,
    forceKillAfterDelay: 5000,
    stdin: options.input === undefined ? ('ignore' as const) : ('pipe' as const),
    ...(options.input === undefined ? {} : { input: options.input }),
    cwd: options.cwd,
    env: options.env as Record<string, string> | undefined,
    stripFinalNewline: false,
    windowsHide: true,
  };
}

interface Settled {
  exitCode?: number | undefined;
  signal?: string | undefined;
  stdout?: unknown;
  stderr?: unknown;
  failed: boolean;
  timedOut: boolean;
  isCanceled: boolean;
  isMaxBuffer: boolean;
  code?: string | undefined;
  originalMessage?: string | undefined;
}

async function settle(child: ResultPromise, argv: readonly string[], options: CommandOptions): Promise<CommandResult<Buffer>> {
  const r = (await child) as unknown as Settled;
  const stderr = toText(r.stderr);
  const stdout = Buffer.isBuffer(r.stdout) ? r.stdout : r.stdout instanceof Uint8Array ? Buffer.from(r.stdout) : Buffer.alloc(0);
  const cmd = describeArgv(argv);
  const ok = options.okExitCodes ?? [0];
  if (r.isCanceled) {
    const reason: unknown = options.signal?.reason;
    if (reason instanceof VprotectError) throw reason;
    throw new InterruptedError();
  }
  if (r.code === 'ENOENT' && r.exitCode === undefined) {
    throw new UnavailableError(`cannot run ${argv[0]}: program not found`, {
      hint: `install ${argv[0]} or put it on PATH`,
      data: { command: cmd },
    });
  }
  if (r.timedOut) {
    throw new CommandFailedError(`${cmd} did not finish within ${options.timeoutMs} ms and was killed${tail(stderr)}`, argv, r.exitCode, stderr);
  }
  if (r.isMaxBuffer) {
    throw new CommandFailedError(`${cmd} wrote more than ${options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT} bytes to stdout and was stopped`, argv, r.exitCode, stderr);
  }
  if (r.exitCode === undefined) {
    const why = r.signal ? `was killed by ${r.signal}` : `could not be started (${r.originalMessage ?? r.code ?? 'unknown error'})`;
    throw new CommandFailedError(`${cmd} ${why}${tail(stderr)}`, argv, undefined, stderr);
  }
  if (!ok.includes(r.exitCode)) {
    throw new CommandFailedError(`${cmd} failed with exit status ${r.exitCode}${tail(stderr)}`, argv, r.exitCode, stderr);
  }
  return { argv, exitCode: r.exitCode, stdout, stderr };
}

function toText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  return '';
}

/** The last part of stderr, where tools put the actual reason, on one line per message. */
function tail(stderr: string): string {
  const text = stderr.trim();
  if (!text) return '';
  return `: ${text.length > STDERR_TAIL ? `…${text.slice(-STDERR_TAIL)}` : text}`;
}
