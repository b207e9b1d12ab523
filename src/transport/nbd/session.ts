/**
 * An NBD export opened over one or more connections. When the server advertises
 * CAN_MULTI_CONN (qemu does for read-only exports) reads are spread over several connections,
 * each the least loaded at the time. Block status goes to the connection(s) that negotiated
 * the meta contexts: with several connections and contexts, each context to its own connection.
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
  /** The export's facts; `contexts` names every context the session answers, whichever connection does. */
  readonly info: ExportInfo;

  private constructor(
    private readonly connections: NbdConnection[],
    /** The connections that answer block status, together every context (one each when split). */
    private readonly status: NbdConnection[],
    readonly description: string,
  ) {
    const first = status[0]!.info;
    this.info = status.length === 1 ? first : { ...first, contexts: new Map(status.flatMap((c) => [...c.info.contexts])) };
  }

  static async open(dial: NbdDialer, options: NbdSessionOptions): Promise<NbdSession> {
    const wanted = Math.max(1, Math.floor(options.connections ?? 1));
    const contexts = options.metaContexts ?? [];
    const connect = (metaContexts: readonly string[]) => dial().then((channel) => openNbdConnection(channel, { ...options, metaContexts }));
    const whole = async () => {
      const c = await connect(contexts);
      return new NbdSession([c], [c], c.description);
    };
    if (wanted === 1) return whole();
    // All handshakes at once: over TCP to qemu each one waits on delayed ACKs (~40 ms a step,
    // qemu's server leaves Nagle on), so one after the other doubled the session's start. The
    // contexts are shared out (connection i negotiates every k-th one from i): qemu answers a
    // block status with one chunk per context, each its own write, and over TCP the second chunk
    // waited for the first one's delayed ACK (~40 ms per block status); one context, one chunk.
    const k = Math.max(1, Math.min(wanted, contexts.length));
    const groupOf = (i: number) => i % k;
    const attempts = Array.from({ length: wanted }, (_, i) => connect(contexts.filter((_, j) => j % k === groupOf(i))));
    // Per group, the first connection ready answers block status (a server that takes fewer
    // clients, like qemu-nbd -e 1, answers whichever came first).
    const chosen = await Promise.allSettled(Array.from({ length: k }, (_, g) => Promise.any(attempts.filter((_, i) => groupOf(i) === g))));
    const status = chosen.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const first = status[0];
    if (status.length < k || (k > 1 && !first!.info.canMultiConn)) {
      for (const a of attempts) void a.then((c) => c.destroy(), () => undefined);
      const failed = chosen.find((r) => r.status === 'rejected');
      if (!first) throw failed && failed.reason instanceof AggregateError ? (failed.reason.errors[0] as Error) : (failed?.reason as Error);
      options.log?.debug('NBD contexts cannot be shared out over connections; one connection with all of them', { server: first.description, ...(failed ? { error: errorMessage(failed.reason) } : {}) });
      return whole();
    }
    const others = attempts.map((a) => a.then((c) => (status.includes(c) ? undefined : c)));
    if (!first!.info.canMultiConn) {
      options.log?.debug('nbd server does not allow multi-conn; using one connection', { server: first!.description });
      for (const o of others) void o.then((c) => c?.destroy(), () => undefined);
      return new NbdSession(status, status, first!.description);
    }
    // The rest only carry reads. A server that accepts fewer clients never answers some: wait a while.
    const timeoutMs = options.extraConnectionTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
    const settled = await Promise.all(others.map((o) => Promise.race([o.then((c) => ({ c }), (e: unknown) => ({ e })), late])));
    clearTimeout(timer);
    const connections = [...status];
    settled.forEach((r, i) => {
      if (r === 'late') {
        // Closed whenever it does open; it is not used.
        void others[i]!.then((c) => c?.destroy(), () => undefined);
        options.log?.warn('extra NBD connection failed; continuing with fewer', { server: first!.description, error: `no handshake within ${timeoutMs} ms` });
      } else if ('c' in r) {
        if (r.c) connections.push(r.c);
      } else options.log?.warn('extra NBD connection failed; continuing with fewer', { server: first!.description, error: errorMessage(r.e) });
    });
    return new NbdSession(connections, status, first!.description);
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
    if (this.status.length === 1) return this.status[0]!.blockStatus(offset, length);
    return Promise.all(this.status.map((c) => c.blockStatus(offset, length))).then((parts) => new Map(parts.flatMap((p) => [...p])));
  }

  /** Closes every connection gracefully (outstanding replies first). */
  async close(): Promise<void> {
    await Promise.all(this.connections.map((c) => c.close()));
  }

  destroy(err?: Error): void {
    for (const c of this.connections) c.destroy(err);
  }
}
