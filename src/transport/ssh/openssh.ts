/**
 * The bulk-data channel through the OpenSSH client binary. ssh2 (JavaScript) carries every
 * exec and control message, but NBD through its forwarded channels measured 27 MiB/s where
 * `ssh -c aes128-gcm@openssh.com host cat` reached 76 MiB/s on the same lab: its channel
 * window (2 MiB) and packet size (32 KiB) are module constants, and every packet costs JS
 * work on an event loop that the NBD client needs too. OpenSSH does that work in C, in its
 * own process.
 *
 * One `ssh -L <private dir>/fwd.sock:<remote socket>` process per forwarded remote socket;
 * each NBD connection is a local unix-socket connection to it (the fast `onread` path of
 * channel.ts), so multi-conn works through one process. Why -L and not `-W`: OpenSSH 9.2
 * (Debian 12) accepts `-W /path` and then silently forwards nothing — unix sockets in -W came
 * with 9.3.
 *
 * Same security as the ssh2 path:
 * - the host key is pinned to exactly the key ssh2 verified against the inventory's hostKey
 *   (fingerprint or known_hosts), written to a private known_hosts with
 *   StrictHostKeyChecking=yes under a fixed HostKeyAlias (no name or IP lookups);
 * - the same key file, BatchMode, no agent, no agent/X11 forwarding, no ControlMaster,
 *   nothing read from ~/.ssh/config (-F none) or the global known_hosts;
 * - the local socket lives in a mkdtemp (0700) directory and is created 0600
 *   (StreamLocalBindMask), so no other local user can connect to it.
 * Password-authenticated and passphrase-protected keys stay on ssh2 (BatchMode cannot ask).
 *
 * Lifetime: the process starts with the first connection and stops (SIGTERM, then SIGKILL)
 * when the last one closes, on abort, or when the owning SshConnection closes; its directory
 * goes with it. It runs `cat` remotely on its stdin, which is a pipe from this process: if
 * vprotect dies without cleaning up, the pipe closes, the remote `cat` ends, and ssh exits as
 * soon as its forwarded connections are gone — no orphaned tunnel. It is started in its own
 * process group, so a terminal's Ctrl-C reaches vprotect (which aborts and cleans up in
 * order) rather than killing the data channel under a running read.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { AuthError, ConfigError, InterruptedError, UnavailableError, VprotectError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { connectSocketChannel, OPENSSH_PACING, type ByteChannel, type ChannelSink } from '../nbd/channel.js';
import { keyBlobType, sha256Fingerprint } from './host-keys.js';

export const DEFAULT_OPENSSH_BINARY = '/usr/bin/ssh';

/** Which implementation carries forwarded NBD data: OpenSSH when it can, or ssh2 always. */
export type DataChannelMode = 'auto' | 'openssh' | 'ssh2';

/** What the OpenSSH dialer needs to reach the same host as the ssh2 connection, the same way. */
export interface OpenSshTarget {
  /** For messages: "root@127.0.0.1:2222 (hv1)". */
  where: string;
  /** The inventory name, for channel descriptions ("ssh hv1 → unix:… (openssh)"). */
  name: string;
  host: string;
  port: number;
  username: string;
  keyFile: string;
  /** The host key blob ssh2 accepted after checking it against the inventory. */
  hostKey: Buffer;
  /** Preferred ciphers, first wins (OpenSSH keeps its defaults after them). */
  ciphers: readonly string[];
}

export interface OpenSshOptions {
  binary?: string;
  /** Start (TCP, KEX, auth, listener) must finish within this (default 20 s). */
  startTimeoutMs?: number;
  keepaliveIntervalMs?: number;
  keepaliveCountMax?: number;
  log?: Logger;
  signal?: AbortSignal;
}

/** Why the OpenSSH path cannot serve this target, or undefined when it can. */
export function opensshUnusableReason(t: { keyFile?: string | undefined; privateKey?: Buffer | undefined; passphrase?: string | undefined }, binary = DEFAULT_OPENSSH_BINARY): string | undefined {
  if (!t.keyFile || !t.privateKey) return 'the hypervisor authenticates with a password (OpenSSH in batch mode needs a key file)';
  if (t.passphrase !== undefined) return 'the key has a passphrase (OpenSSH in batch mode cannot ask for it)';
  try {
    accessSync(binary, fsConstants.X_OK);
  } catch {
    return `${binary} is not installed or not executable (openssh-client)`;
  }
  return undefined;
}

/** The setup failed in a way that ssh2 may not share (key refused by OpenSSH, binary broken). */
export class OpenSshSetupError extends UnavailableError {}

/** Host key algorithm names OpenSSH negotiates for a key blob type. */
function hostKeyAlgorithms(type: string): string {
  return type === 'ssh-rsa' ? 'rsa-sha2-512,rsa-sha2-256' : type;
}

const HOST_ALIAS = 'vprotect-pinned-host';

const READY = 'vprotect-forward-ready';
const STDERR_KEEP = 8192;

/**
 * Writes the private known_hosts that pins exactly `hostKey` (the key ssh2 verified) under
 * PINNED_HOST_ALIAS, mode 0600.
 */
export function writePinnedKnownHosts(path: string, hostKey: Buffer): void {
  writeFileSync(path, `${HOST_ALIAS} ${keyBlobType(hostKey)} ${hostKey.toString('base64')}\n`, { mode: 0o600 });
}

/**
 * The OpenSSH client options every vprotect ssh process uses (the forwarding here, the data
 * stream of src/transport/stream): nothing from ~/.ssh/config, the pinned host key only, the
 * inventory's key file only, batch mode, no agent or forwarding, aes128-gcm first. Ends before
 * `--` and the destination (PINNED_HOST_ALIAS).
 */
export function hardenedSshArgs(t: OpenSshTarget, knownHostsFile: string, options: Pick<OpenSshOptions, 'startTimeoutMs' | 'keepaliveIntervalMs' | 'keepaliveCountMax'> = {}): string[] {
  const interval = Math.max(1, Math.round((options.keepaliveIntervalMs ?? 15_000) / 1000));
  const o = (k: string, v: string | number) => ['-o', `${k}=${v}`];
  return [
    '-F', 'none',
    '-T',
    ...o('HostName', escapeTokens(t.host)),
    ...o('Port', t.port),
    ...o('User', t.username),
    ...o('HostKeyAlias', HOST_ALIAS),
    ...o('UserKnownHostsFile', escapeTokens(knownHostsFile)),
    ...o('GlobalKnownHostsFile', '/dev/null'),
    ...o('StrictHostKeyChecking', 'yes'),
    ...o('CheckHostIP', 'no'),
    ...o('UpdateHostKeys', 'no'),
    ...o('HostKeyAlgorithms', hostKeyAlgorithms(keyBlobType(t.hostKey))),
    ...o('VerifyHostKeyDNS', 'no'),
    ...o('BatchMode', 'yes'),
    ...o('IdentityFile', escapeTokens(resolve(t.keyFile))),
    ...o('IdentitiesOnly', 'yes'),
    ...o('IdentityAgent', 'none'),
    ...o('PreferredAuthentications', 'publickey'),
    ...o('PasswordAuthentication', 'no'),
    ...o('KbdInteractiveAuthentication', 'no'),
    ...o('ForwardAgent', 'no'),
    ...o('ForwardX11', 'no'),
    ...o('ControlMaster', 'no'),
    ...o('ControlPath', 'none'),
    ...o('PermitLocalCommand', 'no'),
    ...o('Compression', 'no'),
    ...o('Ciphers', `^${t.ciphers.join(',')}`),
    // The key exchange ssh2 (the control connection) uses, first: OpenSSH 9's default
    // sntrup761x25519 hybrid costs 0.3–0.4 s more per start on a loaded hypervisor.
    ...o('KexAlgorithms', '^curve25519-sha256,curve25519-sha256@libssh.org'),
    ...o('ConnectTimeout', Math.ceil((options.startTimeoutMs ?? 20_000) / 1000)),
    ...o('ServerAliveInterval', interval),
    ...o('ServerAliveCountMax', options.keepaliveCountMax ?? 3),
    // INFO, not ERROR: a channel the far side refuses ("open failed") is logged at INFO.
    ...o('LogLevel', 'INFO'),
  ];
}

/** The destination name every vprotect ssh process connects to (see hardenedSshArgs). */
export const PINNED_HOST_ALIAS = HOST_ALIAS;

/** The AuthError for an ssh whose stderr says it refused the pinned host key, else undefined. */
export function hostKeyRefusal(t: Pick<OpenSshTarget, 'where' | 'hostKey'>, stderr: string): AuthError | undefined {
  if (!/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No \S+ host key is known/i.test(stderr)) return undefined;
  return new AuthError(
    `${t.where}: OpenSSH refused the host key of the data channel: the host did not present the key pinned for it (${sha256Fingerprint(t.hostKey)}, ${keyBlobType(t.hostKey)})`,
    { hint: 'the host key changed between the control and the data connection, or someone is intercepting the data connection; check the host key out of band', data: { reason: 'host-key-mismatch' } },
  );
}

/** One running ssh process and what belongs to it. */
interface Launch {
  child: ChildProcess;
  dir: string;
  local: string;
  exited: Promise<void>;
  stderrTail: string;
  /** "open failed" lines seen on ssh's stderr (one per channel the far side refused). */
  openFailures: string[];
  waiters: Set<() => void>;
  stopping: boolean;
  /** When the local socket appeared (0 before). */
  readyAt: number;
}

/**
 * One OpenSSH process forwarding a local unix socket (in a private directory) to `remotePath`
 * on the host, started by the first dial and stopped when the last channel through it closes.
 */
export class OpenSshForward {
  private starting: Promise<Launch> | undefined;
  private current: Launch | undefined;
  private users = 0;
  private readonly stops = new Set<Promise<void>>();

  constructor(
    private readonly target: OpenSshTarget,
    readonly remotePath: string,
    private readonly options: OpenSshOptions = {},
  ) {
    if (/[\s:]/.test(remotePath)) {
      throw new ConfigError(`remote socket path ${JSON.stringify(remotePath)} contains a space or colon, which ssh -L cannot forward`);
    }
  }

  get description(): string {
    return `ssh ${this.target.name} → unix:${this.remotePath} (openssh)`;
  }

  /** The private directory of the running process (local socket, known_hosts). */
  get directory(): string | undefined {
    return this.current?.dir;
  }

  /** Opens one more connection to the remote socket through the (started on demand) process. */
  async dial(): Promise<ByteChannel> {
    const signal = this.options.signal;
    if (signal?.aborted) throw abortReason(signal);
    this.users++;
    try {
      const launch = await this.start();
      const failuresBefore = launch.openFailures.length;
      const channel = await connectLocal(launch, signal);
      return this.wrap(launch, channel, failuresBefore);
    } catch (err) {
      this.release();
      throw err;
    }
  }

  /** Stops the process (if any) and removes its directory; resolves once both are gone. */
  async stop(): Promise<void> {
    const launch = this.current;
    this.current = undefined;
    this.starting = undefined;
    if (launch) {
      const p = stopLaunch(launch);
      this.stops.add(p);
      await p;
      this.stops.delete(p);
    }
    await Promise.all([...this.stops]);
  }

  private start(): Promise<Launch> {
    this.starting ??= this.launch().catch((err: unknown) => {
      this.starting = undefined;
      throw err;
    });
    return this.starting;
  }

  private async launch(): Promise<Launch> {
    const t = this.target;
    const binary = this.options.binary ?? DEFAULT_OPENSSH_BINARY;
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-ssh-'));
    const local = join(dir, 'fwd.sock');
    if (Buffer.byteLength(local) > 100 || /[\s:]/.test(local)) {
      rmSync(dir, { recursive: true, force: true });
      throw new OpenSshSetupError(`the temporary directory ${tmpdir()} is too long a path for a unix socket, or has a space or colon (${local})`, { hint: 'set TMPDIR to a short path such as /tmp' });
    }
    const knownHosts = join(dir, 'known_hosts');
    writePinnedKnownHosts(knownHosts, t.hostKey);
    const argv = [
      ...hardenedSshArgs(t, knownHosts, this.options),
      ...['-o', 'ExitOnForwardFailure=yes', '-o', 'StreamLocalBindMask=0177', '-o', 'StreamLocalBindUnlink=yes'],
      '-L', `${local}:${this.remotePath}`,
      '--', HOST_ALIAS,
      // Listeners are bound before the session opens, so this line means the socket is there.
      `echo ${READY}; exec cat >/dev/null`,
    ];
    const child = spawn(binary, argv, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const launch: Launch = {
      child,
      dir,
      local,
      exited: new Promise<void>((resolve) => child.once('close', () => resolve())),
      stderrTail: '',
      openFailures: [],
      waiters: new Set(),
      stopping: false,
      readyAt: 0,
    };
    this.current = launch;
    child.stdin!.on('error', () => {});
    child.stderr!.on('data', (d: Buffer) => {
      const text = d.toString('utf8');
      launch.stderrTail = (launch.stderrTail + text).slice(-STDERR_KEEP);
      for (const line of text.split('\n')) if (/open failed/i.test(line)) launch.openFailures.push(line.trim());
      for (const w of launch.waiters) w();
    });
    void launch.exited.then(() => rmSync(dir, { recursive: true, force: true }));
    const signal = this.options.signal;
    const started = Date.now();
    const timeoutMs = this.options.startTimeoutMs ?? 20_000;
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => fail(new UnavailableError(`${this.description}: OpenSSH did not set up the forwarding within ${timeoutMs} ms`)), timeoutMs);
        const ready = () => {
          cleanup();
          resolve();
        };
        const onData = (d: Buffer) => {
          out += d.toString('utf8');
          if (out.includes(READY)) ready();
        };
        // ssh binds the -L socket right after authentication, before the session (and the
        // remote shell running the echo) starts: its file appearing is the earlier signal.
        const poll = setInterval(() => existsSync(local) && ready(), 10);
        // stderr may still be arriving when the process is gone: the close event waits for it.
        const onClose = (code: number | null, sig: string | null) => fail(this.exitError(launch, code, sig));
        const onError = (err: Error) => fail(new OpenSshSetupError(`${this.description}: cannot run ${binary}: ${err.message}`, { cause: err }));
        const onAbort = () => fail(abortReason(signal!));
        const cleanup = () => {
          clearTimeout(timer);
          clearInterval(poll);
          child.stdout!.removeListener('data', onData);
          child.removeListener('close', onClose);
          child.removeListener('error', onError);
          signal?.removeEventListener('abort', onAbort);
        };
        const fail = (err: Error) => {
          cleanup();
          reject(err);
        };
        child.stdout!.on('data', onData);
        child.once('close', onClose);
        child.once('error', onError);
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
      });
      child.stdout!.resume(); // nothing more is expected; never let the pipe fill up
      if (!existsSync(local)) throw new OpenSshSetupError(`${this.description}: OpenSSH reported ready but ${local} does not exist`);
      launch.readyAt = Date.now();
    } catch (err) {
      if (this.current === launch) this.current = undefined;
      await stopLaunch(launch);
      throw err;
    }
    child.once('close', (code: number | null, sig: string | null) => {
      if (!launch.stopping) {
        this.options.log?.warn('openssh data channel exited', { host: t.where, remote: this.remotePath, code, signal: sig, stderr: launch.stderrTail.trim().slice(-500) });
      }
      if (this.current === launch) {
        this.current = undefined;
        this.starting = undefined;
      }
    });
    const onAbort = () => void this.stop();
    signal?.addEventListener('abort', onAbort, { once: true });
    void launch.exited.then(() => signal?.removeEventListener('abort', onAbort));
    this.options.log?.debug('openssh data channel ready', { host: t.where, remote: this.remotePath, ms: Date.now() - started, pid: child.pid });
    return launch;
  }

  private exitError(launch: Launch, code: number | null, sig: string | null): Error {
    const tail = launch.stderrTail;
    const why = lastLines(tail);
    const refused = hostKeyRefusal(this.target, tail);
    if (refused) return refused;
    const status = sig ? `was killed by ${sig}` : `exited with status ${code}`;
    return new OpenSshSetupError(`${this.description}: ssh ${status} before the forwarding was ready${why ? `: ${why}` : ''}`);
  }

  /**
   * The local socket connection, plus: a channel the far side refused (ssh accepts locally,
   * then closes) fails with ssh's reason instead of a bare EOF, and the last channel to close
   * stops the process.
   */
  private wrap(launch: Launch, channel: ByteChannel, failuresBefore: number): ByteChannel {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.release();
    };
    return {
      description: this.description,
      pacing: OPENSSH_PACING,
      attach: (sink: ChannelSink) => {
        let received = false;
        channel.attach({
          onData: (chunk) => {
            received = true;
            sink.onData(chunk);
          },
          onClose: (err) => {
            if (err) {
              // The local socket only fails when ssh does: say so, with ssh's own words.
              void exitOf(launch, 500).then((exit) => {
                release();
                const why = exit ? `${exit}${lastLines(launch.stderrTail) ? `: ${lastLines(launch.stderrTail)}` : ''}` : err.message;
                sink.onClose(new UnavailableError(`connection ${this.description} failed: ${why}`, { cause: err }));
              });
              return;
            }
            if (received) {
              release();
              sink.onClose();
              return;
            }
            void openFailureSince(launch, failuresBefore, 500).then((failure) => {
              release();
              sink.onClose(
                failure
                  ? new UnavailableError(`cannot open unix socket ${this.remotePath} on ${this.target.where}: the host refused the forwarded connection (ssh: ${failure})`, {
                      hint: 'is the NBD server (qemu-nbd or the backup job) still running on the hypervisor?',
                    })
                  : undefined,
              );
            });
          },
        });
      },
      write: (data) => channel.write(data),
      end: () => channel.end(),
      destroy: () => {
        channel.destroy();
        release();
      },
    };
  }

  private release(): void {
    this.users = Math.max(0, this.users - 1);
    if (this.users === 0) void this.stop();
  }
}

/**
 * Connects to ssh's local socket. Its file exists from bind(), a moment before listen(): a
 * refusal right after it appeared is retried briefly.
 */
async function connectLocal(launch: Launch, signal: AbortSignal | undefined): Promise<ByteChannel> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await connectSocketChannel({ path: launch.local }, signal ? { signal } : {});
    } catch (err) {
      const fresh = Date.now() - launch.readyAt < 1000;
      if (!fresh || attempt >= 10 || !/connection refused/.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** OpenSSH expands %-tokens in HostName, IdentityFile and UserKnownHostsFile: keep ours literal. */
function escapeTokens(text: string): string {
  return text.replace(/%/g, '%%');
}

/** SIGTERM, SIGKILL after 2 s; resolves when the process is gone and its directory removed. */
async function stopLaunch(launch: Launch): Promise<void> {
  launch.stopping = true;
  const { child } = launch;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await launch.exited;
    clearTimeout(timer);
  }
  rmSync(launch.dir, { recursive: true, force: true });
}

/** "ssh was killed by SIGKILL" once the process is gone (waiting up to `ms`), else undefined. */
async function exitOf(launch: Launch, ms: number): Promise<string | undefined> {
  const { child } = launch;
  if (child.exitCode === null && child.signalCode === null) {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([launch.exited, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }
  if (child.signalCode) return `ssh was killed by ${child.signalCode}`;
  if (child.exitCode !== null) return `ssh exited with status ${child.exitCode}`;
  return undefined;
}

function lastLines(text: string): string {
  return text.trim().split('\n').filter((l) => l.trim()).slice(-3).join(' / ');
}

/** ssh's explanation of a refused channel that arrived after `mark`, waiting up to `ms` for it. */
async function openFailureSince(launch: Launch, mark: number, ms: number): Promise<string | undefined> {
  if (launch.openFailures.length <= mark && launch.child.exitCode === null) {
    await new Promise<void>((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        launch.waiters.delete(check);
        resolve();
      };
      const check = () => {
        if (launch.openFailures.length > mark) finish();
      };
      const timer = setTimeout(finish, ms);
      launch.waiters.add(check);
      void launch.exited.then(finish);
    });
  }
  return launch.openFailures[mark];
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof VprotectError ? reason : new InterruptedError();
}
