/**
 * A one-way data stream from an NBD export on the hypervisor: the helper (helper.ts) runs
 * there, reads the export locally, and sends the ranges vprotect asks for as frames
 * (frames.ts) down ONE SSH channel. Why: NBD request/response through any SSH channel reached
 * less than half of what a one-way `ssh host cat` moves here (each reply waits behind the
 * window of a channel that also carries requests, and the two cores run both ends); a stream
 * moves like `cat`.
 *
 * Carriers, like the forwarded NBD data (ssh/openssh.ts):
 * - the OpenSSH client binary (key-file auth), same trust and hardening: the host key ssh2
 *   verified, pinned in a private known_hosts; `-F none`, BatchMode, no agent, aes128-gcm
 *   first. Its stdout is a loopback TCP socket read with `onread`, straight into the destination
 *   buffers (no per-read garbage, no copy in vprotect);
 * - ssh2 `execStream` otherwise (password or passphrase hosts, no binary), one copy per chunk.
 *
 * Lifetime: started at once (the SSH handshake overlaps whatever the caller does meanwhile);
 * `ready` resolves with the export size when the helper has its NBD connection. `finish()`
 * ends it cleanly (trailer checked); `close()` kills it. The OpenSSH process runs in its own
 * process group (a terminal's Ctrl-C reaches vprotect, which aborts in order) and reads its
 * stdin from vprotect: if vprotect dies, stdin closes, the helper sees EOF and exits, and so
 * does ssh.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, errorMessage, InterruptedError, UnavailableError, VprotectError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { SshConnection } from '../ssh/connection.js';
import { stdoutSocketPair } from '../socket-pair.js';
import { DEFAULT_OPENSSH_BINARY, hardenedSshArgs, hostKeyRefusal, PINNED_HOST_ALIAS, writePinnedKnownHosts } from '../ssh/openssh.js';
import { encodeRequest, FrameReader, REQUEST_BYTES, RequestType, StreamUnavailableError } from './frames.js';
import { helperArgv, helperCommandLine, NO_INTERPRETER, type HelperArgs } from './helper.js';

export type StreamCarrier = 'openssh' | 'ssh2';

export interface RemoteStreamOptions {
  /** The NBD server's unix socket on the hypervisor, and the export name. */
  socket: string;
  exportName: string;
  /** NBD READs the helper keeps in flight on the hypervisor (default 16, qemu's per-client limit). */
  depth?: number;
  /** Interpreter on the hypervisor (default python3). */
  interpreter?: string;
  /** Which carrier: auto = OpenSSH when the connection can use it (conn.dataChannel), else ssh2. */
  carrier?: 'auto' | StreamCarrier;
  opensshBinary?: string;
  /** The helper must have its NBD connection within this (default 20 s). */
  startTimeoutMs?: number;
  log?: Logger;
  signal?: AbortSignal;
}

interface Exit {
  code: number | null;
  signal: string | null;
  stderr: string;
}

/** What carries the helper's stdin and stdout. */
interface Carrier {
  write(data: Buffer): void;
  kill(): void;
  /** Settles when the remote command (and for OpenSSH, ssh) has exited. */
  exited: Promise<Exit>;
  /** Settles when stdout has ended (every byte delivered to the reader). */
  eof: Promise<void>;
  /** Resources to free once exited (the private directory). */
  cleanup(): void;
}

const STDERR_KEEP = 8192;
const DEFAULT_DEPTH = 16;
/**
 * Requests go to the helper in batches of this many rather than one write per event-loop turn:
 * each write wakes ssh, sshd and the helper in turn (a 1 GiB full: ~480 writes before, ~210
 * after). A batch goes out early when the helper holds fewer than this many unanswered requests,
 * so its `depth` reads in flight never run dry.
 */
const REQUEST_BATCH = 32;

export class RemoteStream {
  readonly description: string;
  readonly via: StreamCarrier;
  private readonly reader: FrameReader;
  private carrier: Carrier | undefined;
  private readonly starting: Promise<void>;
  private out: Buffer[] = [];
  private outBytes = 0;
  /** READ requests among `out`. */
  private outReads = 0;
  private flushScheduled = false;
  private closing: Promise<void> | undefined;
  private readonly readyPromise: Promise<number>;
  private exit: Exit | undefined;
  private readonly onAbort = () => {
    this.reader.fail(abortReason(this.options.signal!));
    void this.close();
  };

  private constructor(
    private readonly conn: SshConnection,
    private readonly options: RemoteStreamOptions,
  ) {
    const dc = conn.dataChannel;
    const want = options.carrier ?? 'auto';
    this.via = want === 'auto' ? dc.via : want;
    this.description = `ssh ${conn.target.name} → unix:${options.socket} (stream, ${this.via})`;
    this.reader = new FrameReader(this.description);
    this.reader.onAnswered = () => {
      if (this.out.length > 0 && this.sentUnanswered < REQUEST_BATCH) this.scheduleFlush();
    };
    const args: HelperArgs = {
      socket: options.socket,
      exportName: options.exportName,
      depth: options.depth ?? DEFAULT_DEPTH,
      ...(options.interpreter ? { interpreter: options.interpreter } : {}),
    };
    options.signal?.addEventListener('abort', this.onAbort, { once: true });
    void this.reader.hello.then(() => (this.helloSeen = true), () => {});
    this.starting = (this.via === 'openssh' ? this.startOpenSsh(args) : this.startSsh2(args)).then(
      (carrier) => {
        this.carrier = carrier;
        this.scheduleFlush();
        void carrier.exited.then((e) => (this.exit = e));
        // Frames first, then the exit status that explains an early end: stdout may still hold
        // bytes (the END frame) when the process is reported gone. OpenSSH's stdout is our own
        // socket, which only ssh held: it ends once every byte is read, so wait for that; an ssh2
        // channel whose stdout never ends is given 1 s.
        const eofOrLate = this.via === 'openssh' ? carrier.eof : Promise.race([carrier.eof, carrier.exited.then(() => new Promise<void>((r) => setTimeout(r, 1000)))]);
        void Promise.all([eofOrLate, carrier.exited]).then(([, e]) => {
          if (this.reader.failed) return;
          const why = this.exitError(e);
          // Reasons of their own (no interpreter, host key refused) are the error; anything else explains an early end.
          if (why instanceof StreamUnavailableError || why instanceof AuthError) this.reader.fail(why);
          else this.reader.close(why);
        });
      },
      (err: unknown) => this.reader.fail(this.startError(err)),
    );
    const timeoutMs = options.startTimeoutMs ?? 20_000;
    this.readyPromise = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        const err = new StreamUnavailableError(`${this.description}: the helper did not start within ${timeoutMs} ms`, 'start-failed');
        reject(err);
        this.reader.fail(err);
        void this.close();
      }, timeoutMs);
      this.reader.hello.then(
        (size) => {
          clearTimeout(timer);
          resolve(size);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err as Error);
        },
      );
    });
    this.readyPromise.catch(() => {});
  }

  /** Starts the helper on `conn`'s host; returns at once (see `ready`). */
  static start(conn: SshConnection, options: RemoteStreamOptions): RemoteStream {
    return new RemoteStream(conn, options);
  }

  /** Resolves with the export's size once the helper is connected to it; rejects with StreamUnavailableError when it cannot start. */
  get ready(): Promise<number> {
    return this.readyPromise;
  }

  /** Reads [offset, offset+length); into `into` when given. Requests are answered in the order made. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const p = this.reader.expect(offset, length, into);
    this.queue(RequestType.read, offset, length);
    return p;
  }

  /** No more reads: waits for the helper's trailer and clean exit, then releases everything. */
  async finish(timeoutMs = 10_000): Promise<void> {
    this.reader.expectEnd();
    this.queue(RequestType.end, 0, 0);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
    try {
      if ((await Promise.race([this.reader.ended, late])) === 'late') throw new UnavailableError(`${this.description}: no end of stream within ${timeoutMs} ms`);
      await this.starting;
      const exit = await Promise.race([this.carrier!.exited, late]);
      if (exit !== 'late' && exit.code !== 0) throw new UnavailableError(`${this.description}: the helper ${describeExit(exit)} after the end of the stream`);
    } finally {
      clearTimeout(timer);
      await this.close();
    }
  }

  /** Stops the helper (and ssh) if still running; resolves when they are gone. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.options.signal?.removeEventListener('abort', this.onAbort);
      if (!this.reader.failed) this.reader.fail(new UnavailableError(`${this.description} was closed`));
      await this.starting;
      const c = this.carrier;
      if (!c) return;
      if (!this.exit) c.kill();
      await c.exited;
      c.cleanup();
    })();
    return this.closing;
  }

  /** Requests written to the helper and not answered yet (the reader counts the queued ones too). */
  private get sentUnanswered(): number {
    return this.reader.outstanding - this.outReads;
  }

  private queue(type: number, offset: number, length: number): void {
    this.out.push(encodeRequest(type, offset, length));
    this.outBytes += REQUEST_BYTES;
    if (type === RequestType.read) this.outReads++;
    if (type !== RequestType.read || this.out.length >= REQUEST_BATCH || this.sentUnanswered < REQUEST_BATCH) this.scheduleFlush();
  }

  /** Requests made in one turn of the event loop go out in one write. */
  private scheduleFlush(): void {
    if (this.flushScheduled || !this.carrier || this.outBytes === 0) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (!this.carrier || this.outBytes === 0) return;
      const data = this.out.length === 1 ? this.out[0]! : Buffer.concat(this.out, this.outBytes);
      this.out = [];
      this.outBytes = 0;
      this.carrier.write(data);
    });
  }

  private exitError(exit: Exit): Error {
    const refused = this.via === 'openssh' ? hostKeyRefusal({ where: this.conn.where, hostKey: this.conn.hostKey }, exit.stderr) : undefined;
    if (refused) return refused;
    const missing = exit.code === 127 ? NO_INTERPRETER.exec(exit.stderr) : null;
    if (missing) {
      return new StreamUnavailableError(`${missing[1]} is not installed on ${this.conn.target.name}: the one-way data stream needs it`, 'no-interpreter', {
        hint: `install ${missing[1]} on the hypervisor, or set dataChannel: nbd`,
      });
    }
    // 255 is OpenSSH's own failure (connection, authentication), not the helper's status.
    const who = this.via === 'openssh' && exit.code === 255 ? 'ssh failed (255)' : `the helper ${describeExit(exit)}`;
    const text = `${who}${lastLines(exit.stderr) ? `: ${lastLines(exit.stderr)}` : ''}`;
    return this.reader.outstanding === 0 && !this.helloSeen ? new StreamUnavailableError(`${this.description}: ${text}`, 'start-failed') : new UnavailableError(text);
  }

  private helloSeen = false;

  /**
   * Why the carrier could not be set up (private directory, known_hosts, socket pair, ssh2
   * channel): nothing was read through it, so plain NBD can still carry the data
   * (start-failed). A host key that is not the pinned one and an abort are not papered over.
   */
  private startError(err: unknown): Error {
    if (this.options.signal?.aborted) return abortReason(this.options.signal);
    if (err instanceof StreamUnavailableError || err instanceof AuthError || err instanceof InterruptedError) return err;
    return new StreamUnavailableError(`${this.description}: could not start: ${errorMessage(err)}`, 'start-failed', { cause: err });
  }

  private async startSsh2(args: HelperArgs): Promise<Carrier> {
    const proc = await this.conn.execStream(helperArgv(args), this.options.signal ? { signal: this.options.signal } : {});
    proc.stdout.on('data', (chunk: Buffer) => this.reader.feed(chunk));
    proc.stdin.on('error', () => {});
    const exited = proc.done.then(
      (r) => ({ code: r.code ?? null, signal: r.signal ?? null, stderr: r.stderr }),
      (err: unknown) => ({ code: null, signal: null, stderr: (err as Error).message }),
    );
    const eof = new Promise<void>((resolve) => {
      proc.stdout.once('end', resolve);
      proc.stdout.once('close', resolve);
    });
    return {
      write: (data) => void proc.stdin.write(data),
      kill: () => proc.kill(),
      exited,
      eof,
      cleanup: () => {},
    };
  }

  private async startOpenSsh(args: HelperArgs): Promise<Carrier> {
    const conn = this.conn;
    const t = conn.target;
    if (!t.keyFile) throw new StreamUnavailableError(`${this.description}: OpenSSH needs a key file`, 'start-failed');
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-stream-'));
    let child: ChildProcess | undefined;
    let ours: Socket | undefined;
    try {
      const knownHosts = join(dir, 'known_hosts');
      writePinnedKnownHosts(knownHosts, conn.hostKey);
      const { target, options } = conn.opensshSettings();
      const startTimeoutMs = this.options.startTimeoutMs ?? options.startTimeoutMs;
      const argv = [...hardenedSshArgs(target, knownHosts, { ...options, ...(startTimeoutMs ? { startTimeoutMs } : {}) }), '--', PINNED_HOST_ALIAS, helperCommandLine(args)];
      const pair = await socketPair(this.reader);
      ours = pair.ours;
      const c = spawn(this.options.opensshBinary ?? options.binary ?? DEFAULT_OPENSSH_BINARY, argv, { stdio: ['pipe', pair.theirs, 'pipe'], detached: true });
      child = c;
      // The child has its own copy of the descriptor; ours would keep the stream open after it exits.
      pair.theirs.destroy();
      let stderr = '';
      c.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-STDERR_KEEP)));
      c.stdin!.on('error', () => {});
      const sock = ours;
      const eof = new Promise<void>((resolve) => sock.once('close', () => resolve()));
      const exited = new Promise<Exit>((resolve) => {
        c.once('error', (err) => resolve({ code: null, signal: null, stderr: `cannot run ssh: ${err.message}` }));
        c.once('close', (code, signal) => resolve({ code, signal, stderr }));
      });
      this.options.log?.debug('data stream started', { host: conn.where, socket: args.socket, pid: c.pid, dir });
      return {
        write: (data) => void c.stdin!.write(data),
        kill: () => {
          if (c.exitCode !== null || c.signalCode !== null) return;
          c.kill('SIGTERM');
          const timer = setTimeout(() => c.kill('SIGKILL'), 2000);
          void exited.then(() => clearTimeout(timer));
        },
        exited,
        eof,
        cleanup: () => {
          sock.destroy();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    } catch (err) {
      child?.kill('SIGKILL');
      ours?.destroy();
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }
}

/** ssh's stdout as a socket read into the frame reader's targets (src/transport/socket-pair.ts). */
function socketPair(reader: FrameReader): Promise<{ ours: Socket; theirs: Socket }> {
  const onread = {
    buffer: reader.target,
    callback: (n: number) => {
      reader.advance(n);
      return true;
    },
  };
  return stdoutSocketPair(onread, (ours) => {
    ours.on('error', (err) => reader.close(err));
    // Once the reader failed (abort, close, a bad frame), no more reads: the socket may already
    // hold the buffer of a read that was just rejected (the caller reuses it), and a read
    // landing there would overwrite what the caller put in it since.
    reader.onFailure = () => ours.destroy();
    ours.on('end', () => ours.destroy());
  });
}

function describeExit(e: Exit): string {
  return e.signal ? `was killed by ${e.signal}` : e.code === null ? 'ended without an exit status' : `exited with status ${e.code}`;
}

function lastLines(text: string): string {
  return text.trim().split('\n').filter((l) => l.trim()).slice(-3).join(' / ');
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof VprotectError ? reason : new InterruptedError();
}
