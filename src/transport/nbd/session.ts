/**
 * An NBD export opened over one or more connections. When the server advertises
 * CAN_MULTI_CONN (qemu does for read-only exports) reads are spread over several connections,
 * each the least loaded at the time; block status always goes to the first connection (the
 * first whose handshake completed; every connection negotiates the same meta contexts).
 */
import { UnavailableError, errorMessage } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ByteChannel, ReadPacing } from './channel.js';
import { openNbdConnection, type BlockStatus, type ExportInfo, type NbdConnection, type NbdConnectionOptions } from './client.js';

/** Opens one more byte channel to the same export (a socket, an SSH forwarding channel …). */
export type NbdDialer = () => Promise<ByteChannel>;

/** What the extent readers need: the export's facts, reads and block status. */
export interface NbdSource {
  readonly info: ExportInfo;
  /** Where the export is, for error messages. */
  readonly description: string;
  /** What the readers default to when the carrier has limits (OpenSSH): total over all connections. */
  readonly pacing?: ReadPacing | undefined;
  /** Reads into `into` when given (a view of it is returned), else into a new buffer. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  blockStatus(offset: number, length: number): Promise<BlockStatus>;
}

export interface NbdSessionOptions extends NbdConnectionOptions {
  /**
   * Connections to open when the server allows multi-conn (default 1), all at once. Extra
   * connections that fail to open are dropped with a warning: one alone is enough to work.
   */
  connections?: number;
  /** How long the extra connections may take after the first is ready (default 10 s; qemu-nbd -e 1 never answers them). */
  extraConnectionTimeoutMs?: number;
  log?: Logger;
}

export class NbdSession implements NbdSource {
  private constructor(
    private readonly connections: NbdConnection[],
    readonly description: string,
  ) {}

  static async open(dial: NbdDialer, options: NbdSessionOptions): Promise<NbdSession> {
    const wanted = Math.max(1, Math.floor(options.connections ?? 1));
    const connect = () => dial().then((channel) => openNbdConnection(channel, options));
    if (wanted === 1) {
      const only = await connect();
      return new NbdSession([only], only.description);
    }
    // All handshakes at once: over TCP to qemu each one waits on delayed ACKs (~40 ms a step,
    // qemu's server leaves Nagle on), so one after the other doubled the session's start. Every
    // connection negotiates the same contexts; the first one ready answers block status.
    const attempts = Array.from({ length: wanted }, connect);
    let first: NbdConnection;
    try {
      first = await Promise.any(attempts);
    } catch (err) {
      throw err instanceof AggregateError ? (err.errors[0] as Error) : err;
    }
    const others = attempts.map((a) => a.then((c) => (c === first ? undefined : c)));
    if (!first.info.canMultiConn) {
      options.log?.debug('nbd server does not allow multi-conn; using one connection', { server: first.description });
      for (const o of others) void o.then((c) => c?.destroy(), () => undefined);
      return new NbdSession([first], first.description);
    }
    // A server that accepts fewer clients (qemu-nbd -e 1) never answers the rest: wait a while.
    const timeoutMs = options.extraConnectionTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
    const settled = await Promise.all(others.map((o) => Promise.race([o.then((c) => ({ c }), (e: unknown) => ({ e })), late])));
    clearTimeout(timer);
    const connections = [first];
    settled.forEach((r, i) => {
      if (r === 'late') {
        // Closed whenever it does open; it is not used.
        void others[i]!.then((c) => c?.destroy(), () => undefined);
        options.log?.warn('extra NBD connection failed; continuing with fewer', { server: first.description, error: `no handshake within ${timeoutMs} ms` });
      } else if ('c' in r) {
        if (r.c) connections.push(r.c);
      } else options.log?.warn('extra NBD connection failed; continuing with fewer', { server: first.description, error: errorMessage(r.e) });
    });
    return new NbdSession(connections, first.description);
  }

  get info(): ExportInfo {
    return this.connections[0]!.info;
  }

  /** The first connection's pacing, with bytes in flight scaled by the number of connections. */
  get pacing(): ReadPacing | undefined {
    const p = this.connections[0]!.pacing;
    return p ? { ...p, maxBytesInFlight: p.maxBytesInFlight * this.connections.length } : undefined;
  }

  /** How many connections carry reads. */
  get connectionCount(): number {
    return this.connections.length;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    let best: NbdConnection | undefined;
    for (const c of this.connections) {
      if (c.failure) continue;
      if (!best || c.outstandingBytes < best.outstandingBytes) best = c;
    }
    if (!best) return Promise.reject(this.connections[0]!.failure ?? new UnavailableError(`no usable NBD connection to ${this.description}`));
    return best.read(offset, length, into);
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.connections[0]!.blockStatus(offset, length);
  }

  /** Closes every connection gracefully (outstanding replies first). */
  async close(): Promise<void> {
    await Promise.all(this.connections.map((c) => c.close()));
  }

  destroy(err?: Error): void {
    for (const c of this.connections) c.destroy(err);
  }
}
