/**
 * Positional writes gathered into large buffers: strategies hand over 32 KiB–4 MiB pieces, and
 * one syscall per piece costs more CPU than the hashing (DESIGN.md §3). Two buffers alternate so
 * that the next one fills while the previous is written by the thread pool. Non-contiguous
 * writes (the next data after a hole) flush first, which keeps holes holes.
 */
import type { FileHandle } from 'node:fs/promises';

export const DEFAULT_WRITE_BUFFER = 8 << 20;

export class CoalescingWriter {
  private readonly buffers: [Buffer, Buffer];
  private current = 0;
  private fill = 0;
  private start = 0;
  private inflight: Promise<void> | undefined;
  /** Highest offset written so far (end of the last byte + 1). */
  end = 0;

  constructor(
    private readonly fh: FileHandle,
    bufferSize = DEFAULT_WRITE_BUFFER,
  ) {
    this.buffers = [Buffer.allocUnsafe(bufferSize), Buffer.allocUnsafe(bufferSize)];
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const buf = this.buffers[this.current]!;
    if (this.fill > 0 && (offset !== this.start + this.fill || this.fill + data.length > buf.length)) await this.flush();
    if (data.length >= buf.length) {
      // Too big to gather: write it directly, and wait, because the caller may reuse `data`.
      await this.settle();
      await writeAll(this.fh, data, offset);
    } else {
      if (this.fill === 0) this.start = offset;
      data.copy(this.buffers[this.current]!, this.fill);
      this.fill += data.length;
    }
    this.end = Math.max(this.end, offset + data.length);
  }

  /** Starts writing the gathered buffer; returns once the previous write has finished. */
  async flush(): Promise<void> {
    if (this.fill === 0) return;
    await this.settle();
    const buf = this.buffers[this.current]!.subarray(0, this.fill);
    this.inflight = writeAll(this.fh, buf, this.start);
    this.current ^= 1;
    this.fill = 0;
  }

  /** Flushes and waits until everything handed over is in the file (not yet fsynced). */
  async close(): Promise<void> {
    await this.flush();
    await this.settle();
  }

  private async settle(): Promise<void> {
    const p = this.inflight;
    this.inflight = undefined;
    if (p) await p;
  }
}

export async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Reads exactly `length` bytes at `position` (fewer only at end of file). */
export async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) return buf.subarray(0, done);
    done += bytesRead;
  }
  return buf;
}
