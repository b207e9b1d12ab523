/**
 * The one-way data stream (README in src/transport): start it, and fall back to plain NBD
 * when the hypervisor cannot run it.
 */
import { UnavailableError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ReadPacing } from '../nbd/channel.js';
import type { SshConnection } from '../ssh/connection.js';
import { DEFAULT_INTERPRETER } from './helper.js';
import { StreamUnavailableError } from './frames.js';
import { RemoteStream, type RemoteStreamOptions } from './remote-stream.js';
import type { RangeReader } from './switching-source.js';

export { RemoteStream, type RemoteStreamOptions, type StreamCarrier } from './remote-stream.js';
export { SwitchingSource, type RangeReader, type SwitchingOptions } from './switching-source.js';
export { DEFAULT_INTERPRETER } from './helper.js';
export { FrameReader, StreamProtocolError, StreamUnavailableError } from './frames.js';

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

export interface DataStreamOptions extends Omit<RemoteStreamOptions, 'log' | 'signal'> {
  /**
   * The stream was asked for (dataChannel: stream): a stream that cannot start is an error
   * instead of a fallback to NBD.
   */
  required?: boolean;
  log: Logger;
  signal?: AbortSignal;
}

/**
 * Hosts (per SSH connection) known to lack an interpreter, and the reason said: each further
 * disk of the run would start ssh and fail the same way. A WeakMap, so the memory goes with the
 * connection (a new connection, e.g. the next run, asks again).
 */
const missingInterpreter = new WeakMap<SshConnection, Map<string, string>>();

/** Why the stream cannot run on `conn`'s host with `interpreter` (default python3), if that is known already. */
export function knownStreamFallback(conn: SshConnection, interpreter = DEFAULT_INTERPRETER): string | undefined {
  return missingInterpreter.get(conn)?.get(interpreter);
}

/**
 * One stream, started at once (its handshake overlaps the caller's work); `use()` waits for it.
 * When the helper cannot run on the host (no python3, ssh or the helper failed before the
 * stream began), `use()` resolves undefined and `fallbackReason` says why: the caller keeps
 * reading through NBD — unless the stream is `required`, then that rejects. Errors that must not
 * be papered over (abort, a host key that is not the pinned one) always reject.
 */
export class DataStream {
  private readonly stream: RemoteStream;
  fallbackReason: string | undefined;

  constructor(
    private readonly conn: SshConnection,
    private readonly options: DataStreamOptions,
  ) {
    this.stream = RemoteStream.start(conn, options);
  }

  get description(): string {
    return this.stream.description;
  }

  async use(expectedSize: number): Promise<RangeReader | undefined> {
    try {
      const size = await this.stream.ready;
      if (size !== expectedSize) throw new UnavailableError(`${this.description}: the export is ${size} bytes through the stream, ${expectedSize} through NBD`);
      return this.stream;
    } catch (err) {
      await this.close();
      if (!(err instanceof StreamUnavailableError)) throw err;
      if (err.reason === 'no-interpreter') {
        const known = missingInterpreter.get(this.conn) ?? new Map<string, string>();
        known.set(this.options.interpreter ?? DEFAULT_INTERPRETER, err.message);
        missingInterpreter.set(this.conn, known);
      }
      if (this.options.required) throw err;
      this.fallbackReason = err.message;
      // No python3 is an expected setup (debug); a helper or ssh that failed to start is worth a warning.
      const say = err.reason === 'no-interpreter' ? this.options.log.debug : this.options.log.warn;
      say.call(this.options.log, 'data stream unavailable, reading through NBD', { socket: this.options.socket, reason: err.reason, error: err.message });
      return undefined;
    }
  }

  close(): Promise<void> {
    return this.stream.close();
  }
}
