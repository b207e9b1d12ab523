/**
 * The data path of a full point (docs/FORMAT.md §4.1): the raw image and its block map in one
 * pass. Each block's data runs are copied into a pooled shared-memory buffer with zeros between
 * them; a finished block is then hashed on the hash worker and its runs written from that same
 * buffer, both while the next block is assembled. So every byte is copied once, hashing is off
 * the main thread, and holes stay holes (only data runs are written).
 */
import { BufferPool, PAGE_BYTES } from '../util/buffer-pool.js';
import { zeroDigest } from './block-map.js';
import { zeros } from './extents.js';
import { BackgroundSync } from './coalescing-writer.js';
import type { DataFile } from './direct-io.js';
import { sha256Off } from './hash-worker.js';

interface Pending {
  block: number;
  digest: Promise<Buffer>;
  written: Promise<void>;
  buffer: Buffer | undefined;
}

/** Blocks handed to the worker and the disk before the writer waits for the oldest. */
const MAX_PENDING_BYTES = 16 << 20;
/** Zero blocks queued behind a pending data block before the writer waits (a huge empty disk). */
const MAX_QUEUED = 4096;

/**
 * buf[start, end) = 0. Copied from the shared zero page: V8 fills a SharedArrayBuffer with
 * relaxed atomic stores, measured 0.9 GB/s against 12 GB/s for a copy.
 */
function zeroFill(buf: Buffer, start: number, end: number): void {
  for (let pos = start; pos < end; ) {
    const n = Math.min(end - pos, 1 << 20);
    zeros(n).copy(buf, pos);
    pos += n;
  }
}

/**
 * The data runs of a block widened to page boundaries (never past `length`) and joined where
 * they then touch, so they can be written around the page cache (direct-io.ts). What the
 * widening adds reads as zeros in the block buffer, and lies in a filesystem block the run
 * allocates anyway, so holes stay holes.
 */
export function pageRuns(runs: readonly (readonly [number, number])[], length: number): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of runs) {
    const from = s - (s % PAGE_BYTES);
    const to = Math.min(length, Math.ceil(e / PAGE_BYTES) * PAGE_BYTES);
    const last = out.at(-1);
    if (last && last[1] >= from) last[1] = Math.max(last[1], to);
    else out.push([from, to]);
  }
  return out;
}

export class BlockImageWriter {
  private readonly pool: BufferPool;
  private readonly maxPending: number;
  private readonly queue: Pending[] = [];
  private pendingData = 0;
  private readonly sync: BackgroundSync;
  /** The block being assembled; `fill` is how far its buffer content is defined. */
  private block = 0;
  private buffer: Buffer | undefined;
  private fill = 0;
  private runs: [number, number][] = [];
  private lastWrite: Promise<void> = Promise.resolve();

  constructor(
    private readonly file: DataFile,
    readonly blockSize: number,
    readonly size: number,
    /** Receives each block's digest, in block order. */
    private readonly emit: (digest: Buffer) => void | Promise<void>,
  ) {
    this.maxPending = Math.max(1, Math.floor(MAX_PENDING_BYTES / blockSize));
    this.pool = new BufferPool(blockSize, this.maxPending + 1, true);
    this.sync = new BackgroundSync(file.handle);
  }

  private blockLength(block: number): number {
    return Math.min(this.blockSize, this.size - block * this.blockSize);
  }

  /** Data at `offset` (ascending, not overlapping, non-zero runs); copied before this returns. */
  async data(offset: number, data: Buffer): Promise<void> {
    let at = 0;
    while (at < data.length) {
      const pos = offset + at;
      const block = Math.floor(pos / this.blockSize);
      while (this.block < block) await this.finishBlock();
      const blockStart = block * this.blockSize;
      const inBlock = pos - blockStart;
      if (block < this.block || inBlock < this.fill) throw new Error(`block image writer: data at ${pos} is not after the previous data`);
      const take = Math.min(data.length - at, this.blockSize - inBlock);
      this.buffer ??= this.pool.take();
      // The hole between the previous run and this one reads as zeros, and is hashed as such.
      zeroFill(this.buffer, this.fill, inBlock);
      data.copy(this.buffer, inBlock, at, at + take);
      this.fill = inBlock + take;
      const last = this.runs.at(-1);
      if (last && last[1] === inBlock) last[1] = this.fill;
      else this.runs.push([inBlock, this.fill]);
      at += take;
    }
  }

  /** Completes the image (blocks after the last data are zeros), waits for every write and digest. */
  async finish(): Promise<void> {
    const blocks = Math.ceil(this.size / this.blockSize);
    while (this.block < blocks) await this.finishBlock();
    while (this.queue.length) await this.drainHead();
    await this.sync.wait();
  }

  /** Abandons pending work without leaving unobserved failures (the caller discards the file). */
  async abort(): Promise<void> {
    await Promise.allSettled(this.queue.flatMap((p) => [p.digest, p.written]));
    this.queue.length = 0;
  }

  private async finishBlock(): Promise<void> {
    const block = this.block;
    const length = this.blockLength(block);
    const buffer = this.buffer;
    if (!buffer) {
      this.queue.push({ block, digest: Promise.resolve(zeroDigest(length)), written: Promise.resolve(), buffer: undefined });
    } else {
      zeroFill(buffer, this.fill, length);
      const view = buffer.subarray(0, length);
      const runs = pageRuns(this.runs, length);
      const start = block * this.blockSize;
      // One write at a time, in order: concurrent writes to one file contend for its inode lock.
      const written = this.lastWrite.then(async () => {
        for (const [s, e] of runs) await this.file.write(view.subarray(s, e), start + s);
      });
      this.lastWrite = written;
      const bytes = runs.reduce((n, [s, e]) => n + e - s, 0);
      this.sync.wrote(bytes, written);
      const digest = sha256Off(view);
      // Observed in drainHead (or abort); never an unhandled rejection meanwhile.
      written.catch(() => {});
      digest.catch(() => {});
      this.queue.push({ block, digest, written, buffer });
      this.pendingData++;
    }
    this.block++;
    this.buffer = undefined;
    this.fill = 0;
    this.runs = [];
    // Zero blocks at the head are done already; data blocks are waited for once too many are out.
    while (this.queue.length && (!this.queue[0]!.buffer || this.pendingData > this.maxPending || this.queue.length > MAX_QUEUED)) await this.drainHead();
  }

  private async drainHead(): Promise<void> {
    const head = this.queue[0]!;
    const [digest] = await Promise.all([head.digest, head.written]);
    this.queue.shift();
    if (head.buffer) {
      this.pendingData--;
      this.pool.give(head.buffer);
    }
    await this.emit(digest);
  }
}
