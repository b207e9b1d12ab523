/**
 * Positional writes gathered into large buffers: strategies hand over 32 KiB–4 MiB pieces, and
 * one syscall per piece costs more CPU than the hashing (DESIGN.md §3). Two buffers alternate so
 * that the next one fills while the previous is written by the thread pool. Non-contiguous
 * writes (the next data after a hole) flush first, which keeps holes holes. Buffers are
 * page-aligned and full ones are cut at page boundaries, so appends go around the page cache.
 */
import type { FileHandle } from 'node:fs/promises';
import { pageAlignedBuffer, PAGE_BYTES } from '../util/buffer-pool.js';
import type { DataFile } from './direct-io.js';

export const DEFAULT_WRITE_BUFFER = 8 << 20;

/**
 * Written bytes after which a datasync is started in the background. The file is fsynced at the
 * end anyway (FORMAT §9); syncing as it goes makes the disk write back while this thread hashes
 * instead of all at once at the end (restore of 512 MiB: the final fsync went from ~350 ms to
 * the last piece's worth).
 */
const SYNC_EVERY = 64 << 20;

/** Starts a datasync in the background once SYNC_EVERY bytes were written since the last one. */
export class BackgroundSync {
  private unsynced = 0;
  private syncing: Promise<void> | undefined;
  private error: unknown;

  constructor(private readonly fh: FileHandle) {}

  /** `bytes` were handed to a write that completes with `written`. */
  wrote(bytes: number, written: Promise<void>): void {
    this.unsynced += bytes;
    if (this.unsynced < SYNC_EVERY || this.syncing) return;
    this.unsynced = 0;
    this.syncing = written
      .then(() => this.fh.datasync())
      .catch((err: unknown) => void (this.error ??= err))
      .finally(() => (this.syncing = undefined));
  }

  /** Waits for a datasync under way; throws the failure of any earlier one. */
  async wait(): Promise<void> {
    await this.syncing;
    if (this.error) throw this.error;
  }
}

export class CoalescingWriter {
  private readonly buffers: [Buffer, Buffer];
  private current = 0;
  private fill = 0;
  private start = 0;
  private inflight: Promise<void> | undefined;
  private readonly sync: BackgroundSync;
  /** Highest offset written so far (end of the last byte + 1). */
  end = 0;

  constructor(
    private readonly file: DataFile,
    bufferSize = DEFAULT_WRITE_BUFFER,
  ) {
    const size = Math.max(PAGE_BYTES, Math.ceil(bufferSize / PAGE_BYTES) * PAGE_BYTES);
    const buffer = () => pageAlignedBuffer(size, false) ?? Buffer.allocUnsafeSlow(size);
    this.buffers = [buffer(), buffer()];
    this.sync = new BackgroundSync(file.handle);
  }

  /** Copies `data` (the caller may reuse it once this returns) for writing at `offset`. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    if (this.fill > 0 && offset !== this.start + this.fill) await this.flush();
    for (let at = 0; at < data.length; ) {
      const buf = this.buffers[this.current]!;
      if (this.fill === 0) this.start = offset + at;
      const n = Math.min(data.length - at, buf.length - this.fill);
      data.copy(buf, this.fill, at, at + n);
      this.fill += n;
      at += n;
      if (this.fill === buf.length) await this.flush(true);
    }
    this.end = Math.max(this.end, offset + data.length);
  }

  /**
   * Starts writing the gathered buffer; returns once the previous write has finished. With
   * `more` (contiguous data follows), the bytes after the buffer's last page boundary in the
   * file are carried to the next buffer instead, so every following write starts on a page
   * boundary and can go around the page cache (direct-io.ts).
   */
  async flush(more = false): Promise<void> {
    if (this.fill === 0) return;
    await this.settle();
    const buf = this.buffers[this.current]!;
    const end = this.start + this.fill;
    const cut = more ? end - (end % PAGE_BYTES) : end;
    const length = cut > this.start ? cut - this.start : this.fill;
    this.inflight = this.file.write(buf.subarray(0, length), this.start);
    this.sync.wrote(length, this.inflight);
    this.current ^= 1;
    const tail = this.fill - length;
    if (tail > 0) buf.copy(this.buffers[this.current]!, 0, length, this.fill);
    this.start += length;
    this.fill = tail;
  }

  /**
   * Flushes and waits until everything handed over is in the file (not necessarily durable:
   * the caller fsyncs). A background datasync's failure is thrown here.
   */
  async close(): Promise<void> {
    // Whole pages first, around the page cache; only the last partial page goes through it
    // (a plain flush sent the whole last buffer, up to 8 MiB, through the page cache).
    await this.flush(true);
    await this.flush();
    await this.settle();
    await this.sync.wait();
  }

  private async settle(): Promise<void> {
    const p = this.inflight;
    this.inflight = undefined;
    if (p) await p;
  }
}

/**
 * Reads exactly `length` bytes at `position` (fewer only at end of file), into `into` when
 * given (it must hold `length` bytes; the result is a view of it), else into a new buffer.
 */
export async function readAt(fh: FileHandle, position: number, length: number, into?: Buffer): Promise<Buffer> {
  if (into && into.length < length) throw new RangeError(`readAt: ${length} bytes do not fit a ${into.length}-byte buffer`);
  const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) return buf.subarray(0, done);
    done += bytesRead;
  }
  return buf;
}
