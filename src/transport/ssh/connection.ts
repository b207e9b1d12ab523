/**
 * One persistent SSH connection to a hypervisor (ssh2): every exec, stream and forwarded
 * socket of a run shares it, because a new connection costs ~0.4 s here (KEX + auth).
 *
 * Choices, each measured on this machine kind (DESIGN.md §3):
 * - cipher aes128-gcm@openssh.com first: half the CPU of chacha20-poly1305 on both ends;
 * - Nagle off on the TCP socket: pipelined small NBD requests went 3× faster;
 * - keepalives, so a dead link fails the run in seconds instead of hanging it;
 * - host keys always checked (host-keys.ts); argv always quoted (quote.ts).
 */
import net from 'node:net';
import type { Duplex, Readable, Writable } from 'node:stream';
import ssh2 from 'ssh2';
import type { AnyAuthMethod, ClientChannel, ConnectConfig } from 'ssh2';
import { AuthError, ConfigError, InterruptedError, UnavailableError, VprotectError, errorMessage } from '../../errors.js';
import type { Logger } from '../../log.js';
import { CommandFailedError } from '../command.js';
import { channelFromStream, type ByteChannel } from '../nbd/channel.js';
import type { NbdDialer } from '../nbd/session.js';
import { describeArgv, shellJoin } from '../quote.js';
import { Semaphore } from '../semaphore.js';
import { hostKeyError, type HostKeyPolicy, type HostKeyVerdict } from './host-keys.js';
import { OpenSshForward, OpenSshSetupError, opensshUnusableReason, type DataChannelMode, type OpenSshOptions, type OpenSshTarget } from './openssh.js';

const { Client, utils } = ssh2;

/** Everything needed to reach one host, secrets already resolved (see pool.ts). */
export interface SshTarget {
  /** For messages: the hypervisor's inventory name. */
  name: string;
  host: string;
  port: number;
  username: string;
  privateKey?: Buffer;
  /** Where the key came from, for messages. */
  keyFile?: string;
  passphrase?: string;
  password?: string;
  hostKey: HostKeyPolicy;
}

export interface SshConnectOptions {
  /** TCP connect plus SSH handshake and auth must finish within this (default 20 s). */
  connectTimeoutMs?: number;
  /** Keepalive probe interval (default 15 s); the link is declared dead after keepaliveCountMax unanswered. */
  keepaliveIntervalMs?: number;
  keepaliveCountMax?: number;
  /** Concurrent exec sessions on the connection (default 8; sshd's MaxSessions default is 10). */
  maxSessions?: number;
  /** Preferred ciphers, first wins (default aes128-gcm@openssh.com, then ssh2's defaults). */
  ciphers?: string[];
  /**
   * What carries forwarded unix-socket NBD data (nbdDialer): 'auto' (default) uses the
   * OpenSSH client binary when the host authenticates by an unencrypted key file, else ssh2;
   * 'openssh' requires it; 'ssh2' never uses it. See openssh.ts for why.
   */
  dataChannel?: DataChannelMode;
  /** The OpenSSH client for the data channel (default /usr/bin/ssh). */
  opensshBinary?: string;
  log?: Logger;
  signal?: AbortSignal;
}

export interface ExecOptions {
  /** Kill the remote command after this long (best effort: signal, then channel close). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Written to the command's stdin, which is then closed. Default: stdin closed at once. */
  stdin?: string | Buffer;
  /** Refuse (and stop) when stdout grows beyond this; default 64 MiB. Use execStream for bulk data. */
  maxOutputBytes?: number;
}

export interface ExecResult {
  /** Exit status; undefined when the command was killed by a signal. */
  code: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

export interface RemoteProcess {
  /** The command's stdout as it arrives (ssh2 hands ~32 KiB chunks; see largeChunks). */
  stdout: Readable;
  /** The command's stdin; end it when done writing. */
  stdin: Writable;
  /** Settles when the command exits: {code, signal, stderr}; rejects if the connection is lost. */
  done: Promise<Omit<ExecResult, 'stdout'>>;
  /** Stops the command (signal + channel close). */
  kill(): void;
  /** Hands every later piece of the command's stderr to `listener` as it arrives (persistent interactive processes frame their replies by it). */
  onStderr(listener: (text: string) => void): void;
}

const PREFERRED_CIPHER = 'aes128-gcm@openssh.com';
const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;
const STDERR_KEEP = 64 * 1024;

/**
 * The error of a command on `host` that did not exit 0 (shared by every runner of argv). Without
 * exit status or signal the channel (or the persistent shell) was lost: whether it ran is unknown.
 */
export function commandFailedError(argv: readonly string[], host: string, r: Pick<ExecResult, 'code' | 'signal' | 'stderr'>): CommandFailedError {
  const why = r.code !== undefined ? `failed with exit status ${r.code}` : r.signal ? `was killed by ${r.signal}` : 'was lost without an exit status (whether it ran is unknown)';
  const err = r.stderr.trim();
  return new CommandFailedError(`${describeArgv(argv)} on ${host} ${why}${err ? `: ${err.slice(-2000)}` : ''}`, argv, r.code, r.stderr);
}

export class SshConnection {
  private closed = false;
  private lost: Error | undefined;
  private readonly sessions: Semaphore;
  /** OpenSSH data channels started through this connection, stopped with it. */
  private readonly forwards = new Set<OpenSshForward>();
  /** Why forwarded NBD data goes through ssh2 rather than OpenSSH, once decided. */
  private opensshUnusable: string | undefined;

  private constructor(
    private readonly client: InstanceType<typeof Client>,
    readonly target: SshTarget,
    /** Algorithms agreed in the handshake (cipher, kex, host key type). */
    readonly negotiated: { cipher: string; kex: string; serverHostKey: string },
    /** The host key blob that passed the inventory's check (pinned for OpenSSH data channels). */
    readonly hostKey: Buffer,
    private readonly options: SshConnectOptions,
  ) {
    this.sessions = new Semaphore(options.maxSessions ?? 8);
    this.opensshUnusable = opensshUnusableReason(target, options.opensshBinary);
    client.on('error', (err: Error & { level?: string }) => {
      this.lost ??= new UnavailableError(
        err.level === 'client-timeout'
          ? `SSH connection to ${this.where} lost: no answer to keepalives`
          : `SSH connection to ${this.where} failed: ${err.message}`,
        { cause: err },
      );
      options.log?.warn('ssh connection error', { host: target.name, error: err.message });
    });
    client.on('close', () => {
      this.lost ??= new UnavailableError(this.closed ? `SSH connection to ${this.where} was closed` : `SSH connection to ${this.where} was closed by the server`);
    });
  }

  /** "root@127.0.0.1:2222 (hv1)". */
  get where(): string {
    return describeTarget(this.target);
  }

  /** False once the connection failed or was closed; the pool then opens a new one. */
  get alive(): boolean {
    return !this.lost;
  }

  static async connect(target: SshTarget, options: SshConnectOptions = {}): Promise<SshConnection> {
    const where = describeTarget(target);
    const timeoutMs = options.connectTimeoutMs ?? 20_000;
    const started = Date.now();
    const privateKey = target.privateKey ? checkKey(target, where) : undefined;
    if (!privateKey && target.password === undefined) {
      throw new ConfigError(`${where}: no SSH credentials (set keyFile or password for the hypervisor)`);
    }
    const sock = await connectSocket(target, where, timeoutMs, options.signal);
    const client = new Client();
    // ssh2 may emit late errors after a failed handshake; without a listener they would crash the process.
    client.on('error', () => {});
    let refused: Exclude<HostKeyVerdict, { ok: true }> | undefined;
    let acceptedHostKey: Buffer | undefined;
    const authTried: string[] = [];
    const methods: AnyAuthMethod[] = [];
    if (privateKey) methods.push({ type: 'publickey', username: target.username, key: privateKey, ...(target.passphrase ? { passphrase: target.passphrase } : {}) });
    if (target.password !== undefined) methods.push({ type: 'password', username: target.username, password: target.password });
    let next = 0;
    const ciphers = options.ciphers ?? [PREFERRED_CIPHER];
    const config: ConnectConfig = {
      sock,
      username: target.username,
      readyTimeout: Math.max(1000, timeoutMs - (Date.now() - started)),
      keepaliveInterval: options.keepaliveIntervalMs ?? 15_000,
      keepaliveCountMax: options.keepaliveCountMax ?? 3,
      algorithms: {
        // remove + prepend: moves the preferred ciphers to the front of ssh2's default list.
        cipher: { remove: ciphers, prepend: ciphers } as unknown as NonNullable<ConnectConfig['algorithms']>['cipher'],
        ...(target.hostKey.algorithms ? { serverHostKey: target.hostKey.algorithms as NonNullable<NonNullable<ConnectConfig['algorithms']>['serverHostKey']> } : {}),
      },
      hostVerifier: (key: Buffer) => {
        const verdict = target.hostKey.check(key);
        if (!verdict.ok) refused = verdict;
        else acceptedHostKey = Buffer.from(key);
        return verdict.ok;
      },
      authHandler: (_left, _partial, callback) => {
        const method = methods[next++];
        if (!method) return callback(false as unknown as AnyAuthMethod);
        authTried.push(method.type === 'publickey' && target.keyFile ? `publickey (${target.keyFile})` : method.type);
        return callback(method);
      },
    };
    let negotiated = { cipher: '?', kex: '?', serverHostKey: '?' };
    client.on('handshake', (n: { kex: string; serverHostKey: string; cs: { cipher: string } }) => {
      negotiated = { cipher: n.cs.cipher, kex: n.kex, serverHostKey: n.serverHostKey };
    });
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        client.end();
        sock.destroy();
        reject(abortReason(options.signal!));
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (err?: Error) => {
        options.signal?.removeEventListener('abort', onAbort);
        client.removeListener('ready', onReady);
        client.removeListener('error', onError);
        client.removeListener('close', onClose);
        if (err) {
          client.end();
          sock.destroy();
          reject(err);
        } else resolve();
      };
      const onReady = () => done();
      const onError = (err: Error & { level?: string }) => {
        if (refused) return done(hostKeyError(refused));
        if (err.level === 'client-authentication') {
          return done(
            new AuthError(`${where}: authentication as ${target.username} refused (tried ${authTried.join(', ') || 'nothing'})`, {
              hint: 'check the user, the key file (and that its public key is in the host\'s authorized_keys) or the password',
            }),
          );
        }
        if (err.level === 'client-timeout') return done(new UnavailableError(`${where}: SSH handshake did not finish within ${timeoutMs} ms`));
        return done(new UnavailableError(`${where}: SSH handshake failed: ${err.message}`, { cause: err }));
      };
      const onClose = () => done(refused ? hostKeyError(refused) : new UnavailableError(`${where}: the server closed the connection during the SSH handshake`));
      client.once('ready', onReady);
      client.on('error', onError);
      client.once('close', onClose);
      try {
        client.connect(config);
      } catch (err) {
        done(new ConfigError(`${where}: ${errorMessage(err)}`));
      }
    });
    options.log?.debug('ssh connected', { host: target.name, ms: Date.now() - started, ...negotiated });
    if (!acceptedHostKey) {
      client.end();
      throw new UnavailableError(`${where}: the SSH handshake finished without a checked host key`);
    }
    const conn = new SshConnection(client, target, negotiated, acceptedHostKey, options);
    if (options.dataChannel === 'openssh' && conn.opensshUnusable) {
      await conn.close();
      throw new ConfigError(`${where}: the OpenSSH data channel was required but cannot be used: ${conn.opensshUnusable}`);
    }
    return conn;
  }

  /**
   * Runs argv on the host and collects its output. Each argument is POSIX-quoted, so nothing
   * in it reaches the remote shell as syntax. Resolves with any exit status; see `run`.
   */
  async exec(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const release = await this.sessions.acquire(options.signal);
    try {
      const command = await this.startCommand(argv);
      return await collect(command, argv, this, options);
    } finally {
      release();
    }
  }

  /** Like exec, but a non-zero exit status is an error carrying the command's stderr. */
  async run(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.exec(argv, options);
    if (r.code !== 0) throw commandFailedError(argv, this.target.name, r);
    return r;
  }

  /**
   * Starts argv with stdout as a stream (bulk data: `cat disk`, `rbd export-diff … -`).
   * Backpressure is SSH's window: a slow reader stalls the remote writer; memory stays bounded.
   */
  async execStream(argv: readonly string[], options: Pick<ExecOptions, 'signal'> = {}): Promise<RemoteProcess> {
    const release = await this.sessions.acquire(options.signal);
    let command: RunningCommand;
    try {
      command = await this.startCommand(argv);
    } catch (err) {
      release();
      throw err;
    }
    const { channel } = command;
    const onAbort = () => command.kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const done = new Promise<Omit<ExecResult, 'stdout'>>((resolve, reject) => {
      channel.on('close', () => {
        release();
        options.signal?.removeEventListener('abort', onAbort);
        if (options.signal?.aborted) return reject(abortReason(options.signal));
        if (!command.exited && this.lost) return reject(this.lost);
        resolve({ code: command.code, signal: command.signal, stderr: command.stderr() });
      });
    });
    done.catch(() => {});
    return { stdout: channel, stdin: channel, done, kill: () => command.kill(), onStderr: (listener) => command.stderrListeners.push(listener) };
  }

  /** A duplex stream to a unix socket on the host (OpenSSH streamlocal forwarding). */
  forwardUnixSocket(remotePath: string): Promise<Duplex> {
    return this.channelOp(`open unix socket ${remotePath}`, (cb) => this.client.openssh_forwardOutStreamLocal(remotePath, cb));
  }

  /** A duplex stream to host:port as seen from the SSH server (direct-tcpip). */
  forwardTcp(host: string, port: number): Promise<Duplex> {
    return this.channelOp(`connect to ${host}:${port}`, (cb) => this.client.forwardOut('127.0.0.1', 0, host, port, cb));
  }

  /**
   * An NBD dialer through this connection: each call opens one more forwarded channel. A unix
   * socket goes through one OpenSSH process per dialer when the connection allows it (see
   * dataChannel; ssh decrypts in its own process, ~30% less CPU here), else through an ssh2 channel handed straight
   * to the NBD client; TCP always goes through ssh2. `options.dataChannel` overrides the
   * connection's choice for this dialer: 'ssh2' saves OpenSSH's start (0.25–0.8 s, a second SSH
   * handshake) where little data moves, e.g. a small incremental.
   */
  nbdDialer(remote: { path: string } | { host: string; port: number }, options: { dataChannel?: DataChannelMode } = {}): NbdDialer {
    if (!('path' in remote)) {
      return async () => channelFromStream(await this.forwardTcp(remote.host, remote.port), `ssh ${this.target.name} → tcp:${remote.host}:${remote.port}`);
    }
    const viaSsh2 = async () => channelFromStream(await this.forwardUnixSocket(remote.path), `ssh ${this.target.name} → unix:${remote.path}`);
    let forward: OpenSshForward | undefined;
    const mode = options.dataChannel ?? this.options.dataChannel ?? 'auto';
    return async (): Promise<ByteChannel> => {
      if (this.lost) throw this.lost;
      // ssh -L cannot express a path with a space or colon; ssh2 can.
      if (mode === 'ssh2' || (mode === 'auto' && /[\s:]/.test(remote.path))) return viaSsh2();
      if (this.opensshUnusable) {
        if (mode === 'openssh') throw new ConfigError(`${this.where}: the OpenSSH data channel was required but cannot be used: ${this.opensshUnusable}`);
        return viaSsh2();
      }
      forward ??= this.newForward(remote.path);
      try {
        return await forward.dial();
      } catch (err) {
        // Only a setup problem OpenSSH has and ssh2 may not (key refused by OpenSSH, broken
        // binary) falls back; a refused host key, an abort or a missing socket do not.
        if (!(err instanceof OpenSshSetupError) || mode === 'openssh') throw err;
        this.opensshUnusable = err.message;
        this.options.log?.warn('OpenSSH data channel unavailable, using ssh2', { host: this.target.name, error: err.message });
        return viaSsh2();
      }
    };
  }

  /** Which implementation nbdDialer uses for unix sockets now, and why not OpenSSH if not. */
  get dataChannel(): { via: 'openssh' } | { via: 'ssh2'; reason: string } {
    if (this.options.dataChannel === 'ssh2') return { via: 'ssh2', reason: 'ssh2 was asked for (dataChannel: ssh2)' };
    return this.opensshUnusable ? { via: 'ssh2', reason: this.opensshUnusable } : { via: 'openssh' };
  }

  /**
   * What an OpenSSH client process of this connection runs with: the target with the host key
   * ssh2 verified (pinned), and the inventory's binary, start timeout and keepalives. Used by the
   * `-L` data channel and the one-way data stream (src/transport/stream), so both stay alike.
   */
  opensshSettings(): { target: OpenSshTarget; options: Omit<OpenSshOptions, 'log' | 'signal'> } {
    const t = this.target;
    if (!t.keyFile) throw new UnavailableError(`${this.where}: OpenSSH needs a key file`);
    return {
      target: { where: this.where, name: t.name, host: t.host, port: t.port, username: t.username, keyFile: t.keyFile, hostKey: this.hostKey, ciphers: this.options.ciphers ?? [PREFERRED_CIPHER] },
      options: {
        ...(this.options.opensshBinary ? { binary: this.options.opensshBinary } : {}),
        ...(this.options.connectTimeoutMs ? { startTimeoutMs: this.options.connectTimeoutMs } : {}),
        ...(this.options.keepaliveIntervalMs ? { keepaliveIntervalMs: this.options.keepaliveIntervalMs } : {}),
        ...(this.options.keepaliveCountMax ? { keepaliveCountMax: this.options.keepaliveCountMax } : {}),
      },
    };
  }

  private newForward(remotePath: string): OpenSshForward {
    const { target, options } = this.opensshSettings();
    const forward = new OpenSshForward(target, remotePath, {
      ...options,
      ...(this.options.log ? { log: this.options.log } : {}),
      ...(this.options.signal ? { signal: this.options.signal } : {}),
    });
    this.forwards.add(forward);
    return forward;
  }

  /** Closes the connection (running commands and forwarded channels end with it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.forwards].map((f) => f.stop()));
    this.forwards.clear();
    return new Promise((resolve) => {
      if (this.lost) {
        this.client.end();
        resolve();
        return;
      }
      const timer = setTimeout(() => {
        this.client.destroy();
        resolve();
      }, 2000);
      this.client.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.client.end();
    });
  }

  /**
   * Starts argv through a tiny `sh` wrapper that reports its pid on stderr and then execs the
   * command (same pid). sshd ignores SSH "signal" requests for root sessions (OpenSSH 9.2 here:
   * "session signalling requires privilege separation") and closing the channel does not stop
   * a command that reads no stdin, so a timeout or abort kills that pid (and its process group)
   * over a second channel.
   */
  private async startCommand(argv: readonly string[]): Promise<RunningCommand> {
    const line = shellJoin(['sh', '-c', PID_WRAPPER, ...argv]);
    const channel = await this.channelOp<ClientChannel>(`run ${describeArgv(argv, 80)}`, (cb) => this.client.exec(line, cb));
    return new RunningCommand(channel, (pid) => this.killRemote(pid));
  }

  /** Best effort: the command may have ended already, the connection may be gone. */
  private killRemote(pid: number): void {
    if (this.lost) return;
    // `kill -KILL -PID`, not `kill -KILL -- -PID`: dash (Debian's /bin/sh) refuses `--` ("Illegal number").
    const script = `kill -KILL -${pid} 2>/dev/null; kill -KILL ${pid} 2>/dev/null; true`;
    this.client.exec(shellJoin(['sh', '-c', script]), (err, ch) => {
      if (err) return;
      ch.on('error', () => {});
      ch.resume();
      ch.stderr.resume();
      ch.end();
    });
  }

  private channelOp<T>(what: string, start: (cb: (err: Error | undefined, stream: T) => void) => void): Promise<T> {
    if (this.lost) return Promise.reject(this.lost);
    return new Promise<T>((resolve, reject) => {
      try {
        start((err, stream) => {
          if (err) {
            reject(this.lost ?? new UnavailableError(`cannot ${what} on ${this.where}: ${err.message}`, { cause: err }));
          } else resolve(stream);
        });
      } catch (err) {
        reject(this.lost ?? new UnavailableError(`cannot ${what} on ${this.where}: ${errorMessage(err)}`, { cause: err }));
      }
    });
  }

  /** @internal for collect(): why the connection ended, if it did. */
  lostReason(): Error | undefined {
    return this.lost;
  }
}

function describeTarget(t: SshTarget): string {
  return `${t.username}@${t.host}:${t.port} (${t.name})`;
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof VprotectError ? reason : new InterruptedError();
}

/** Parses the key up front, so a wrong passphrase is a clear config error, not an auth failure. */
function checkKey(target: SshTarget, where: string): Buffer {
  const parsed = utils.parseKey(target.privateKey!, target.passphrase);
  if (parsed instanceof Error) {
    const encrypted = /encrypted|passphrase/i.test(parsed.message);
    throw new ConfigError(
      `${where}: cannot use the private key ${target.keyFile ?? ''}: ${parsed.message}`.replace('  ', ' '),
      [],
      encrypted ? { hint: 'the key is encrypted: set keyPassphrase for the hypervisor' } : {},
    );
  }
  return target.privateKey!;
}

/** TCP connect with our own timeout, Nagle off and TCP keepalive on, then handed to ssh2. */
function connectSocket(target: SshTarget, where: string, timeoutMs: number, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const sock = net.connect({ host: target.host, port: target.port });
    const fail = (err: Error) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new UnavailableError(`${where}: no answer within ${timeoutMs} ms (host down or port filtered?)`)), timeoutMs);
    const onAbort = () => fail(abortReason(signal!));
    signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      const text =
        err.code === 'ECONNREFUSED'
          ? 'connection refused (is sshd running on that port?)'
          : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN'
            ? 'host name does not resolve'
            : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH'
              ? 'host unreachable'
              : err.code === 'ETIMEDOUT'
                ? 'connection timed out'
                : err.message;
      fail(new UnavailableError(`${where}: ${text}`, { cause: err }));
    });
    sock.once('connect', () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.removeAllListeners('error');
      sock.setNoDelay(true);
      sock.setKeepAlive(true, 30_000);
      resolve(sock);
    });
  });
}

/** `sh -c PID_WRAPPER argv…`: prints "vprotect-pid N" on stderr, then becomes argv. */
const PID_WRAPPER = 'echo "vprotect-pid $$" >&2; exec "$0" "$@"';
const PID_LINE = /^vprotect-pid (\d+)\n/;

/** A started remote command: exit status, stderr (without the wrapper's pid line), kill. */
class RunningCommand {
  code: number | undefined;
  signal: string | undefined;
  exited = false;
  private pid: number | undefined;
  private head = '';
  private headDone = false;
  private tail = '';
  private killRequested = false;
  readonly stderrListeners: ((text: string) => void)[] = [];

  constructor(
    readonly channel: ClientChannel,
    private readonly killPid: (pid: number) => void,
  ) {
    channel.stderr.on('data', (d: Buffer) => this.onStderr(d.toString('utf8')));
    channel.on('exit', (c: number | null, s?: string) => {
      this.exited = true;
      this.code = c ?? undefined;
      this.signal = s ?? undefined;
    });
  }

  stderr(): string {
    return this.tail;
  }

  /** Kills the remote process (now, or as soon as its pid is known) and closes the channel. */
  kill(): void {
    this.killRequested = true;
    // Never a pid ≤ 1: `kill -1` would hit every process of the user.
    if (this.pid !== undefined && this.pid > 1) this.killPid(this.pid);
    this.channel.close();
  }

  private onStderr(text: string): void {
    if (!this.headDone) {
      this.head += text;
      const m = PID_LINE.exec(this.head);
      if (!m && this.head.length < 40 && !this.head.includes('\n')) return; // the line is not complete yet
      this.headDone = true;
      if (m) {
        this.pid = Number(m[1]);
        text = this.head.slice(m[0].length);
        if (this.killRequested) this.kill();
      } else text = this.head; // no wrapper line (should not happen): keep everything
      this.head = '';
    }
    this.tail = (this.tail + text).slice(-STDERR_KEEP);
    for (const listener of this.stderrListeners) listener(text);
  }
}

/** Collects a command's output with limits, timeout and abort. */
function collect(command: RunningCommand, argv: readonly string[], conn: SshConnection, options: ExecOptions): Promise<ExecResult> {
  const { channel } = command;
  const max = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
  const out: Buffer[] = [];
  let outBytes = 0;
  const cmd = describeArgv(argv);
  return new Promise<ExecResult>((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | undefined, result?: ExecResult) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(result!);
    };
    // Stopping does not wait for the channel to close: a dead link must not hold the caller.
    const stop = (err: Error) => {
      command.kill();
      finish(err);
    };
    const timer = options.timeoutMs
      ? setTimeout(() => stop(new CommandFailedError(`${cmd} on ${conn.target.name} did not finish within ${options.timeoutMs} ms and was stopped`, argv, undefined, command.stderr())), options.timeoutMs)
      : undefined;
    const onAbort = () => stop(abortReason(options.signal!));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    channel.on('data', (d: Buffer) => {
      outBytes += d.length;
      if (outBytes > max) return stop(new CommandFailedError(`${cmd} on ${conn.target.name} wrote more than ${max} bytes to stdout and was stopped (use execStream)`, argv, undefined, command.stderr()));
      out.push(d);
    });
    channel.on('close', () => {
      const lost = conn.lostReason();
      if (!command.exited && lost) return finish(new UnavailableError(`${cmd} on ${conn.target.name}: ${lost.message}`, { cause: lost }));
      finish(undefined, { code: command.code, signal: command.signal, stdout: Buffer.concat(out).toString('utf8'), stderr: command.stderr() });
    });
    channel.on('error', (err: Error) => finish(new UnavailableError(`${cmd} on ${conn.target.name}: ${err.message}`, { cause: err })));
    if (options.stdin !== undefined) channel.end(options.stdin);
    else channel.end();
  });
}

/**
 * Re-chunks a stream of small buffers (SSH's ~32 KiB packets) into buffers of at least
 * `size` bytes (the last may be smaller): one copy, then few large writes downstream.
 */
export async function* largeChunks(source: AsyncIterable<Buffer>, size = 1024 * 1024): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of source) {
    parts.push(chunk);
    bytes += chunk.length;
    if (bytes >= size) {
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes);
      parts = [];
      bytes = 0;
    }
  }
  if (bytes > 0) yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes);
}
