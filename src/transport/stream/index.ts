/**
 * The one-way data stream (README in src/transport): start it, and fall back to plain NBD
 * when the hypervisor cannot run it.
 */
import { UnavailableError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ReadPacing } from '../nbd/channel.js';
import type { SshConnection } from '../ssh/connection.js';
import { RemoteStream, StreamUnavailableError, type RemoteStreamOptions } from './remote-stream.js';
import type { RangeReader } from './switching-source.js';

export { RemoteStream, StreamUnavailableError, type RemoteStreamOptions, type StreamCarrier } from './remote-stream.js';
export { SwitchingSource, type RangeReader, type SwitchingOptions } from './switching-source.js';
export { FrameReader, StreamProtocolError } from './frames.js';

/**
 * Reads through the stream: 512 KiB requests (qemu serves many medium reads in parallel
 * fastest, readers.ts), 32 MiB asked ahead — enough to keep the helper's 16 NBD reads, the
 * SSH window and the socket buffers full.
 */
export const STREAM_PACING: ReadPacing = { maxRequestBytes: 512 * 1024, maxBytesInFlight: 32 * 1024 * 1024 };

/**
 * An incremental switches to the stream once this much data is asked for: below it the
 * stream's start (a second SSH handshake, 0.3–1 s here) costs more than it saves.
 */
export const STREAM_AFTER_BYTES = 32 * 1024 * 1024;

export interface DataStreamsOptions extends Omit<RemoteStreamOptions, 'log' | 'signal'> {
  /** Parallel streams (SSH connections), each carrying every n-th read (default 1). */
  count?: number;
  log: Logger;
  signal?: AbortSignal;
}

/**
 * One or more streams started at once (their handshakes overlap the caller's work); `use()`
 * waits for them. When the helper cannot run on the host (no python3, ssh refused the key),
 * `use()` resolves undefined and `fallbackReason` says why: the caller keeps reading through
 * NBD. Errors that must not be papered over (abort, a host key that is not the pinned one)
 * reject.
 */
export class DataStreams {
  private readonly streams: RemoteStream[];
  fallbackReason: string | undefined;

  constructor(
    conn: SshConnection,
    private readonly options: DataStreamsOptions,
  ) {
    const count = Math.max(1, options.count ?? 1);
    this.streams = Array.from({ length: count }, () => RemoteStream.start(conn, options));
  }

  get description(): string {
    return this.streams[0]!.description;
  }

  async use(expectedSize: number): Promise<RangeReader | undefined> {
    try {
      const sizes = await Promise.all(this.streams.map((s) => s.ready));
      for (const size of sizes) {
        if (size !== expectedSize) throw new UnavailableError(`${this.description}: the export is ${size} bytes through the stream, ${expectedSize} through NBD`);
      }
      return this.streams.length === 1 ? this.streams[0]! : new StripedReader(this.streams);
    } catch (err) {
      await this.close();
      if (!(err instanceof StreamUnavailableError)) throw err;
      this.fallbackReason = err.message;
      // No python3 is an expected setup (debug); a helper or ssh that failed to start is worth a warning.
      const say = err.reason === 'no-interpreter' ? this.options.log.debug : this.options.log.warn;
      say.call(this.options.log, 'data stream unavailable, reading through NBD', { socket: this.options.socket, reason: err.reason, error: err.message });
      return undefined;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.streams.map((s) => s.close()));
  }
}

/**
 * Several streams as one reader: reads go to each in turn, in runs of `stripe` reads (so each
 * helper still reads sequential ranges); each stream answers its own in order.
 */
export class StripedReader implements RangeReader {
  private n = 0;
  constructor(
    private readonly streams: RangeReader[],
    private readonly stripe = 8,
  ) {}

  get description(): string {
    return `${this.streams.length} × ${this.streams[0]!.description}`;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const s = this.streams[Math.floor(this.n++ / this.stripe) % this.streams.length]!;
    return s.read(offset, length, into);
  }

  async finish(): Promise<void> {
    const r = await Promise.allSettled(this.streams.map((s) => s.finish()));
    const failed = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (failed) throw failed.reason;
  }

  async close(): Promise<void> {
    await Promise.all(this.streams.map((s) => s.close()));
  }
}
