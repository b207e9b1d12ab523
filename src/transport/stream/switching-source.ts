/**
 * An NbdSource whose reads move to a faster carrier once it is ready: block status and the
 * first reads go through the NBD session (an ssh2 channel, open in 0.1–0.2 s), and when enough
 * data is asked for to be worth it, the one-way stream (remote-stream.ts) is started; reads
 * made after it is ready go to it.
 *
 * Why switch instead of choosing up front: the stream costs an SSH handshake and a Python start
 * (0.3–1 s here). A full always wants it, and meanwhile the NBD channel reads instead of
 * waiting; a small incremental (a few MiB of 64 KiB extents) never asks for enough to start it,
 * so it costs no second handshake at all.
 *
 * Order is kept: requests are dispatched in the order they are made (FIFO); each carrier
 * answers its own in order and the extent reader waits for each read's promise in turn. While
 * the stream is starting, the NBD channel carries at most `firstBytesWhileStarting`, so that few
 * reads are left behind on the slow carrier once the fast one is ready.
 */
import type { ReadPacing } from '../nbd/channel.js';
import type { BlockStatus, ExportInfo } from '../nbd/client.js';
import type { NbdSource } from '../nbd/session.js';

/** What carries reads besides the NBD session (a RemoteStream). */
export interface RangeReader {
  readonly description: string;
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** No more reads: let the carrier end cleanly (checks its trailer). */
  finish(): Promise<void>;
  /** Stops it (idempotent). */
  close(): Promise<void>;
}

export interface SwitchingOptions {
  /** Start the faster carrier once this many bytes have been asked for (0: at `start()` or the first read). */
  startAfterBytes: number;
  /** Bytes the NBD session may have in flight while the faster carrier starts. */
  firstBytesWhileStarting: number;
  /** What the extent readers use for request size and bytes in flight. */
  pacing: ReadPacing;
}

interface Queued {
  offset: number;
  length: number;
  into: Buffer | undefined;
  resolve(b: Buffer): void;
  reject(e: unknown): void;
}

export class SwitchingSource implements NbdSource {
  private requested = 0;
  private firstInFlight = 0;
  private starting: Promise<void> | undefined;
  /** The faster carrier once ready; undefined while starting, or for good when it could not start. */
  private next: RangeReader | undefined;
  /** Settled: the start succeeded or failed (then reads stay on the session). */
  private settled = false;
  private failure: unknown;
  private readonly queue: Queued[] = [];
  /** Reads each carrier served (for logs and tests). */
  readonly served = { first: 0, next: 0, firstBytes: 0, nextBytes: 0 };

  constructor(
    private readonly first: NbdSource,
    /** Starts the faster carrier; resolves with it, or undefined when it cannot be used here (the caller logs why). */
    private readonly prepare: () => Promise<RangeReader | undefined>,
    private readonly options: SwitchingOptions,
  ) {}

  get info(): ExportInfo {
    return this.first.info;
  }
  get description(): string {
    return this.next ? this.next.description : this.first.description;
  }
  get pacing(): ReadPacing {
    return this.options.pacing;
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.first.blockStatus(offset, length);
  }

  /** Starts the faster carrier now (a full: its handshake overlaps the NBD session's). Idempotent. */
  start(): void {
    this.starting ??= this.prepare().then(
      (reader) => {
        this.next = reader;
        this.settled = true;
        this.pump();
      },
      (err: unknown) => {
        this.failure = err;
        this.settled = true;
        for (const q of this.queue.splice(0)) q.reject(err);
      },
    );
  }

  /** Whether reads went (or go) to the faster carrier. */
  get switched(): boolean {
    return this.next !== undefined;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure as Error);
    this.requested += length;
    if (!this.starting && this.requested >= this.options.startAfterBytes) this.start();
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ offset, length, into, resolve, reject });
      this.pump();
    });
  }

  /** Ends the faster carrier cleanly when it was used (after the last read), else stops it. */
  async finish(): Promise<void> {
    await this.starting?.catch(() => {});
    if (this.next) await this.next.finish();
  }

  /** Stops the faster carrier (if started); waits for a start in progress. */
  async close(): Promise<void> {
    await this.starting?.catch(() => {});
    await this.next?.close();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const q = this.queue[0]!;
      if (this.next) {
        this.queue.shift();
        this.served.next++;
        this.served.nextBytes += q.length;
        this.next.read(q.offset, q.length, q.into).then(q.resolve, q.reject);
        continue;
      }
      const capped = this.starting !== undefined && !this.settled;
      if (capped && this.firstInFlight > 0 && this.firstInFlight + q.length > this.options.firstBytesWhileStarting) return;
      this.queue.shift();
      this.served.first++;
      this.served.firstBytes += q.length;
      this.firstInFlight += q.length;
      this.first.read(q.offset, q.length, q.into).then(
        (b) => {
          this.firstInFlight -= q.length;
          q.resolve(b);
          this.pump();
        },
        (e: unknown) => {
          this.firstInFlight -= q.length;
          q.reject(e);
          this.pump();
        },
      );
    }
  }
}
