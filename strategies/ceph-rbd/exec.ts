/**
 * Where `rbd` runs: on the backup node (the project's command runner) or on a hypervisor over
 * an existing SSH connection. Both take an argv — never a shell string — and both put the
 * command's stderr into the error when it fails, because that is where rbd explains itself.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { errorMessage, InterruptedError, VprotectError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { CommandFailedError, runCommand } from '../../src/transport/command.js';
import { describeArgv } from '../../src/transport/quote.js';
import type { SshConnection } from '../../src/transport/ssh.js';
import { largeChunks } from '../../src/transport/ssh.js';
import { prefetch } from './prefetch.js';
import { streamThroughSocket } from './socket-stream.js';

export interface ExecOptions {
  /** Kill the command after this long. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Bytes fed to the command's stdin (backpressure honoured); the stream's own errors win. */
  input?: AsyncIterable<Buffer>;
}

/** A command whose stdout is read as a stream (`rbd export-diff … -`). */
export interface StreamingExec {
  /** Read ahead of the consumer, up to `readAhead` bytes (see StreamOptions). */
  stdout: AsyncIterable<Buffer>;
  /**
   * True when a chunk's bytes are only valid until the next chunk is asked for (the local reader
   * refills its buffers); a consumer that keeps bytes longer must copy them.
   */
  reusesBuffers?: boolean;
  /** Settles when the command has exited; rejects (with its stderr) when it failed. */
  done: Promise<void>;
  kill(): void;
}

export interface StreamOptions {
  signal?: AbortSignal;
  /**
   * Bytes read ahead of the consumer (default 4 MiB). Why: a pipe or socket holds 64–200 KiB,
   * so while the repository writer waits on the disk (or hashes), rbd would block on a full pipe
   * and stop reading from the OSDs; with a few MiB in between, both work at the same time.
   * Why not more: every MiB read ahead is memory touched for the first time, and a page fault
   * costs 10–20 µs on the lab's VM. With 32 MiB an incremental of 268 MB took ~10 000 faults and
   * 0.84–0.88 s of CPU in its data phase; with 4 MiB (3 slabs) ~7 600 and 0.71–0.76 s, and the
   * phase was not slower.
   */
  readAhead?: number;
}

export const DEFAULT_READ_AHEAD = 4 << 20;

export interface CommandExec {
  /** For messages: "the backup node", "hypervisor hv1". */
  readonly where: string;
  /** The commands run on this machine: they can write files vprotect then reads. */
  readonly local?: boolean;
  run(argv: readonly string[], opts?: ExecOptions): Promise<{ stdout: string; stderr: string }>;
  stream(argv: readonly string[], opts?: StreamOptions): Promise<StreamingExec>;
}

/**
 * The same runner with every command in the debug log (`vprotect -v`): its argv (ids, paths,
 * pool/image names; inline keyrings are files by then), where it ran, and how long it took, or
 * for a stream when it started and ended. libvirt-ssh logs its virsh calls the same way.
 */
export function loggedExec(exec: CommandExec, log: Logger): CommandExec {
  const fields = (argv: readonly string[], started: number, extra: Record<string, unknown> = {}) => ({ where: exec.where, command: describeArgv(argv), ms: Date.now() - started, ...extra });
  return {
    where: exec.where,
    ...(exec.local ? { local: true } : {}),
    async run(argv, opts) {
      const started = Date.now();
      try {
        const r = await exec.run(argv, opts);
        log.debug('command', fields(argv, started));
        return r;
      } catch (err) {
        log.debug('command failed', fields(argv, started, { error: errorMessage(err) }));
        throw err;
      }
    },
    async stream(argv, opts) {
      const started = Date.now();
      const s = await exec.stream(argv, opts);
      log.debug('command started (streaming)', fields(argv, started));
      s.done.then(
        () => log.debug('command ended (streaming)', fields(argv, started)),
        (err: unknown) => log.debug('command failed (streaming)', fields(argv, started, { error: errorMessage(err) })),
      );
      return s;
    },
  };
}

/** Runs commands on this machine through src/transport/command.ts. */
export function localExec(): CommandExec {
  return {
    where: 'the backup node',
    local: true,
    async run(argv, opts = {}) {
      if (!opts.input) {
        const r = await runCommand(argv, { ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
        return { stdout: r.stdout, stderr: r.stderr };
      }
      return runWithInput(argv, opts.input, opts);
    },
    stream(argv, opts = {}) {
      // Through a socket into reused buffers, not a pipe: see socket-stream.ts for the numbers.
      return streamThroughSocket(argv, { readAhead: opts.readAhead ?? DEFAULT_READ_AHEAD, ...(opts.signal ? { signal: opts.signal } : {}) });
    },
  };
}

/**
 * Feeds `input` to a local command's stdin. The input is ours (the chain reader): when it fails,
 * the command is stopped and the input's error — "point X is damaged" — is what the caller sees,
 * not rbd's complaint about a short stream.
 */
async function runWithInput(argv: readonly string[], input: AsyncIterable<Buffer>, opts: ExecOptions): Promise<{ stdout: string; stderr: string }> {
  const stop = new AbortController();
  const onOuterAbort = () => stop.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  let inputError: unknown;
  const source = Readable.from(
    (async function* () {
      try {
        yield* input;
      } catch (err) {
        inputError = err;
        stop.abort(err instanceof VprotectError ? err : new VprotectError(errorMessage(err), { cause: err }));
        throw err;
      }
    })(),
    { objectMode: false },
  );
  // execa pipes a Readable `input` into stdin; errors of the source end up as its own failure.
  source.on('error', () => {});
  try {
    const r = await runCommand(argv, { input: source, signal: stop.signal, ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}) });
    if (inputError) throw inputError;
    return { stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    if (inputError) throw inputError;
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onOuterAbort);
  }
}

/** Runs commands on a hypervisor over an open SSH connection (src/transport/ssh.ts). */
export function sshExec(conn: SshConnection): CommandExec {
  const where = `hypervisor ${conn.target.name}`;
  return {
    where,
    async run(argv, opts = {}) {
      if (!opts.input) {
        const r = await conn.run(argv, { ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
        return { stdout: r.stdout, stderr: r.stderr };
      }
      const p = await conn.execStream(argv, opts.signal ? { signal: opts.signal } : {});
      const drain = (async () => {
        for await (const _ of p.stdout) void _;
      })();
      let inputError: unknown;
      try {
        await pipeline(Readable.from(opts.input), p.stdin);
      } catch (err) {
        inputError = err;
        p.kill();
      }
      const r = await p.done;
      await drain.catch(() => {});
      if (inputError) throw inputError;
      if (r.code !== 0) throw failed(argv, where, r.code, r.signal, r.stderr);
      return { stdout: '', stderr: r.stderr };
    },
    async stream(argv, opts = {}) {
      const p = await conn.execStream(argv, opts.signal ? { signal: opts.signal } : {});
      const done = p.done.then((r) => {
        if (r.code !== 0) throw failed(argv, where, r.code, r.signal, r.stderr);
      });
      done.catch(() => {});
      return { stdout: prefetch(largeChunks(p.stdout as AsyncIterable<Buffer>), opts.readAhead ?? DEFAULT_READ_AHEAD), done, kill: () => p.kill() };
    },
  };
}

function failed(argv: readonly string[], where: string, code: number | undefined, signal: string | undefined, stderr: string): CommandFailedError {
  const why = code === undefined ? `was killed by ${signal ?? 'a signal'}` : `failed with exit status ${code}`;
  const err = stderr.trim();
  return new CommandFailedError(`${describeArgv(argv)} on ${where} ${why}${err ? `: ${err.slice(-2000)}` : ''}`, argv, code, stderr);
}

/** Whether an error is the run being interrupted (then nothing should be retried or reported). */
export function isInterruption(err: unknown): boolean {
  return err instanceof InterruptedError;
}
