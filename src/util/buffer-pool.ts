/**
 * Large buffers handed out again instead of allocated anew.
 *
 * Why: a multi-MiB `Buffer.allocUnsafe` is a fresh mmap every time, and the kernel then faults
 * in every 4 KiB page on first touch. On the lab VM that made filling a fresh 8 MiB buffer run
 * at 117–257 MiB/s against 2–4 GiB/s for a reused one, so a data path that allocates one
 * buffer per block runs at a tenth of the disk's speed.
 *
 * The contract that makes reuse safe is the producer's to state and the consumer's to honour:
 * "the data of an extent is valid until the consumer asks for the next one" (the NBD readers'
 * `reuseBuffers`, the chain reader's `reuseBuffers`). A producer takes a buffer, fills it,
 * yields views of it, and gives it back only once the consumer has asked for more. A consumer
 * that must keep bytes longer (a stream that queues writes, a list of pieces) copies them.
 */

export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Buffers allocated by this pool so far (tests and benches check that reuse happens). */
  allocated = 0;

  /**
   * @param bufferSize bytes of every buffer the pool hands out
   * @param maxFree buffers kept for reuse; more given back are dropped (bounds idle memory)
   * @param shared back the buffers with SharedArrayBuffers, so a worker thread can read them
   *   without a copy (hashing off the main thread)
   */
  constructor(
    readonly bufferSize: number,
    readonly maxFree = 4,
    readonly shared = false,
  ) {
    if (!Number.isSafeInteger(bufferSize) || bufferSize <= 0) throw new RangeError(`buffer pool: bad buffer size ${bufferSize}`);
    if (!Number.isSafeInteger(maxFree) || maxFree < 0) throw new RangeError(`buffer pool: bad maxFree ${maxFree}`);
  }

  /** A buffer of exactly `bufferSize` bytes with undefined content; a reused one when available. */
  take(): Buffer {
    const buf = this.free.pop();
    if (buf) return buf;
    this.allocated++;
    // Its own ArrayBuffer (never a slice of Node's shared pool), so giving it back is exact.
    return this.shared ? Buffer.from(new SharedArrayBuffer(this.bufferSize)) : Buffer.allocUnsafeSlow(this.bufferSize);
  }

  /**
   * Returns a buffer obtained from `take()` (the whole buffer, not a view). The caller and
   * whoever it handed views to must be done with it: the next `take()` overwrites it.
   */
  give(buf: Buffer): void {
    if (buf.length !== this.bufferSize || buf.byteOffset !== 0 || buf.buffer.byteLength !== this.bufferSize) {
      throw new RangeError(`buffer pool: given a buffer of ${buf.length} bytes that it did not hand out (its buffers are ${this.bufferSize})`);
    }
    // A buffer given twice would later be handed to two owners at once.
    if (this.free.includes(buf)) throw new Error('buffer pool: the same buffer was given back twice');
    if (this.free.length < this.maxFree) this.free.push(buf);
  }
}
