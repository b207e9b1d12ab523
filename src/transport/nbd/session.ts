/**
 * An NBD export opened over one or more connections. When the server advertises
 * CAN_MULTI_CONN (qemu does for read-only exports) reads are spread over several connections,
 * each the least loaded at the time; block status always goes to the first connection, the
 * one that negotiated the meta contexts.
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
   * Connections to open when the server allows multi-conn (default 1). Extra connections that
   * fail to open are dropped with a warning: the first one alone is enough to work.
   */
  connections?: number;
  /** Handshake time limit for the extra connections (default 10 s; qemu-nbd -e 1 never answers them). */
  extraConnectionTimeoutMs?: number;
  log?: Logger;
}

export class NbdSession implements NbdSource {
  private constructor(
    private readonly connections: NbdConnection[],
    readonly description: string,
  ) {}

  static async open(dial: NbdDialer, options: NbdSessionOptions): Promise<NbdSession> {
    const first = await openNbdConnection(await dial(), options);
    const connections = [first];
    const wanted = Math.max(1, Math.floor(options.connections ?? 1));
    if (wanted > 1 && !first.info.canMultiConn) {
      options.log?.debug('nbd server does not allow multi-conn; using one connection', { server: first.description });
    } else if (wanted > 1) {
      const extra = await Promise.allSettled(
        Array.from({ length: wanted - 1 }, async () =>
          openNbdConnection(await dial(), {
            ...options,
            metaContexts: [], // only the first connection answers block status
            timeoutMs: options.extraConnectionTimeoutMs ?? 10_000,
          }),
        ),
      );
      for (const r of extra) {
        if (r.status === 'fulfilled') connections.push(r.value);
        else options.log?.warn('extra NBD connection failed; continuing with fewer', { server: first.description, error: errorMessage(r.reason) });
      }
    }
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
