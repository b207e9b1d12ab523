/**
 * A byte pipe to an NBD server, whatever carries it: a local unix socket, a TCP connection
 * ("netcat mode"), or an SSH channel (streamlocal / direct-tcpip forwarding). The NBD client
 * only needs "give me bytes as they come" and "send these bytes".
 *
 * Why not just a Duplex: Node's default 'data' path allocates a fresh buffer per read and
 * reaches ~0.5 GB/s here; a socket opened with `onread` and one reused multi-MiB buffer reaches
 * ~1.4 GB/s (DESIGN.md §3). Chunks handed to the sink may therefore be views of a reused buffer
 * that is overwritten after `onData` returns — the sink must consume or copy them at once.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { UnavailableError } from '../../errors.js';

export interface ChannelSink {
  /** Bytes arrived. `chunk` may be a view of a reused buffer: consume or copy before returning. */
  onData(chunk: Buffer): void;
  /** The channel ended (err undefined: the peer closed it) or failed. Called once. */
  onClose(err?: Error): void;
}

/**
 * Read pacing a carrier asks for. Through OpenSSH's forwarding, requesting far more than one
 * channel window (2 MiB) only queues replies: measured on the lab (qemu-nbd, 16–512 MiB reads,
 * load 6–15), 1 MiB in flight read 1.5–4× faster than the 32–64 MiB a local socket wants. ssh2
 * channels carry no pacing: there the same comparison went either way from run to run.
 */
export interface ReadPacing {
  maxBytesInFlight: number;
  maxRequestBytes: number;
}

/** Pacing of the OpenSSH data channel: 256 KiB requests, 1 MiB in flight per connection. */
export const OPENSSH_PACING: ReadPacing = { maxBytesInFlight: 1024 * 1024, maxRequestBytes: 256 * 1024 };

export interface ByteChannel {
  /** Where it goes, for error messages: "unix:/run/x.sock", "ssh hv1 → unix:/tmp/b.sock". */
  readonly description: string;
  /** How the carrier wants to be read, when it has limits of its own (OpenSSH); readers default to it. */
  readonly pacing?: ReadPacing;
  /** Starts delivering bytes to `sink` (bytes that arrived earlier are delivered first). */
  attach(sink: ChannelSink): void;
  write(data: Buffer): void;
  /** Half-closes after queued writes are flushed. */
  end(): void;
  destroy(): void;
}

/** Size of the reused receive buffer of socket channels. */
export const RECEIVE_BUFFER_SIZE = 4 * 1024 * 1024;

/**
 * Buffers what arrives before a sink is attached and makes sure onClose fires exactly once —
 * the plumbing both channel kinds share.
 */
class SinkRelay {
  private sink: ChannelSink | undefined;
  private early: Buffer[] = [];
  private closed: { err: Error | undefined } | undefined;

  attach(sink: ChannelSink): void {
    if (this.sink) throw new Error('channel already attached');
    this.sink = sink;
    const early = this.early;
    this.early = [];
    for (const chunk of early) sink.onData(chunk);
    if (this.closed) sink.onClose(this.closed.err);
  }

  data(chunk: Buffer): void {
    if (this.closed) return;
    if (this.sink) this.sink.onData(chunk);
    else this.early.push(Buffer.from(chunk)); // copy: the buffer may be reused
  }

  close(err?: Error): void {
    if (this.closed) return;
    this.closed = { err };
    this.sink?.onClose(err);
  }
}

/** Wraps any Duplex (an ssh2 channel, a test stream); its chunks are fresh buffers. */
export function channelFromStream(stream: Duplex, description: string, pacing?: ReadPacing): ByteChannel {
  const relay = new SinkRelay();
  stream.on('data', (chunk: Buffer) => relay.data(chunk));
  stream.on('end', () => relay.close());
  stream.on('close', () => relay.close());
  stream.on('error', (err: Error) => relay.close(err));
  return {
    description,
    ...(pacing ? { pacing } : {}),
    attach: (sink) => relay.attach(sink),
    write: (data) => {
      if (!stream.destroyed && stream.writable) stream.write(data);
    },
    end: () => {
      if (!stream.destroyed && stream.writable) stream.end();
    },
    destroy: () => {
      stream.destroy();
    },
  };
}

export type SocketTarget = { path: string } | { host: string; port: number };

export interface SocketChannelOptions {
  /** Give up connecting after this long (default 15 s). */
  connectTimeoutMs?: number;
  signal?: AbortSignal;
}

export function describeTarget(target: SocketTarget): string {
  return 'path' in target ? `unix:${target.path}` : `tcp:${target.host}:${target.port}`;
}

/**
 * Connects a unix or TCP socket whose reads land in one reused large buffer (`onread`), with
 * Nagle off: NBD requests are small and many, and waiting to batch them costs a round trip.
 */
export function connectSocketChannel(target: SocketTarget, options: SocketChannelOptions = {}): Promise<ByteChannel> {
  const description = describeTarget(target);
  const relay = new SinkRelay();
  const receive = Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE);
  return new Promise<ByteChannel>((resolve, reject) => {
    const signal = options.signal;
    if (signal?.aborted) {
      reject(new UnavailableError(`connection to ${description} aborted`));
      return;
    }
    const socket = net.connect({
      ...target,
      onread: {
        buffer: receive,
        callback: (nread: number, buf: Uint8Array) => {
          relay.data(Buffer.from(buf.buffer, buf.byteOffset, nread));
          return true;
        },
      },
    });
    const timeoutMs = options.connectTimeoutMs ?? 15_000;
    const timer = setTimeout(() => fail(new UnavailableError(`cannot connect to ${description}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => fail(new UnavailableError(`connection to ${description} aborted`));
    signal?.addEventListener('abort', onAbort, { once: true });
    let connected = false;
    function fail(err: Error) {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    }
    socket.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.setNoDelay(true);
      resolve({
        description,
        attach: (sink) => relay.attach(sink),
        write: (data) => {
          if (!socket.destroyed && socket.writable) socket.write(data);
        },
        end: () => {
          if (!socket.destroyed) socket.end();
        },
        destroy: () => {
          socket.destroy();
        },
      });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected) {
        fail(new UnavailableError(`cannot connect to ${description}: ${socketErrorText(err)}`, { cause: err }));
        return;
      }
      relay.close(new UnavailableError(`connection to ${description} failed: ${socketErrorText(err)}`, { cause: err }));
    });
    socket.on('end', () => relay.close());
    socket.on('close', () => relay.close());
  });
}

function socketErrorText(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused (is the NBD server running?)';
    case 'ENOENT':
      return 'no such socket (is the NBD server running?)';
    case 'EACCES':
      return 'permission denied';
    case 'ETIMEDOUT':
      return 'timed out';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    case 'ECONNRESET':
      return 'connection reset by the server';
    case 'EPIPE':
      return 'connection closed by the server';
    default:
      return err.message;
  }
}
